"""What metric names say: whether a metric is minimised or maximised."""

from __future__ import annotations

LOWER_IS_BETTER = ("rmse", "mae", "loss", "gini", "avgpop", "miscalibration")
COSTS = ("time/", "params/")  # fitting seconds, epochs, parameter counts: a sweep's second objective minimises them
SAMPLED_PREFIXES = ("sampled", "popsampled")  # a sampled protocol's metrics (recforge.metrics.sampled.protocol_prefix)
SAMPLED_SEED = 0  # eval.sampled.seed when a config leaves it out


def metric_mode(metric: str) -> str:
    """``min`` for errors, losses, concentration, miscalibration (a KL divergence) and costs (``val/rmse``,
    ``train/loss``, ``test/miscalibration_at_10``, ``time/fit_s``), ``max`` for everything else."""
    name = metric.rsplit("/", 1)[-1]
    return "min" if metric.startswith(COSTS) or any(part in name for part in LOWER_IS_BETTER) else "max"
