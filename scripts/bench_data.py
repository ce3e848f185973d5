"""Benchmark data preparation: load + preprocess + split (+ tensors), uncached then cached, time and peak RSS.

    python scripts/bench_data.py --rows 20000000            # synthetic file from gen_interactions.py
    python scripts/bench_data.py --rows 20000000 --preprocess full --splits all   # every step, every split
    python scripts/bench_data.py --datasets /work/shared/datasets   # the real datasets, one row each

Each measurement runs in a fresh process (so peak RSS is its own); the first run of a configuration fills
the cache (``--cache-dir``, emptied first), the second reads it.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DATASETS = {  # name -> (source factory expression, split expression)
    "ml-100k": ("MovieLens100K(data_dir=D, cache_dir=C)", "LeaveOneOutSplit()"),
    "ml-100k/u1": ("MovieLens100K(data_dir=D, cache_dir=C)", "PredefinedSplit('u1')"),
    "ml-latest-small": ("MovieLens('ml-latest-small', data_dir=D, cache_dir=C)", "RandomSplit()"),
    "lastfm-hetrec": ("LastFMHetRec(data_dir=D, cache_dir=C)", "RandomSplit()"),
    "gowalla": ("LightGCNData('gowalla', data_dir=D, cache_dir=C)", "PredefinedSplit('lightgcn')"),
    "amazon-2018/All_Beauty": ("Amazon2018('All_Beauty', data_dir=D, cache_dir=C)", "LeaveOneOutSplit()"),
}
SPLITS = {  # conf/split name -> expression (the predefined splits need their own files)
    "random": "RandomSplit()",
    "leave_one_out": "LeaveOneOutSplit()",
    "per_user_temporal": "PerUserTemporalSplit()",
    "per_user_ratio": "PerUserRatioSplit()",
    "temporal": "TemporalSplit()",
    "strong_generalization": "StrongGeneralizationSplit()",
    "kfold": "KFoldSplit()",
}
PREPROCESS = {  # --preprocess name -> steps
    "basic": "[DropMissing(), Deduplicate('last')]",
    "kcore": "[DropMissing(), Deduplicate('last'), KCore(5, 5)]",
    "full": "[DropMissing(), ValidateRatings(), Deduplicate('last'), RatingThreshold(3.5, implicit_only=False), "
            "KCore(5, 5), NormalizeRatings()]",
}


def child(spec: dict) -> None:
    from recforge.data.datamodule import RecDataModule
    from recforge.data.preprocess import (  # noqa: F401 - used by the expressions
        Deduplicate, DropMissing, KCore, NormalizeRatings, RatingThreshold, ValidateRatings)
    from recforge.data.sources.amazon import Amazon2018  # noqa: F401
    from recforge.data.sources.lastfm import LastFMHetRec  # noqa: F401
    from recforge.data.sources.lightgcn import LightGCNData  # noqa: F401
    from recforge.data.sources.movielens import MovieLens, MovieLens100K  # noqa: F401
    from recforge.data.sources.tabular import TabularSource  # noqa: F401
    from recforge.data.split import (  # noqa: F401
        KFoldSplit, LeaveOneOutSplit, PerUserRatioSplit, PerUserTemporalSplit, PredefinedSplit, RandomSplit,
        StrongGeneralizationSplit, TemporalSplit)

    D, C = spec["data_dir"], spec["cache_dir"]  # noqa: N806 - used by the expressions
    started = time.perf_counter()
    source = eval(spec["source"])  # noqa: S307 - expressions from this file
    steps = eval(PREPROCESS[spec.get("preprocess", "basic")])  # noqa: S307
    dm = RecDataModule(source, eval(spec["split"]), preprocess=steps, cache_dir=C)  # noqa: S307
    dm.setup()
    total = time.perf_counter() - started
    report = dm.data_report()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"total_s": total, "peak_rss_mb": peak_mb, "n_train": report["data/n_train"],
                      **{k: v for k, v in report.items() if k.endswith("_s") or k == "data/cache_hit"}}))


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, cold: dict, warm: dict) -> str:
    g = lambda d, k: d.get(f"data/{k}", 0.0)  # noqa: E731
    return (f"| {name} | {cold['n_train']:,.0f} | {g(cold, 'load_s'):.2f} | {g(cold, 'preprocess_s'):.2f} | "
            f"{g(cold, 'split_s'):.2f} | {cold['total_s']:.2f} | {cold['peak_rss_mb']:,.0f} | "
            f"{warm['total_s']:.2f} | {warm['peak_rss_mb']:,.0f} | {cold['total_s'] / warm['total_s']:.1f}x |")


HEADER = ("| dataset | train rows | load s | preprocess s | split s | uncached total s | uncached peak RSS MB | "
          "cached total s | cached peak RSS MB | speed-up |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help="benchmark a synthetic file of this many rows")
    parser.add_argument("--file", type=Path, default=None, help="the synthetic file (generated when missing)")
    parser.add_argument("--preprocess", choices=sorted(PREPROCESS), default="basic",
                        help="basic: drop missing, dedup; kcore: + 5-core; full: + rating checks, a threshold "
                             "of 3.5, 5-core and normalisation")
    parser.add_argument("--splits", nargs="+", default=["random"], metavar="SPLIT",
                        help=f"for --rows: any of {', '.join(SPLITS)}, or all")
    parser.add_argument("--datasets", type=Path, default=None, help="benchmark the real datasets in this folder")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="recforge-bench-"))
    shutil.rmtree(cache, ignore_errors=True)
    print(HEADER)
    if args.datasets:
        for name, (source, split) in DATASETS.items():
            spec = {"source": source, "split": split, "data_dir": str(args.datasets), "cache_dir": str(cache)}
            cold, warm = measure(spec), measure(spec)
            print(row(name, cold, warm), flush=True)
    if args.rows:
        path = args.file or Path(tempfile.gettempdir()) / f"recforge-interactions-{args.rows}.csv"
        if not path.is_file():
            subprocess.run([sys.executable, str(HERE.parent / "gen_interactions.py"), "--rows", str(args.rows),
                            "--out", str(path)], check=True)
        source = f"TabularSource({str(path)!r}, {{'user': 'user', 'item': 'item', 'rating': 'rating', " \
                 f"'timestamp': 'timestamp'}}, name='synthetic-{args.rows}', cache_dir=C)"
        names = list(SPLITS) if args.splits == ["all"] else args.splits
        for name in names:
            if name not in SPLITS:
                raise SystemExit(f"--splits: unknown split {name!r}; choose from {', '.join(SPLITS)} or all")
            spec = {"source": source, "split": SPLITS[name], "data_dir": "", "cache_dir": str(cache),
                    "preprocess": args.preprocess}
            shutil.rmtree(cache, ignore_errors=True)  # each split's first run reads the raw file again
            cold, warm = measure(spec), measure(spec)
            steps = "" if args.preprocess == "basic" else f", {args.preprocess} preprocessing"
            print(row(f"synthetic {args.rows:,} rows, {name}{steps}", cold, warm), flush=True)
    if args.cache_dir is None:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
