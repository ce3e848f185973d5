"""``recforge-compare``: compare tracked runs as a paper needs: a table, plots and paired significance tests.

    recforge-compare --out reports/all                               # every finished run of experiment 'recforge'
    recforge-compare --tag dataset=ml-100k --out reports/ml100k        # the runs on one dataset
    recforge-compare --runs 3f2a... 9b1c... 77de... --vs-param optimizer.lr
    recforge-compare --filter "params.\\`data._target_\\` LIKE '%MovieLens100K'" --tag model=EASE
    recforge-compare --significance 3f2a... 9b1c... --metric test/ndcg_at_10 --out table.csv   # tests only
    recforge-compare --tag dataset=ml-100k --tradeoff test/ild_at_10 test/aplt_at_10 --out reports/rerank

Prints the key columns (run, model as its config option, dataset, split, the monitored validation metric, a few
test metrics, seconds per epoch) in the terminal's width (120 when not a terminal) and, with ``--out DIR``, writes
the full table (every differing param, every val/test metric, parameter count) as runs.csv and runs.md, the
paired tests as significance.csv, and PNG plots grouped by dataset and model (test metric per run with bootstrap
confidence intervals, learning curves over epochs, metric against ``--vs-param``). Paired tests run within
each group of runs that share a split fingerprint. Runs that kept per-user slices (``eval.beyond``) also get the
metric by slice (users cold / light / medium / heavy, niche / diverse / blockbuster; items head / mid / tail):
the best run of each slice with its lead over the runner-up in the terminal, and slices.csv (mean and bootstrap
CI per slice and run), slice_significance.csv (paired tests within each slice, Holm-corrected), slice_winners.csv
and a plot of the metric by slice per run. Re-ranked runs (``rerank=...``) get the metric drawn against
intra-list diversity, miscalibration and long-tail share (``--tradeoff`` chooses), a line per re-ranker through
its trade-off settings. Runs come from the MLflow experiment ``recforge`` (where
``recforge-train`` logs unless ``tracking.experiment_name=<name>``) unless ``--experiment`` or ``--runs`` says
otherwise. The tracking store is ``--tracking-uri`` (a SQLite URI or a tracking server's ``http://host:port``),
else ``MLFLOW_TRACKING_URI``, else ``sqlite:///logs/mlflow.db``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from recforge.errors import RecForgeError


def _print(frame) -> None:
    from recforge.analysis.runs import to_text

    print(to_text(frame, shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recforge-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", action="append", default=[],
                        help="MLflow experiment name (repeatable; default: recforge, where recforge-train logs "
                             "unless tracking.experiment_name=<name>)")
    parser.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="run ids to compare")
    parser.add_argument("--filter", default="", help="an MLflow search filter string")
    parser.add_argument("--tag", action="append", default=[], help="key=value tag to match (repeatable)")
    parser.add_argument("--significance", nargs="*", metavar="RUN_ID", default=None,
                        help="only the paired tests, between these run ids (or the selected runs)")
    parser.add_argument("--metric", default="test/ndcg_at_10", help="metric of the plots and tests")
    parser.add_argument("--metrics", nargs="+", default=None, help="table columns (default: all val/ and test/)")
    parser.add_argument("--params", nargs="+", default=None, help="param columns (default: those that differ)")
    parser.add_argument("--curve-metric", default="val/ndcg_at_10", help="metric of the learning curves")
    parser.add_argument("--vs-param", default=None, help="plot --metric against this hyperparameter")
    parser.add_argument("--tradeoff", nargs="+", default=None, metavar="METRIC",
                        help="plot --metric against these beyond-accuracy metrics (default for re-ranked runs: "
                             "test/ild_at_K, test/miscalibration_at_K, test/aplt_at_K at --metric's K)")
    parser.add_argument("--include-failed", action="store_true")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (with --significance RUN...: a CSV file for the table)")
    parser.add_argument("--n-bootstrap", type=int, default=10000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if args.n_bootstrap < 1:
            raise RecForgeError(f"--n-bootstrap={args.n_bootstrap} must be positive, e.g. 10000")
        if not 0 < args.confidence < 1:
            raise RecForgeError(f"--confidence={args.confidence} must lie in (0, 1), e.g. 0.95")
        if args.significance:  # the pairwise tests between given runs only
            return _significance_only(args)
        from recforge.analysis.report import compare_report
        from recforge.analysis.runs import parse_tags, select_runs
        from recforge.tracking.client import tracking_client

        client = tracking_client(args.tracking_uri)
        runs = select_runs(client, args.experiment, args.runs, args.filter, parse_tags(args.tag), args.include_failed)
        report = compare_report(client, runs, args.out, args.metric, args.metrics, args.params, args.curve_metric,
                                args.vs_param, significance=True, plots=not args.no_plots,
                                n_bootstrap=args.n_bootstrap, confidence=args.confidence, seed=args.seed,
                                tradeoff=args.tradeoff)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from recforge.analysis.report import key_columns, key_significance, model_labels, run_labels

    _print(key_columns(report.table, args.metric))
    if not report.significance.empty:
        print(f"\npaired tests of {args.metric} within each split:")
        _print(key_significance(report.significance, run_labels(runs)))
    if not report.winners.empty:
        from recforge.analysis.slices import key_winners

        print(f"\n{args.metric} by slice: the best run of each slice (mean, {args.confidence:.0%} CI) and its lead "
              "over the runner-up (Wilcoxon p):")
        winners = key_winners(report.winners, model_labels(runs), {r.info.run_id: r.data.tags.get("dataset", "")
                                                                   for r in runs})
        for dataset, part in winners.groupby("dataset", sort=False):
            print(f"{dataset}:")
            _print(part.drop(columns="dataset"))
    if not report.files:
        print(f"\n(--out DIR writes the full table, {report.table.shape[1]} columns, as CSV and Markdown, "
              "and the plots)")
    for path in report.files:
        print(f"saved: {path}")
    return 0


def _significance_only(args) -> int:
    from recforge.analysis.significance import compare_runs
    from recforge.utils.io import atomic_path

    from recforge.analysis.report import key_significance

    table = compare_runs(args.significance, args.metric, args.tracking_uri, args.n_bootstrap, args.confidence,
                         args.seed)
    _print(key_significance(table, {run_id: run_id[:8] for run_id in args.significance}))
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
