"""PNG plots of a comparison: test metrics with confidence intervals, learning curves, metric vs hyperparameter.

Every function draws one figure with matplotlib's non-interactive Agg backend, writes it atomically and
returns the path; it needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.analysis.significance import bootstrap_ci
from recforge.utils.io import atomic_path


def _figure(width: float = 7.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def mean_with_ci(values: Mapping[str, pd.Series], n_bootstrap: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """Per label: the mean of its per-user values (NaN dropped) and a percentile bootstrap CI of that mean."""
    rows = []
    for label, series in values.items():
        x = series.dropna().to_numpy(float)
        low, high = bootstrap_ci(x, n_bootstrap, confidence, seed)
        rows.append({"label": label, "mean": float(x.mean()) if len(x) else np.nan, "ci_low": low, "ci_high": high,
                     "n_users": len(x)})
    return pd.DataFrame(rows)


def plot_metric_ci(summary: pd.DataFrame, metric: str, path: Path, confidence: float = 0.95) -> Path:
    """Bars of ``summary`` (from :func:`mean_with_ci`) with their confidence intervals as error bars."""
    fig, ax = _figure(max(4.0, 1.1 * len(summary) + 2), 4.0)
    x = np.arange(len(summary))
    err = np.vstack([summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]])
    ax.bar(x, summary["mean"], yerr=err, capsize=4, color="#4C72B0")
    ax.set_xticks(x, summary["label"], rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run, {confidence:.0%} bootstrap CI over users")
    return _save(fig, path)


def plot_learning_curves(history: pd.DataFrame, labels: Mapping[str, str], metric: str, path: Path) -> Path:
    """One line per run of ``history`` (run_id, step, value), e.g. ``val/ndcg_at_10`` after each epoch."""
    fig, ax = _figure()
    for run_id, part in history.groupby("run_id", sort=False):
        ax.plot(part["step"], part["value"], marker="o", markersize=3, label=labels.get(run_id, run_id[:8]))
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves: {metric}")
    if len(history):
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_metric_vs_param(table: pd.DataFrame, param: str, metric: str, path: Path) -> Path:
    """``metric`` against hyperparameter ``param`` (a column of a runs table); log x for wide positive ranges."""
    fig, ax = _figure()
    table = table[table[param].notna()]  # runs without the parameter (another model) are left out
    values = pd.to_numeric(table[param], errors="coerce")
    y = table[metric].to_numpy(float)
    if values.notna().all() and len(values):
        x = values.to_numpy(float)
        ax.scatter(x, y, color="#4C72B0")
        if (x > 0).all() and x.max() / x.min() > 10:
            ax.set_xscale("log")
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], y[order], color="#4C72B0", alpha=0.3)
    else:  # categorical values: one column of points per value
        labels = table[param].map(str)
        categories = sorted(labels.unique())
        ax.scatter(labels.map({c: i for i, c in enumerate(categories)}).to_numpy(), y, color="#4C72B0")
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {param}")
    return _save(fig, path)
