"""``recforge-recommend`` at scale: users/s and peak memory of the batch job on a synthetic dot-product model.

    python scripts/bench_recommend.py --users 20000 --items 20000                 # a small check
    python scripts/bench_recommend.py --users 1000000 --items 1000000 --json recommend_1m.json   # issue #26's size

The bundle is built once in ``--work-dir`` (and reused): seen items from ``scripts/gen_interactions.py``
(``--rows`` Zipf-like interactions, duplicates merged), an MF model (no biases) whose item and user vectors are
``scripts/bench_ann.py``'s clustered catalogue and its mixed queries, and the bundle's ANN index (``--index``; ``none``:
no index, exact ranking, which at a million items scores ``users x items`` pairs: only for small sizes). Then
``python -m recforge.serving.batch`` runs in a fresh process into a fresh folder of parts (``--ann-min-items 0``:
always through the index when there is one), and this prints users/s over the job's wall time (start-up and
loading included, and separately from its first part on) and the job's peak RSS (``wait4``'s ``ru_maxrss``).
Numbers depend on the machine and on whatever else runs on it: report both with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def interactions_file(work_dir: Path, rows: int, users: int, items: int, seed: int) -> Path:
    path = work_dir / f"inter_{rows}_{users}u_{items}i_s{seed}.parquet"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "gen_interactions.py"), "--rows", str(rows), "--users", str(users),
                        "--items", str(items), "--seed", str(seed), "--out", str(path)], check=True, stdout=sys.stderr)
    return path


def build_bundle(directory: Path, args: argparse.Namespace) -> None:
    """The synthetic bundle (and its index) into ``directory``, atomically: a killed build leaves nothing."""
    import pandas as pd

    from bench_ann import save_mf_bundle
    from recforge.retrieval.ann import AnnIndex
    from recforge.utils.io import atomic_dir

    pairs = pd.read_parquet(interactions_file(args.work_dir, args.rows, args.users, args.items, args.seed),
                            columns=["user", "item"])
    with atomic_dir(directory) as tmp:
        items = save_mf_bundle(tmp, pairs["user"].to_numpy(), pairs["item"].to_numpy(), args.users, args.items,
                               args.dim, args.clusters, args.seed, "synthetic bench_recommend")
        del pairs
        if args.index != "none":
            started = time.perf_counter()
            index = AnnIndex(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, m=args.m,
                             ef_construction=args.ef_construction, ef_search=args.ef_search, seed=args.seed)
            index.build(items).save(tmp)
            print(f"built the {args.index} index in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def run_job(bundle: Path, output: Path, args: argparse.Namespace) -> dict:
    """One ``recforge-recommend`` run in a fresh process: its wall time, when its first part appeared, peak RSS."""
    cmd = [sys.executable, "-m", "recforge.serving.batch", "--bundle", str(bundle), "--output", str(output), "--k",
           str(args.k), "--chunk-size", str(args.chunk_size), "--ann-min-items", "0", "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.score_users:
        users_file = output.with_name(f"{output.name}.users.txt")
        users_file.write_text("".join(f"{u}\n" for u in range(args.score_users)))
        cmd += ["--users", str(users_file)]
    print(" ".join(cmd), file=sys.stderr)
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    first_part = None
    while True:  # wait4: this child's own resource usage (not that of gen_interactions.py, run before)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if first_part is None and (output / "part-000000.parquet").exists():
            first_part = time.perf_counter() - started
        time.sleep(0.05)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    peak_kib = usage.ru_maxrss  # KiB on Linux
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {process.returncode}")
    return {"command": cmd, "stdout": process.stdout.read().strip(), "wall_s": wall, "first_part_s": first_part,
            "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=None, help="interactions (seen items); default 10 per user")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--index", choices=("hnsw", "ivf", "flat", "none"), default="hnsw")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="the job's torch threads (default: torch's choice)")
    parser.add_argument("--score-users", type=int, default=0, help="score only the first N users (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("data_cache/bench_recommend"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-output", action="store_true", help="keep the parts (default: deleted after the run)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    args.rows = args.rows or 10 * args.users
    args.work_dir.mkdir(parents=True, exist_ok=True)
    index = "none" if args.index == "none" else (
        f"{args.index}-m{args.m}-efc{args.ef_construction}-efs{args.ef_search}" if args.index == "hnsw" else
        f"{args.index}-nlist{args.nlist}-nprobe{args.nprobe}" if args.index == "ivf" else "flat")
    bundle = args.work_dir / f"mf_{args.users}u_{args.items}i_{args.dim}d_{args.rows}r_s{args.seed}_{index}"
    if not bundle.exists():
        started = time.perf_counter()
        build_bundle(bundle, args)
        print(f"built {bundle} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    output = args.work_dir / "recs"
    shutil.rmtree(output, ignore_errors=True)
    result = run_job(bundle, output, args)
    n_users = args.score_users or args.users
    manifest = json.loads((output / "_manifest.json").read_text())
    sizes = {name: (bundle / name).stat().st_size / 2 ** 20 for name in ("model.pt", "seen.npz", "ann.faiss")
             if (bundle / name).exists()}
    after_first = result["wall_s"] - (result["first_part_s"] or 0.0)
    row = {"users": n_users, "items": args.items, "dim": args.dim, "k": args.k, "chunk_size": args.chunk_size,
           "index": index, "parts": manifest["n_parts"], "rows": manifest["rows"], "cpus": os.cpu_count(),
           "load_average_after": os.getloadavg()[0], "users_per_s": n_users / result["wall_s"],
           "users_per_s_after_first_part": (n_users - min(args.chunk_size, n_users)) / after_first
           if result["first_part_s"] is not None and after_first > 0 else None,
           "bundle_mib": sizes, **result}
    print(f"{n_users} users x {args.items} items (d={args.dim}, k={args.k}, chunk {args.chunk_size}, {index}): "
          f"{row['users_per_s']:.0f} users/s over {result['wall_s']:.1f} s including start-up"
          + (f", {row['users_per_s_after_first_part']:.0f} users/s after the first part"
             if row["users_per_s_after_first_part"] else "")
          + f"; peak RSS {result['peak_rss_mib']:.0f} MiB (bundle files: "
          + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in sizes.items())
          + f"); {os.cpu_count()} CPUs, load average {row['load_average_after']:.2f} at the end")
    if not args.keep_output:
        shutil.rmtree(output, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
