"""How training and full-ranking evaluation cost grows with data size: synthetic data with 1M users and 200k
items at 1M, 4M and 16M interactions (20M with ``--sizes ... 20000000``), BPR-MF and LightGCN.

For each size it writes an interactions file with ``scripts/gen_interactions.py`` (Zipf-like users and items,
kept in ``--work-dir`` for reuse), then runs ``scripts/bench.py --json`` once per model in a fresh process (so
peak memory is that run's own), and prints one line per (size, model): training time per epoch and
interactions/s, the time of one full-ranking evaluation of every test user against all items, peak host RSS
and peak GPU memory, and the training cost per interaction and evaluation cost per evaluated user relative to
the smallest size (1.0 is linear growth).

    python scripts/bench_scale.py                                  # CPU: LightGCN trains 10 batches per epoch
    python scripts/bench_scale.py --device cuda --lightgcn-limit-batches 0 --json   # one GPU, full epochs
    python scripts/bench_scale.py --sizes 1000000 4000000 --models bpr

The split is random 80/10/10, batch 65,536, 64-d embeddings; BPR-MF uses sparse embedding gradients and lazy
Adam (``--sparse`` in bench.py), LightGCN dense Adam and 3 layers. Users with no test interaction are not
evaluated, so the number of evaluated users grows with the size too (printed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_file(work_dir: Path, rows: int, users: int, items: int, seed: int) -> Path:
    path = work_dir / f"inter_{rows}_{users}u_{items}i_s{seed}.parquet"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "gen_interactions.py"), "--rows", str(rows), "--users",
                        str(users), "--items", str(items), "--seed", str(seed), "--out", str(path)],
                       check=True, stdout=sys.stderr)
    return path


def bench_one(path: Path, model: str, device: str, batch_size: int, limit_batches: int | None,
              timeout: int) -> dict:
    cmd = [sys.executable, str(HERE / "bench.py"), "--interactions", str(path), "--model", model, "--device",
           device, "--batch-size", str(batch_size), "--epochs", "1", "--no-bare-loop", "--no-eval-warmup", "--json"]
    if model in ("bpr", "mf"):
        cmd.append("--sparse")
    if limit_batches:
        cmd += ["--limit-batches", str(limit_batches)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--models", nargs="+", default=["bpr", "lightgcn"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--lightgcn-limit-batches", type=int, default=None,
                        help="LightGCN batches per epoch (default: 10 on a CPU, the full epoch on a GPU; 0: full)")
    parser.add_argument("--work-dir", type=Path, default=Path("data_cache/scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per (size, model) run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    graph_limit = args.lightgcn_limit_batches
    if graph_limit is None:
        graph_limit = 10 if args.device == "cpu" else 0

    args.work_dir.mkdir(parents=True, exist_ok=True)
    first: dict[str, dict] = {}
    for rows in sorted(args.sizes):
        path = ensure_file(args.work_dir, rows, args.users, args.items, args.seed)
        for model in args.models:
            limit = (graph_limit or None) if model in ("lightgcn", "ngcf") else None  # 0: full epochs
            row = bench_one(path, model, args.device, args.batch_size, limit, args.timeout)
            row["rows_generated"] = rows
            base = first.setdefault(model, row)
            # cost per trained interaction and per evaluated user, relative to the smallest size
            row["train_cost_vs_first"] = round(base["interactions_per_s"] / row["interactions_per_s"], 2)
            row["eval_s_per_user_vs_first"] = round(
                (row["eval_s"] / row["eval_users"]) / (base["eval_s"] / base["eval_users"]), 2)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{rows:>11,} rows ({row['n_train']:,} train, {row['users']:,} users, {row['items']:,} items) "
                      f"{model:>8} on {row['device']}: {row['train_s_per_epoch']:.2f} s/epoch"
                      f"{' (' + str(limit) + ' batches)' if limit else ''}, {row['interactions_per_s']:,} "
                      f"interactions/s, eval {row['eval_s']:.1f} s for {row['eval_users']:,} users, peak RSS "
                      f"{row['peak_rss_mb']:,.0f} MB, GPU {row['peak_gpu_mb']:,.0f} MB; per-interaction train "
                      f"cost x{row['train_cost_vs_first']}, eval per user x{row['eval_s_per_user_vs_first']}",
                      flush=True)


if __name__ == "__main__":
    main()
