"""What metric names say: whether a metric is minimised or maximised."""

from __future__ import annotations

LOWER_IS_BETTER = ("rmse", "mae", "loss", "gini", "avgpop")


def metric_mode(metric: str) -> str:
    """``min`` for errors and losses (``val/rmse``, ``train/loss``), ``max`` for everything else."""
    return "min" if any(part in metric.rsplit("/", 1)[-1] for part in LOWER_IS_BETTER) else "max"
