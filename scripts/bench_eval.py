"""Time full-ranking evaluation on the Gowalla LightGCN split (29,858 users x 40,981 items, K=20).

Runs the same evaluator the training module uses (``recforge.metrics.evaluator.RankingEvaluator``) with an
MF-style scorer over 64-d embeddings (random, or briefly trained with BPR: ``--train-steps``), and prints the
best wall time over ``--repeats`` runs, the phase split (scoring matmul / masking / top-K / metrics, timed
separately on the same chunks), and peak extra memory: host RSS above the pre-evaluation RSS and, on CUDA,
``torch.cuda.max_memory_allocated`` above the memory held before evaluation.

    python scripts/bench_eval.py                      # CPU, default budget 2**24 scores per chunk
    python scripts/bench_eval.py --device cuda --json
    python scripts/bench_eval.py --max-scores-in-memory 4194304 --threads 2
    python scripts/bench_eval.py --beyond             # + the test stage's list metrics and slices (eval.beyond)

``--beyond`` adds what ``recforge-train``'s test pass computes by default: intra-list diversity (the MF item vectors),
miscalibration (20 random genres per item: Gowalla has none), long-tail share, popularity-stratified recall,
serendipity, the item slices in the pass and the user slices when aggregating.

The data folder is ``--data-dir`` or ``$RECFORGE_DATA_DIR/gowalla-lightgcn`` (default
``/work/shared/datasets/gowalla-lightgcn``); each line of train.txt/test.txt is ``user item item ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import recforge  # noqa: F401  (first: it tunes OpenBLAS before numpy loads, see recforge/__init__.py)
import numpy as np
import torch

from recforge.data.batches import chunk_batches
from recforge.metrics.beyond import ListContext, history_distribution, popularity_groups, unit_rows, user_slices
from recforge.metrics.evaluator import RankingEvaluator
from recforge.metrics.ranking import _topk_exact, mask_scores_, ranking_metrics, relevance_matrix, topk_items
from recforge.models.mf import MatrixFactorization


def read_user_items(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``user item item ...`` lines into (users, items) int64 arrays, vectorised (no per-line loop)."""
    text = path.read_bytes()
    tokens = np.array(text.replace(b"\n", b" -1 ").split(), dtype=np.int64)
    is_sep = tokens == -1
    line = np.cumsum(is_sep) - is_sep  # line number of every token
    first = np.ones(len(tokens), dtype=bool)
    first[1:] = is_sep[:-1]
    first &= ~is_sep
    user_of_line = np.full(int(line.max()) + 1 if len(line) else 0, -1, dtype=np.int64)
    user_of_line[line[first]] = tokens[first]
    keep = ~is_sep & ~first
    return user_of_line[line[keep]], tokens[keep]


def csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, users))
    indptr = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=n_users))))
    return indptr, items[order]


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_bpr(user_emb, item_emb, users, items, steps, device, seed=0):
    """A few hundred BPR steps so that the scores have realistic structure (optional)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    user_emb, item_emb = user_emb.clone().requires_grad_(), item_emb.clone().requires_grad_()
    opt = torch.optim.Adam([user_emb, item_emb], lr=0.01)
    u_all, i_all = torch.as_tensor(users, device=device), torch.as_tensor(items, device=device)
    for _ in range(steps):
        idx = torch.randint(len(u_all), (8192,), generator=generator).to(device)
        neg = torch.randint(item_emb.shape[0], (8192,), generator=generator).to(device)
        u, i = user_emb[u_all[idx]], item_emb[i_all[idx]]
        loss = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * item_emb[neg]).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return user_emb.detach(), item_emb.detach()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dir = Path(os.environ.get("RECFORGE_DATA_DIR", "/work/shared/datasets")) / "gowalla-lightgcn"
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-scores-in-memory", type=int, default=1 << 24)
    parser.add_argument("--k", type=int, nargs="+", default=[20])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--train-steps", type=int, default=0, help="BPR steps before evaluating (0: random)")
    parser.add_argument("--no-profile", action="store_true", help="skip the phase split")
    parser.add_argument("--beyond", action="store_true", help="also the list metrics and slices of the test stage")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not (args.data_dir / "train.txt").exists():
        print(f"error: {args.data_dir}/train.txt not found; pass --data-dir or set RECFORGE_DATA_DIR", file=sys.stderr)
        sys.exit(2)
    t = time.perf_counter()
    tr_u, tr_i = read_user_items(args.data_dir / "train.txt")
    te_u, te_i = read_user_items(args.data_dir / "test.txt")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    ex_ptr, ex_idx = csr(tr_u, tr_i, n_users)
    rel_ptr, rel_idx = csr(te_u, te_i, n_users)
    batches = chunk_batches(ex_ptr, ex_idx, rel_ptr, rel_idx, np.ones(len(rel_idx), np.float32), n_items,
                            args.max_scores_in_memory)
    load_s = time.perf_counter() - t

    generator = torch.Generator().manual_seed(0)
    user_emb = (0.1 * torch.randn(n_users, args.dim, generator=generator)).to(device)
    item_emb = (0.1 * torch.randn(n_items, args.dim, generator=generator)).to(device)
    if args.train_steps:
        user_emb, item_emb = train_bpr(user_emb, item_emb, tr_u, tr_i, args.train_steps, device)
    popularity = torch.as_tensor(np.bincount(tr_i, minlength=n_items))

    model = MatrixFactorization(n_users, n_items, args.dim, use_bias=False).to(device).eval()
    with torch.no_grad():
        model.user_embedding.weight.copy_(user_emb)
        model.item_embedding.weight.copy_(item_emb)
    score_fn = model.score_all  # the model's own scoring path (on a CPU: numpy's BLAS, recforge.utils.linalg)

    beyond = None
    if args.beyond:
        users_t, items_t = torch.as_tensor(tr_u), torch.as_tensor(tr_i)
        genres = (torch.rand(n_items, 20, generator=generator) < 0.1).float()
        genres = genres / genres.sum(1, keepdim=True).clamp(min=1)
        beyond = ListContext(popularity.float(), popularity_groups(popularity.float()),
                             user_slices(users_t, items_t, n_users, popularity.float()), unit_rows(item_emb.cpu()),
                             genres, history_distribution(users_t, genres[items_t], n_users),
                             vectors_from="model").to(device)
    evaluator = RankingEvaluator(args.k, popularity.to(device), n_users, beyond=beyond)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]  # as Lightning hands them over
    sync(device)

    base_rss = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    times, cpu_times, metrics = [], [], {}
    for _ in range(args.repeats):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        metrics, _ = evaluator.run(score_fn, batches)
        sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "users_evaluated": sum(len(b["users"]) for b in batches),
        "n_users": n_users, "n_items": n_items, "ks": args.k, "dim": args.dim,
        "max_scores_in_memory": args.max_scores_in_memory, "chunk_users": len(batches[0]["users"]),
        "n_chunks": len(batches), "load_s": round(load_s, 3), "beyond": args.beyond,
        "eval_s_best": round(min(times), 4), "eval_s_all": [round(x, 4) for x in times],
        # CPU seconds of this process (all threads): on a shared machine, wall time ~ cpu_s / threads when idle
        "eval_cpu_s_best": round(min(cpu_times), 4),
        "peak_extra_rss_mb": round(max(0, peak_rss_bytes() - base_rss) / 2**20, 1),
        "budget_mb": round(args.max_scores_in_memory * 4 / 2**20, 1),
    }
    if device.type == "cuda":
        result["peak_extra_cuda_mb"] = round((torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20, 1)
    for k in args.k:
        for name in ("recall", "ndcg", "precision", "coverage"):
            result[f"{name}_at_{k}"] = round(float(metrics[f"{name}_at_{k}"]), 6)
    if not args.no_profile:
        result["phases_s"] = profile(score_fn, batches, args.k, device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<22} {value}")
    return result


@torch.no_grad()
def profile(score_fn, batches, ks, device) -> dict[str, float]:
    """The evaluator's steps timed one by one over all chunks (best of 2), with a device sync after each.

    ``<phase>`` is wall seconds; ``<phase>_cpu`` is CPU seconds of this process (on CUDA: host time only)."""
    best: dict[str, float] = {}
    clock = (time.perf_counter, time.process_time)
    for _ in range(2):
        acc: dict[str, float] = {}
        for batch in batches:
            marks = []
            sync(device)
            marks.append([c() for c in clock])
            scores = score_fn(batch["users"])
            sync(device)
            marks.append([c() for c in clock])
            mask_scores_(scores, batch["exclude_rows"], batch["exclude_cols"])
            sync(device)
            marks.append([c() for c in clock])
            values, topk = topk_items(scores, max(ks))
            sync(device)
            marks.append([c() for c in clock])
            _topk_exact(scores, max(ks))  # the plain torch.topk path, for comparison (not part of the total)
            sync(device)
            marks.append([c() for c in clock])
            valid = torch.isfinite(values)
            hits, n_rel, ideal = relevance_matrix(len(scores), topk, batch["relevant_rows"], batch["relevant_cols"],
                                                  batch["relevant_gains"], valid)
            ranking_metrics(hits, n_rel, ks, ideal)
            sync(device)
            marks.append([c() for c in clock])
            for i, name in enumerate(("score", "mask", "topk", "topk_torch_only", "metrics")):
                acc[name] = acc.get(name, 0.0) + marks[i + 1][0] - marks[i][0]
                acc[name + "_cpu"] = acc.get(name + "_cpu", 0.0) + marks[i + 1][1] - marks[i][1]
        best = {k: round(min(v, best.get(k, v)), 4) for k, v in acc.items()}
    return best


if __name__ == "__main__":
    main()
