"""Recall against latency of the ANN index (recforge.retrieval.ann) on a synthetic catalogue, over a sweep of
index parameters: IVF ``nprobe`` and HNSW ``ef_search`` (and exact flat search as the reference).

    python scripts/bench_ann.py                                   # 100k items, 64 dims, 1,000 queries, k=100
    python scripts/bench_ann.py --items 1000000 --queries 2000 --nlist 4096 --m 32 [--json out.json]
    python scripts/bench_ann.py --kinds hnsw hnsw-l2              # HNSW without and with the inner-product-to-L2
                                                                  # reduction (ip_to_l2)
    python scripts/bench_ann.py --kinds ivf ivfpq --refine 4      # IVF against IVF with fast-scan PQ codes

The catalogue imitates trained embeddings rather than isotropic noise (on which no index does well): item vectors
are drawn around ``--clusters`` centres, with norms that vary like popularity, and each query is a mix of a few
centres plus noise. For each setting: recall@k against exact top-k (mean over the queries), per-query latency
(one query per search call, as the service asks, on ``--threads`` threads: p50/p99 in ms), the build time and the
index size. Latency depends on the machine and on whatever else runs on it: report the machine and its load with
the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from recforge.retrieval.ann import AnnIndex, import_faiss


def catalogue(n_items: int, n_queries: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    items = centres[rng.integers(0, clusters, n_items)] + 0.6 * rng.standard_normal((n_items, dim), dtype=np.float32)
    items *= rng.lognormal(0.0, 0.3, (n_items, 1)).astype(np.float32)  # popular items have longer vectors
    mix = rng.dirichlet(np.full(clusters, 0.05), n_queries).astype(np.float32)
    queries = mix @ centres + 0.3 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return items, queries


def save_mf_bundle(directory, rows: np.ndarray, cols: np.ndarray, n_users: int, n_items: int, dim: int,
                   clusters: int, seed: int, dataset: str) -> np.ndarray:
    """A synthetic BPR-MF bundle (no biases) in ``directory``: user and item vectors from :func:`catalogue`, the
    (row, col) pairs as its seen items (duplicates once). Returns the item vectors (for an index)."""
    import scipy.sparse as sp
    import torch

    from recforge.models.mf import MatrixFactorization
    from recforge.tracking.bundle import save_bundle

    seen = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))
    seen.sum_duplicates()
    seen.data[:] = 1.0
    items, users = catalogue(n_items, n_users, dim, clusters, seed)
    kwargs = {"n_users": n_users, "n_items": n_items, "embedding_dim": dim, "use_bias": False}
    model = MatrixFactorization(**kwargs)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.from_numpy(users))
        model.item_embedding.weight.copy_(torch.from_numpy(items))
    save_bundle(directory, model, "recforge.models.mf.MatrixFactorization", kwargs, np.arange(n_users),
                np.arange(n_items), seen, {"dataset": dataset, "feedback": "implicit"})
    return items


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = AnnIndex(kind="flat").build(items)
    return index.search(queries, k)[1]


def measure(index: AnnIndex, queries: np.ndarray, k: int, truth: np.ndarray) -> dict[str, float]:
    found = np.empty_like(truth)
    latencies = np.empty(len(queries))
    for i in range(len(queries)):
        started = time.perf_counter()
        found[i] = index.search(queries[i:i + 1], k)[1][0]
        latencies[i] = time.perf_counter() - started
    recall = np.mean([np.intersect1d(a, b).size / k for a, b in zip(found, truth)])
    return {"recall": float(recall), "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[100, 128, 256, 512])
    parser.add_argument("--pq-m", type=int, default=0, help="ivfpq: sub-vectors per item (0: one per dimension)")
    parser.add_argument("--refine", type=int, default=4, help="ivfpq: candidates re-ranked exactly per neighbour")
    parser.add_argument("--kinds", nargs="+", choices=["ivf", "hnsw", "hnsw-l2", "ivfpq"], default=["ivf", "hnsw"],
                        help="index kinds to sweep (exact flat search is always the reference); hnsw-l2: HNSW after "
                             "the inner-product-to-L2 reduction (ip_to_l2=true)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (the service uses 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    faiss = import_faiss()
    faiss.omp_set_num_threads(args.threads)
    items, queries = catalogue(args.items, args.queries, args.dim, args.clusters, args.seed)
    started = time.perf_counter()
    truth = exact_top(items, queries, args.k)
    print(f"{args.items} items x {args.dim} dims, {args.queries} queries, recall@{args.k} against exact top-{args.k} "
          f"(exact top-k of all queries: {time.perf_counter() - started:.1f} s); {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for kind, setting, values in (("flat", None, [None]), ("ivf", "nprobe", args.nprobe),
                                  ("hnsw", "ef_search", args.ef_search), ("hnsw-l2", "ef_search", args.ef_search),
                                  ("ivfpq", "nprobe", args.nprobe)):
        if kind != "flat" and kind not in args.kinds:
            continue
        started = time.perf_counter()
        index = AnnIndex(kind=kind.removesuffix("-l2"), nlist=args.nlist, m=args.m,
                         ef_construction=args.ef_construction, seed=args.seed, pq_m=args.pq_m,
                         refine=args.refine, ip_to_l2=kind.endswith("-l2")).build(items)
        build_s = time.perf_counter() - started
        size_mb = index.memory_bytes() / 2 ** 20
        for value in values:
            if setting is not None:
                index.set_search(**{setting: value})
            row = {"kind": kind, "setting": f"{setting}={value}" if setting else "exact", "build_s": build_s,
                   "size_mb": size_mb, **measure(index, queries, args.k, truth)}
            rows.append(row)
            print(f"{kind:<7} {row['setting']:<14} recall {row['recall']:.4f}  p50 {row['p50_ms']:7.3f} ms  "
                  f"p99 {row['p99_ms']:7.3f} ms  build {build_s:6.1f} s  index {size_mb:8.1f} MiB", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
