"""Faithfulness of RecForge's explanations: does removing an item's top reasons lower it more than removing as
many random ones? One row per trained run (``recforge.explain.faithfulness`` says what is measured).

    RECFORGE_DATA_DIR=/work/shared/datasets python scripts/explain_faithfulness.py \\
        --ckpt logs/runs/<ease run>/checkpoints/best.ckpt --ckpt logs/runs/<bpr run>/checkpoints/best.ckpt

Each checkpoint's data and split are rebuilt from the config it stores; the model reads the test stage's
histories. Prints a Markdown table (and writes it to ``--output`` when given).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import recforge  # noqa: F401  (first: it tunes OpenBLAS before numpy loads, see recforge/__init__.py)
import torch

from recforge.errors import RecForgeError
from recforge.eval import load_checkpoint
from recforge.explain.counterfactual import counterfactual_for
from recforge.explain.faithfulness import measure
from recforge.explain.report import explained_run, sample_test_users
from recforge.utils.io import atomic_write_text

HEADER = ("| model | method | counterfactual | pairs | rank drop: top reasons | rank drop: random | reasons win "
          "| score drop ratio | base agrees | explain ms | score ms |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(path: str, label: str | None, args: argparse.Namespace) -> str:
    exp = load_checkpoint(path, args.data_dir)
    run = explained_run(exp)
    counterfactual = counterfactual_for(run.model, run.histories, exp.datamodule.n_users, run.explainer.context)
    result = measure(run.model, run.explainer, counterfactual, sample_test_users(exp, args.users, args.seed),
                     run.histories, args.k, args.remove, args.draws, args.seed)
    name = f"{type(run.model).__name__} ({label})" if label else type(run.model).__name__
    surrogate = "" if counterfactual.exact else " (surrogate)"
    ratio = "n/a" if math.isnan(result.score_drop_ratio) else f"{result.score_drop_ratio:.2f}"
    return (f"| {name} | {result.method} | {result.counterfactual}{surrogate} | {result.pairs} | "
            f"{result.rank_drop_reasons:.1f} | {result.rank_drop_random:.1f} | {100 * result.wins:.0f}% | {ratio} | "
            f"{100 * result.base_overlap:.0f}% | {ms(result.explain_ms)} | {ms(result.score_ms)} |")


def ms(value: float) -> str:
    """Milliseconds to two significant figures or whole (0.35, 2.7, 14, 230)."""
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", action="append", required=True, help="a run's checkpoint (repeat for more runs)")
    parser.add_argument("--label", action="append", help="a label shown beside each --ckpt's model (one per --ckpt)")
    parser.add_argument("--data-dir", help="where the raw data is now (default: the checkpoint's own)")
    parser.add_argument("--users", type=int, default=200, help="test users sampled (default 200)")
    parser.add_argument("--k", type=int, default=10, help="recommended items explained per user (default 10)")
    parser.add_argument("--remove", type=int, default=3, help="top reasons (and random ones) removed (default 3)")
    parser.add_argument("--draws", type=int, default=5, help="random draws per item (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [HEADER]
    try:
        if args.label and len(args.label) != len(args.ckpt):
            raise RecForgeError(f"{len(args.label)} --label for {len(args.ckpt)} --ckpt; give one label per checkpoint")
        print(HEADER, flush=True)
        for path, label in zip(args.ckpt, args.label or [None] * len(args.ckpt)):
            lines.append(row(path, label, args))
            print(lines[-1], flush=True)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.output:
        atomic_write_text(Path(args.output), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
