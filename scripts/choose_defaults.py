"""Choose a model's defaults by a documented, reproducible procedure (docs/defaults.md): every candidate setting of a
grid is trained on every (dataset, split) with early stopping, scored on VALIDATION (never test), ranked within each
(dataset, split), and the candidate with the best mean rank wins; a candidate that is best on one dataset but poor on
another loses to one that is good everywhere. Equal mean ranks are told apart by the mean share of the best
validation value each candidate reaches per (dataset, split): a narrow loss counts less than a wide one. A candidate
that collapses somewhere (below FLOOR, 0.8, of the best validation value of a pair) ranks after every candidate that
does not, whatever its mean rank: a default must not fail on any of the data it was chosen on. A minimised monitor
(a rating model's ``val/rmse``) ranks lowest first, and its share of the best is best / value.

    RECFORGE_DATA_DIR=../shared/datasets python scripts/choose_defaults.py --model bpr \\
        --grid optimizer.lr=0.001,0.005 model.init_std=0.01,0.1 \\
        --data ml-100k lastfm-hetrec --split random leave_one_out --json-out docs/defaults/bpr.jsonl

Each finished run is appended to --json-out as it ends, and a rerun skips the runs already there, so a long search
survives being stopped. Runs that take hours (DeepFM or SimpleX on Last.fm) go in sittings: with ``--work-dir DIR``
each run trains in a folder of DIR, and the same command run again goes on from a stopped run's last epoch. The test
metrics are recorded too, for the report, but play no part in the choice.

Each row also keeps its validation curve (the monitored value after every epoch). Runs are deterministic for a
seed, so one run with a long patience shows what every shorter patience would have stopped at:
``--patience 10 30 50`` prints, per row, the best validation value and the epochs each patience gives. The table's
last column is the least share of its best that any of a candidate's runs would have kept at RecBole's patience of
10 (SHORT_PATIENCE): a candidate that must sit on a poor start (a popularity ranker) for most of the default
patience before it rises is one shorter patience, or a dataset with fewer steps an epoch, away from collapsing
(``-`` where the runs ran at patience 10 or less: nothing to replay).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import recforge  # noqa: F401  (sets OpenBLAS's thread timeout before numpy loads)
from recforge.metrics.names import metric_mode
from recforge.utils.io import atomic_append_text, atomic_write_text
from reproduce import compose_train, defaults_digest, kept_folder, resume_overrides, run

# RecBole's epochs and patience, the budget every recorded row ran with (the default patience is 30 since
# docs/defaults.md#early-stopping-patience; --override callbacks.early_stopping.patience=30 runs rows at it)
BUDGET = ["trainer.max_epochs=300", "callbacks.early_stopping.patience=10"]
SHORT_PATIENCE = 10  # the table's last column replays each run at this patience (RecBole's), when it ran longer
FLOOR = 0.8  # a candidate below this share of a pair's best validation value has collapsed there


def split_values(values: str) -> list[str]:
    """``v1,v2,...`` split at the commas outside brackets: ``[64,32],[128,64]`` is two lists."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(values):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(values[start:i])
            start = i + 1
    return parts + [values[start:]]


def candidates(grid: list[str], explicit: list[str] = ()) -> list[tuple[str, ...]]:
    """The Cartesian product of ``key=v1,v2`` grid entries (a value may be a list: ``key=[64,32],[128,64]``), then
    each ``explicit`` candidate (``"k1=v k2=w"``, when settings change together rather than as a product), as
    tuples of ``key=value`` overrides."""
    extra = [tuple(c.split()) for c in explicit]
    if not grid and extra:
        return extra
    axes = []
    for entry in grid:
        key, sep, values = entry.partition("=")
        if not sep or not values:
            sys.exit(f"error: --grid {entry!r}: write key=v1,v2,...")
        axes.append([f"{key}={v}" for v in split_values(values)])
    return (list(itertools.product(*axes)) or [()]) + extra


def run_overrides(model: str, data: str, split: str, candidate: tuple[str, ...], extra: list[str]) -> list[str]:
    """What one run trains with: the pair, the model, the budget, ``--override`` and the candidate's values."""
    return [f"data={data}", f"split={split}", f"model={model}", *BUDGET, *extra, *candidate]


def run_folder(work_dir: Path, model: str, data: str, split: str, candidate: tuple[str, ...], extra: list[str]) -> Path:
    """A run's folder under ``--work-dir``, named by its model and pair and a hash of its candidate and overrides."""
    digest = hashlib.sha256(json.dumps([list(candidate), list(extra)]).encode()).hexdigest()[:10]
    return work_dir / f"{model}_{data}_{split}_{digest}"


def run_one(model: str, data: str, split: str, candidate: tuple[str, ...], extra: list[str], workdir: Path) -> dict:
    """Train one candidate on one pair in ``workdir``. A run an earlier sitting stopped left its last checkpoint and
    its validation curve there: it goes on from them (``resume_from``, as the uninterrupted run would have trained),
    and its row is marked ``resumed`` (``fit_s`` is then this sitting's only)."""
    overrides = run_overrides(model, data, split, candidate, extra)
    monitor = compose_train(overrides).monitor
    resume = resume_overrides(workdir)
    curve = ValidationCurve(monitor, workdir / "curve.json")
    progress = logging.StreamHandler(sys.stderr)   # the run's data line and epoch lines, for a sitting's log
    run_name = f"{data} {split} {' '.join(candidate) or '(defaults)'}".replace("%", "%%")   # "%" is the format's
    progress.setFormatter(logging.Formatter(f"[%(asctime)s] {run_name}: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("recforge")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(curve)
    logger.addHandler(progress)
    try:
        metrics = run([*overrides, *resume], workdir)
    finally:
        logger.removeHandler(progress)
        logger.removeHandler(curve)
        logger.setLevel(level)
    return {"model": model, "data": data, "split": split, "candidate": list(candidate), "extra": extra,
            "monitor": monitor, "val": metrics[monitor], "test": metrics.get(monitor.replace("val/", "test/", 1)),
            "test_ndcg_at_10": metrics.get("test/ndcg_at_10"),
            "test_recall_at_10": metrics.get("test/recall_at_10"), "test_ndcg_at_20": metrics.get("test/ndcg_at_20"),
            "test_recall_at_20": metrics.get("test/recall_at_20"), "best_epoch": metrics.get("val_best/epoch"),
            "epochs": metrics.get("time/epochs"), "fit_s": round(metrics["time/fit_s"], 1), "val_curve": curve.values,
            **({"resumed": True} if resume else {})}


class ValidationCurve(logging.Handler):
    """The monitored value after each epoch, read from the line :class:`recforge.training.progress.EpochLines`
    logs (``epoch 3/300 ... val/ndcg_at_10 0.2113 (best ...``), to 4 decimals, each at its epoch's place (``None``
    for an epoch without one). With a ``path`` the curve is kept
    there after every epoch and read back first, so a resumed run's curve starts with its earlier sittings' epochs
    (an epoch a sitting logged but did not checkpoint is trained again, and its value replaced)."""

    def __init__(self, monitor: str, path: Path | None = None) -> None:
        super().__init__(logging.INFO)
        self.pattern = re.compile(rf"^epoch (\d+)(?:/\d+)? .*{re.escape(monitor)} (\S+) \(best")
        self.path = path
        self.values: list[float] = json.loads(path.read_text()) if path is not None and path.is_file() else []

    def emit(self, record: logging.LogRecord) -> None:
        found = self.pattern.search(record.getMessage())
        if found:  # at its epoch's place: None for an epoch that logged no value (not validated, not finite)
            epoch = int(found.group(1))
            del self.values[epoch - 1:]
            self.values += [None] * (epoch - 1 - len(self.values)) + [float(found.group(2))]
            if self.path is not None:
                atomic_write_text(self.path, json.dumps(self.values))


def stop_with_patience(curve: list[float | None], patience: int, mode: str = "max") -> tuple[float, int, int]:
    """(best value, its 1-based epoch, the epoch training stops at) for early stopping with ``patience`` on a
    validation ``curve`` checked every epoch, as Lightning's EarlyStopping does with ``min_delta=0``: a value that
    is not strictly better (or none) counts against the patience, and training stops when ``patience`` such values
    follow the best; a curve that ends first ends at its last epoch (the cap)."""
    sign = 1.0 if mode == "max" else -1.0
    best, best_epoch = -math.inf, 0
    for epoch, value in enumerate(curve, 1):
        if value is not None and sign * value > best:
            best, best_epoch = sign * value, epoch
        elif epoch - best_epoch >= patience:
            return sign * best, best_epoch, epoch
    return sign * best, best_epoch, len(curve)


def share_of_best(value: float, best: float, mode: str = "max") -> float:
    """``value / best`` for a maximised metric, ``best / value`` for a minimised one (an error): 1 at the best."""
    if mode == "max":
        return value / best if best else 1.0
    return best / value if value else 1.0


def kept_at_patience(curve: list[float | None], patience: int, mode: str = "max") -> float | None:
    """The share of a run's best validation value that early stopping with a shorter ``patience`` would have kept
    (:func:`stop_with_patience` replayed on the curve): 1 when the run never stalled that long before its best, a
    third to a half for a run that sat at a popularity ranker's level longer than ``patience`` before rising. None
    for a curve without a value."""
    if all(v is None for v in curve):
        return None
    best = stop_with_patience(curve, len(curve) + 1, mode)[0]
    return share_of_best(stop_with_patience(curve, patience, mode)[0], best, mode)


def run_patience(row: dict) -> int:
    """The early-stopping patience a row ran with: its ``--override``, else :data:`BUDGET`'s."""
    for override in [*BUDGET, *row.get("extra", [])]:
        if override.startswith("callbacks.early_stopping.patience="):
            patience = int(override.split("=", 1)[1])
    return patience


class Ranked(NamedTuple):
    """One candidate's standing over the settings (data/split pairs) it ran on."""

    rank: float            # mean validation rank, 1 = best within a setting
    share: float           # mean of val / the setting's best val (best val / val for a minimised monitor)
    worst: float           # the lowest of those shares
    candidate: tuple[str, ...]
    vals: dict[str, float | None]   # "data/split" -> validation value


def monitor_of(row: dict) -> str:
    """The metric a row was chosen on (rows written before the key was stored: validation NDCG@10)."""
    return row.get("monitor", "val/ndcg_at_10")


def mean_ranks(rows: list[dict]) -> list[Ranked]:
    """Each candidate that ran on every setting, best first. Ranks are 1 = best validation within a setting; the
    share is val / the setting's best val (best / val for an error such as ``val/rmse``, which is minimised).
    Candidates whose worst share is below :data:`FLOOR` come last; then the mean rank orders, and the mean share
    breaks its ties."""
    monitors = sorted({monitor_of(r) for r in rows})
    if len(monitors) > 1:
        raise SystemExit(f"the rows monitor {monitors}: values of different metrics cannot be ranked together; keep "
                         "one monitor per --json-out file")
    mode = metric_mode(monitors[0]) if monitors else "max"
    sign = -1.0 if mode == "min" else 1.0
    settings = sorted({(r["data"], r["split"]) for r in rows})
    by = {(r["data"], r["split"], tuple(r["candidate"])): r["val"] for r in rows}
    cands = sorted({tuple(r["candidate"]) for r in rows})
    ranks: dict[tuple[str, ...], list[float]] = {c: [] for c in cands}
    shares: dict[tuple[str, ...], list[float]] = {c: [] for c in cands}
    for setting in settings:
        scored = sorted((c for c in cands if (*setting, c) in by), key=lambda c: -sign * by[(*setting, c)])
        best = by[(*setting, scored[0])]
        place = 1
        for value, group in itertools.groupby(scored, key=lambda c: by[(*setting, c)]):
            tied = list(group)  # equal values share the mean of their places (two tied at the top: 1.5 each)
            for c in tied:
                ranks[c].append(place + (len(tied) - 1) / 2)
                shares[c].append(share_of_best(value, best, mode))
            place += len(tied)
    out = [Ranked(sum(r) / len(r), sum(shares[c]) / len(r), min(shares[c]), c,
                  {f"{d}/{s}": by.get((d, s, c)) for d, s in settings})
           for c, r in ranks.items() if len(r) == len(settings)]
    return sorted(out, key=lambda t: (t.worst < FLOOR, t.rank, -t.share))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--grid", nargs="+", default=[], help="key=v1,v2,... (the candidates: their product)")
    parser.add_argument("--candidate", action="append", default=[],
                        help='one more candidate, its overrides in one argument: "k1=v k2=w" (repeatable)')
    parser.add_argument("--data", nargs="+", default=["ml-100k", "lastfm-hetrec"])
    parser.add_argument("--split", nargs="+", default=["random", "leave_one_out"])
    parser.add_argument("--override", nargs="*", default=[], help="fixed overrides for every run")
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path,
                        help="train each run in a folder here, kept until its row is stored, so that a run stopped "
                             "(Ctrl-C, kill, a session's end) goes on from its last epoch when the command runs again")
    parser.add_argument("--patience", type=int, nargs="+", default=[],
                        help="also print what each of these patiences stops at, from the rows' validation curves")
    parser.add_argument("--print-only", action="store_true",
                        help="train nothing: print the table from the rows already in --json-out (with neither "
                             "--grid nor --candidate, the script otherwise trains the defaults as the one candidate)")
    args = parser.parse_args()
    from recforge.cli import quiet_warnings

    quiet_warnings()
    done = read_rows(args.json_out)
    seen = {(r["data"], r["split"], tuple(r["candidate"]), tuple(r["extra"])) for r in done}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    for data, split, candidate in itertools.product(args.data, args.split, candidates(args.grid, args.candidate)):
        if args.print_only or (data, split, candidate, tuple(args.override)) in seen:
            continue
        with contextlib.ExitStack() as stack:
            folder = kept_folder(run_folder(args.work_dir, args.model, data, split, candidate, args.override),
                                 defaults_digest(run_overrides(args.model, data, split, candidate, args.override))) \
                if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            row = run_one(args.model, data, split, candidate, args.override, folder)
        print(json.dumps(row), flush=True)
        atomic_append_text(args.json_out, json.dumps(row) + "\n")
        if args.work_dir:
            shutil.rmtree(folder)  # stored: its sittings are over
    done = read_rows(args.json_out)  # read again: with the rows that runs beside this one appended meanwhile
    rows = [r for r in done if r["model"] == args.model and r["extra"] == args.override]
    if args.patience:
        print_patience(rows, args.patience)
    table = mean_ranks(rows)
    if not table:
        others = sorted({" ".join(r["extra"]) for r in done
                         if r["model"] == args.model and r["extra"] != args.override})
        if others:  # rows of other runs are in the file: say how to see them instead of printing nothing
            print(f"no {args.model} candidate has a row on every data/split with --override {' '.join(args.override)!r}"
                  f"; the file's {args.model} rows were run with --override " + ", ".join(map(repr, others)))
        return
    settings = list(table[0].vals)
    print(f"\n{args.model}: candidates by mean validation rank over {', '.join(settings)} "
          f"({monitor_of(rows[0])})\n")
    print("| mean rank | share of best (worst) | candidate | " + " | ".join(settings)
          + f" | kept at patience {SHORT_PATIENCE} (worst) |")
    print("|---:|---:|---|" + "---:|" * (len(settings) + 1))
    for rank, share, worst, cand, vals in table:
        collapsed = f", below {FLOOR}" if worst < FLOOR else ""
        kept = [kept_at_patience(r["val_curve"], SHORT_PATIENCE, metric_mode(monitor_of(r))) for r in rows
                if tuple(r["candidate"]) == cand and r.get("val_curve") and run_patience(r) > SHORT_PATIENCE]
        kept = [k for k in kept if k is not None]   # rows run at patience 10 or less: nothing to replay
        print(f"| {rank:.2f} | {share:.3f} ({worst:.3f}{collapsed}) | `{' '.join(cand) or '(defaults)'}` | "
              + " | ".join(f"{v:.4f}" if v is not None else "-" for v in vals.values())
              + (f" | {min(kept):.3f} |" if kept else " | - |"))


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``--json-out`` file (none if it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_patience(rows: list[dict], patiences: list[int]) -> None:
    """Per row with a validation curve: the best validation value (its epoch / the epochs run) each patience gives."""
    print("\n| data/split | candidate | " + " | ".join(f"patience {p}" for p in patiences) + " |")
    print("|---|---|" + "---:|" * len(patiences))
    for r in rows:
        if not r.get("val_curve"):
            continue
        stops = [stop_with_patience(r["val_curve"], p, metric_mode(monitor_of(r))) for p in patiences]
        print(f"| {r['data']}/{r['split']} | `{' '.join(r['candidate']) or '(defaults)'}` | "
              + " | ".join(f"{best:.4f} ({epoch}/{end})" for best, epoch, end in stops) + " |")


if __name__ == "__main__":
    main()
