"""``recforge-monitor``: summarise the service's JSON-lines request log.

    recforge-monitor logs/serve.jsonl --bundle logs/runs/<time>/model [--json]
    recforge-monitor logs/serve.jsonl.2 logs/serve.jsonl.1 logs/serve.jsonl     # with rotated files

Definitions (``summarise`` returns them as a dict; the tests check each against hand-computed values):

* traffic: ``requests`` (log lines), per endpoint; ``duration_s`` = seconds from the first line to the last;
  ``requests_per_second`` = requests / duration_s (None for a log of one instant); ``minutes`` = calendar
  minutes from the first line's to the last line's (inclusive); ``peak_per_minute`` = requests in the busiest
  calendar minute.
* latency: p50/p95/p99/mean of ``latency_ms`` over all lines (numpy's linear-interpolation percentiles),
  also per endpoint.
* ``error_rate``: share of lines with status >= 400 (``server_errors``: status >= 500).
* ``fallback_rate``: share of successful ``/recommend`` responses that were popularity fallbacks.
* served items: every item slot of every successful ``/recommend`` response. ``coverage`` = distinct served
  items / catalogue size. Popularity (with a bundle): an item's training popularity is its number of
  training interactions; ``mean_popularity_served`` averages it over served slots,
  ``mean_popularity_training`` over training interactions (sum p_i^2 / sum p_i); ``top10pct_share_served``
  is the share of served slots in the top 10% most popular items (ceil(0.1 * n_items) items, ties to the
  lower item index), ``top10pct_share_training`` the same share of training interactions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError


def read_log(path: str | os.PathLike) -> pd.DataFrame:
    """The log as a frame (one row per line); a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecForgeError(f"{path}: no such log file; recforge-serve writes one with --log-file")
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecForgeError(f"{path}:{number}: not a JSON line ({exc.msg}); fix or remove the line") from None
            missing = [key for key in ("ts", "endpoint", "status", "latency_ms") if key not in record]
            if missing:
                raise RecForgeError(f"{path}:{number}: missing {', '.join(missing)}; is this a recforge-serve log?")
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if len(frame):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    return frame


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(values.mean())}


def summarise(log: pd.DataFrame, bundle=None) -> dict[str, Any]:
    """The monitoring summary of a request log (see the module docstring); ``bundle`` adds catalogue coverage
    and popularity against training."""
    n = len(log)
    summary: dict[str, Any] = {"requests": n}
    if not n:
        return summary
    minute = log["ts"].dt.floor("min")
    minutes = int((minute.max() - minute.min()) / pd.Timedelta(minutes=1)) + 1
    duration = (log["ts"].max() - log["ts"].min()).total_seconds()
    summary["traffic"] = {
        "first": log["ts"].min().isoformat(), "last": log["ts"].max().isoformat(), "duration_s": duration,
        "requests_per_second": n / duration if duration > 0 else None,
        "minutes": minutes, "peak_per_minute": int(minute.value_counts().max()),
        "by_endpoint": {str(k): int(v) for k, v in log["endpoint"].value_counts().sort_index().items()},
    }
    latency = log["latency_ms"].to_numpy(dtype=float)
    summary["latency_ms"] = _percentiles(latency)
    summary["latency_ms_by_endpoint"] = {str(e): _percentiles(g.to_numpy(dtype=float))
                                         for e, g in log.groupby("endpoint")["latency_ms"]}
    status = log["status"].astype(int)
    summary["error_rate"] = float((status >= 400).mean())
    summary["server_errors"] = int((status >= 500).sum())

    ok = log[(log["endpoint"] == "/recommend") & (status == 200)]
    summary["recommend_ok"] = len(ok)
    summary["fallback_rate"] = float(ok["fallback"].astype(bool).mean()) if len(ok) and "fallback" in ok else None
    served = [item for items in ok.get("items", pd.Series(dtype=object)) if isinstance(items, list) for item in items]
    summary["served_slots"] = len(served)
    summary["distinct_items_served"] = len(set(served))
    if bundle is not None:
        summary.update(_against_training(served, bundle))
    return summary


def _against_training(served: list, bundle) -> dict[str, Any]:
    n_items = len(bundle.item_ids)
    popularity = np.asarray(bundle.popularity, dtype=float)
    columns = bundle.item_index(np.asarray(served, dtype=object)) if served else np.empty(0, dtype=np.int64)
    known = columns[columns >= 0]
    n_top = math.ceil(0.1 * n_items)
    top = np.lexsort((np.arange(n_items), -popularity))[:n_top]
    in_top = np.zeros(n_items, dtype=bool)
    in_top[top] = True
    total = popularity.sum()
    return {
        "n_items": n_items,
        "coverage": len(np.unique(known)) / n_items if n_items else None,
        "items_unknown_to_model": int((columns < 0).sum()),
        "mean_popularity_served": float(popularity[known].mean()) if len(known) else None,
        "mean_popularity_training": float((popularity ** 2).sum() / total) if total else None,
        "top10pct_items": n_top,
        "top10pct_share_served": float(in_top[known].mean()) if len(known) else None,
        "top10pct_share_training": float(popularity[top].sum() / total) if total else None,
    }


def format_duration(seconds: float) -> str:
    """``0.25 s``, ``42 s``, ``2 min 3 s``, ``5 h 7 min``, ``2 d 3 h``: the two largest units, nothing rounded up
    to a whole minute."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    whole = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // small_size} {small}"
    return f"{whole // 60} min {whole % 60} s"


def format_summary(summary: dict[str, Any]) -> str:
    def f(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    lines = [f"requests            {summary['requests']}"]
    if not summary["requests"]:
        return lines[0]
    t, lat = summary["traffic"], summary["latency_ms"]
    lines += [
        f"period              {t['first']} .. {t['last']} ({format_duration(t['duration_s'])})",
        f"rate                {f(t['requests_per_second'], '{:.1f}')} requests/s over "
        f"{format_duration(t['duration_s'])} (busiest calendar minute: {t['peak_per_minute']} requests)",
        "by endpoint         " + ", ".join(f"{k} {v}" for k, v in t["by_endpoint"].items()),
        f"latency ms          p50 {f(lat['p50'])}  p95 {f(lat['p95'])}  p99 {f(lat['p99'])}  mean {f(lat['mean'])}",
        f"error rate          {summary['error_rate']:.2%} ({summary['server_errors']} server errors)",
        f"fallback rate       {f(summary['fallback_rate'], '{:.2%}')} of {summary['recommend_ok']} recommendations",
        f"served items        {summary['distinct_items_served']} distinct in {summary['served_slots']} slots",
    ]
    if "coverage" in summary:
        lines += [
            f"catalogue coverage  {f(summary['coverage'], '{:.2%}')} of {summary['n_items']} items"
            + (f" ({summary['items_unknown_to_model']} served ids unknown to the model)"
               if summary["items_unknown_to_model"] else ""),
            f"mean popularity     served {f(summary['mean_popularity_served'], '{:.1f}')} vs training "
            f"interactions {f(summary['mean_popularity_training'], '{:.1f}')}",
            f"top-10% popular     {f(summary['top10pct_share_served'], '{:.2%}')} of served vs "
            f"{f(summary['top10pct_share_training'], '{:.2%}')} of training interactions "
            f"({summary['top10pct_items']} items)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recforge-monitor", description="Summarise a recforge-serve request log.")
    parser.add_argument("log_files", nargs="+", metavar="log_file",
                        help="the JSON-lines log (recforge-serve --log-file), and any rotated ones (<log>.1, ...)")
    from recforge.serving.registry import add_model_source_args

    add_model_source_args(parser)  # optional here: the training reference for popularity and coverage
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        log = pd.concat([read_log(path) for path in args.log_files], ignore_index=True)
        bundle = None
        if args.bundle or args.run_id or args.model or args.ckpt:
            from recforge.serving.registry import load, source_uri

            bundle, _ = load(source_uri(args.model, args.run_id, args.bundle, args.ckpt),
                             args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        summary = summarise(log, bundle)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


if __name__ == "__main__":
    main()
