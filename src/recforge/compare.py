"""``recforge-compare --significance RUN RUN [...]``: paired significance tests between tracked runs.

    recforge-compare --significance 3f2a... 9b1c... --metric test/ndcg_at_10 --out table.csv

Prints one row per pair of runs (mean difference with a bootstrap CI, paired t-test and Wilcoxon p-values,
both Holm-corrected) and writes it as CSV. The tracking store is ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else the default store of ``recforge-train`` (``sqlite:///logs/mlflow.db``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recforge.errors import RecForgeError


def default_tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    log_dir = Path(os.environ.get("RECFORGE_LOG_DIR", Path(os.environ.get("RECFORGE_ROOT", ".")) / "logs"))
    return f"sqlite:///{log_dir.resolve()}/mlflow.db"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recforge-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--significance", nargs="+", metavar="RUN_ID", required=True,
                        help="two or more MLflow run ids evaluated on the same split")
    parser.add_argument("--metric", default="test/ndcg_at_10")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=None, help="CSV file for the table")
    parser.add_argument("--n-bootstrap", type=int, default=10000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from recforge.analysis.significance import compare_runs
        from recforge.utils.io import atomic_path

        if args.n_bootstrap < 1:
            raise RecForgeError(f"--n-bootstrap={args.n_bootstrap} must be positive, e.g. 10000")
        table = compare_runs(args.significance, args.metric, args.tracking_uri or default_tracking_uri(),
                             args.n_bootstrap, args.confidence, args.seed)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"saved: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
