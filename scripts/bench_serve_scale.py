"""The service at catalogue scale (issue #26): a dot-product model over a synthetic catalogue of ``--items`` items
and ``--users`` users, served through its ANN index, under closed-loop load; with the index's recall and the
server's memory.

    python scripts/bench_serve_scale.py --users 1000000 --items 1000000 --kind ivf --nlist 4096 --nprobe 32 \\
        --work-dir /tmp/serve1m --concurrency 1 10 50 --seconds 15 [--json out.json]

1. A bundle (kept in ``--work-dir`` for reuse): BPR-MF's class (``recforge.models.mf.MatrixFactorization``, no
   biases) with item vectors drawn around cluster centres with popularity-like norms and user vectors mixing a few
   centres (``scripts/bench_ann.py``'s catalogue: trained embeddings are clustered, and on isotropic noise no index
   does well), and ``--seen`` seen items per user drawn by a Zipf-like popularity (they are excluded from answers).
2. The ANN index of the bundle (``--kind``, its parameters), built with the bundle as ``export.ann_index`` does.
3. **Recall**: for ``--recall-users`` users, the service's own answer path (``ServedModel.recommend`` through the
   index, seen items dropped) against the exact top-``--k`` over all unseen items (the scores of every item,
   masked): the share of the exact top-k the index's top-k holds, averaged over the users.
4. **Load**: ``recforge-serve --bundle`` in its own process (its defaults: one process, one torch thread, the index
   used from 100,000 items), then ``scripts/load_test.py`` (``k=--k``, 10% unknown users) at each concurrency,
   closed loop, or open loop at each ``--rate``; the server's resident memory after loading and its peak
   (``VmHWM``) at the end.

Latency depends on the machine and on whatever else runs on it (the load client shares the cores): the CPU model
and the load average are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from bench_ann import save_mf_bundle

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    return f"unknown CPU x {os.cpu_count()}"


def build_bundle(directory: Path, n_users: int, n_items: int, dim: int, n_seen: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    cols = rng.choice(n_items, size=n_users * n_seen, p=popularity / popularity.sum())
    save_mf_bundle(directory, np.repeat(np.arange(n_users), n_seen), cols, n_users, n_items, dim, clusters=256,
                   seed=seed, dataset=f"synthetic {n_users} users x {n_items} items")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def service_recall(directory: Path, n_users: int, k: int, sample: int, seed: int) -> tuple[float, float]:
    """Mean recall@k of the service's index answers against exact top-k, and the mean exact path time (ms)."""
    from recforge.serving.core import ServedModel
    from recforge.serving.registry import ModelRef
    from recforge.tracking.bundle import Bundle

    served = ServedModel(Bundle.load(directory), ModelRef(str(directory)), score_cache_bytes=0, ann_min_items=0)
    model = served.model
    users = np.random.default_rng(seed + 2).choice(n_users, size=min(sample, n_users), replace=False)
    recalls = []
    with torch.inference_mode():
        items = model.retrieval_items().numpy()
        for user in users.tolist():
            got = served.recommend(user, k=k)[0]
            scores = items @ model.retrieval_queries(torch.tensor([user]))[0].numpy()
            scores[served.bundle.seen[user].indices] = -np.inf
            exact = np.argpartition(-scores, k)[:k]
            recalls.append(len(np.intersect1d(exact, np.asarray(got))) / k)
    return float(np.mean(recalls)), float(np.min(recalls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seen", type=int, default=10, help="seen items per user (excluded from answers)")
    parser.add_argument("--kind", choices=["flat", "ivf", "hnsw", "ivfpq"], default="ivf")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--pq-m", type=int, default=0, help="ivfpq: sub-vectors per item (0: one per dimension)")
    parser.add_argument("--refine", type=int, default=4, help="ivfpq: candidates re-ranked exactly per neighbour")
    parser.add_argument("--k", type=int, default=100, help="the requests' k and the recall's k")
    parser.add_argument("--recall-users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rate", type=float, nargs="+",
                        help="open loop at these offered rates (req/s) per concurrency level (load_test.py --rate)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/recforge_serve_scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--prepare-only", action="store_true", help="build the bundle and its index, then stop (the "
                        "next run reuses both and measures)")
    args = parser.parse_args()
    from recforge.retrieval.ann import AnnIndex

    print(f"{cpu_name()}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    directory = args.work_dir / f"bundle_{args.users}u_{args.items}i_{args.dim}d_s{args.seed}"
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_name()}
    if not (directory / "meta.json").exists():
        started = time.perf_counter()
        build_bundle(directory, args.users, args.items, args.dim, args.seen, args.seed)
        print(f"bundle {directory}: {time.perf_counter() - started:.0f} s", flush=True)
    from recforge.serving.index import build_for_bundle

    wanted = AnnIndex(kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, m=args.m,
                      ef_construction=args.ef_construction, ef_search=args.ef_search, seed=args.seed,
                      pq_m=args.pq_m, refine=args.refine)
    started = time.perf_counter()
    index = AnnIndex.load(directory)
    build = {"nprobe", "ef_search", "refine"}  # search parameters: changing them needs no new index
    if index is not None and {k: v for k, v in index.arguments().items() if k not in build} == \
            {k: v for k, v in wanted.arguments().items() if k not in build}:
        index.set_search(nprobe=args.nprobe, ef_search=args.ef_search, refine=args.refine)
        index.save(directory)
        build_s = None
    else:
        index = build_for_bundle(directory, wanted)
        build_s = time.perf_counter() - started
    result["index"] = {"kind": args.kind, "build_s": build_s, "size_mb": index.memory_bytes() / 2 ** 20}
    print(f"index {args.kind}: " + ("the bundle's, built earlier with the same parameters" if build_s is None else
                                    f"built in {build_s:.0f} s") + f", {result['index']['size_mb']:.0f} MiB", flush=True)
    if args.prepare_only:
        return
    mean, worst = service_recall(directory, args.users, args.k, args.recall_users, args.seed)
    result["recall"] = {"k": args.k, "users": args.recall_users, "mean": mean, "min": worst}
    print(f"service recall@{args.k} against exact over {args.recall_users} users: mean {mean:.4f}, min {worst:.4f}",
          flush=True)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "recforge.serving.cli", "--bundle", str(directory), "--port",
                               str(port), "--log-file", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"recforge-serve exited: {server.stderr.read().decode()[-2000:]}")
            try:
                health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2))
                break
            except OSError:
                time.sleep(1)
        result["server"] = {"load_s": time.perf_counter() - started, "retrieval": health["model"]["retrieval"],
                            "after_load_mb": memory_mb(server.pid)["VmRSS"]}
        print(f"server up in {result['server']['load_s']:.0f} s, retrieval {result['server']['retrieval']}, "
              f"RSS {result['server']['after_load_mb']:.0f} MiB", flush=True)
        load = subprocess.run([sys.executable, str(HERE / "load_test.py"), "--url", f"http://127.0.0.1:{port}",
                               "--bundle", str(directory), "--concurrency", *map(str, args.concurrency),
                               "--seconds", str(args.seconds), "--requests", str(args.requests), "--warmup", "500",
                               "-k", str(args.k), "--json", *(["--rate", *map(str, args.rate)] if args.rate else [])],
                              capture_output=True, text=True, check=True)
        result["levels"] = [json.loads(line) for line in load.stdout.splitlines() if line.startswith("{")]
        result["server"].update(memory_mb(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=60)
    for level in result["levels"]:
        print(json.dumps(level), flush=True)
    print(f"server memory: RSS {result['server']['VmRSS']:.0f} MiB, peak {result['server']['VmHWM']:.0f} MiB; "
          f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
