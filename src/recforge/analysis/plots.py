"""PNG plots of a comparison: test metrics with confidence intervals, learning curves, metric vs hyperparameter.

Runs are grouped the way they can be compared: one panel per dataset (each has its own scale), one colour per
model (its config option, ``bpr``, ``neumf``; the same colour in every plot of a report). Each function takes the
runs table (:func:`recforge.analysis.runs.runs_table`: ``run_id``, ``model``, ``dataset``, ...), draws one figure
with matplotlib's non-interactive Agg backend, writes it atomically and returns the path; it needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.analysis.significance import bootstrap_ci, per_user_label
from recforge.metrics.names import metric_mode
from recforge.utils.io import atomic_path

LINE_STYLES = ("-", "--", ":", "-.")
MAX_VALUE_TICKS = 8  # a numeric axis with at most this many distinct values gets one tick per value


def _panels(heights: list[float], width: float = 9.0):
    """A figure of one panel per dataset, stacked, each ``heights[i]`` inches high."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heights = heights or [1.0]  # nothing to draw: one empty panel
    fig, axes = plt.subplots(len(heights), 1, figsize=(width, sum(heights) + 0.6), dpi=110, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    return fig, list(axes[:, 0])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for ax in fig.axes:
        _untangle_xticks(fig, ax)
    fig.tight_layout()
    for ax in fig.axes:
        _hide_overlapping_labels(fig, ax)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")  # legends beside the panels stay in the picture
    plt.close(fig)
    return path


def _untangle_xticks(fig, ax) -> None:
    """No two x tick labels overlap: labels that do are set upright, and if they still do, only every n-th stays."""
    labels = [t for t in ax.get_xticklabels() if t.get_text()]

    def overlapping() -> bool:
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in labels if t.get_visible()]
        return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))

    if len(labels) < 2 or not overlapping():
        return
    for label in labels:
        label.set(rotation=90, ha="center")
    step = 1
    while overlapping() and step < len(labels):
        step += 1
        for i, label in enumerate(labels):
            label.set_visible(i % step == 0)


POINT_LABEL = "point_label"  # the gid of a text that labels a point: hidden where it overlaps an earlier one


def _hide_overlapping_labels(fig, ax) -> None:
    """Each point label of ``ax`` that overlaps one drawn before it is hidden (points at nearly the same place)."""
    labels = [t for t in ax.texts if t.get_gid() == POINT_LABEL]
    if len(labels) < 2:
        return
    fig.canvas.draw()
    shown = []
    for label in labels:
        box = label.get_window_extent()
        if any(box.overlaps(other) for other in shown):
            label.set_visible(False)
        else:
            shown.append(box)


def _finish_panel(ax, dataset: str, xlabel: str | None, ylabel: str, has_runs: bool) -> None:
    """A dataset's panel: axis labels, the dataset as title, the legend beside the panel when it drew runs."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(dataset, fontsize=10, loc="left")
    if has_runs:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), handlelength=3.5)


def model_colours(models) -> dict[str, tuple]:
    """One colour per model name, in sorted order (matplotlib's ``tab10``, then ``tab20``)."""
    import matplotlib

    names = sorted(set(models))
    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def _datasets(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["dataset"]))


def mean_with_ci(values: Mapping[str, pd.Series], n_bootstrap: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> pd.DataFrame:
    """Per run id: the mean of its per-user values (NaN dropped) and a percentile bootstrap CI of that mean."""
    rows = []
    for run_id, series in values.items():
        x = series.dropna().to_numpy(float)
        low, high = bootstrap_ci(x, n_bootstrap, confidence, seed)
        rows.append({"run_id": run_id, "mean": float(x.mean()) if len(x) else np.nan, "ci_low": low,
                     "ci_high": high, "n_users": len(x)})
    return pd.DataFrame(rows, columns=["run_id", "mean", "ci_low", "ci_high", "n_users"])


def plot_metric_ci(summary: pd.DataFrame, table: pd.DataFrame, labels: Mapping[str, str], metric: str, path: Path,
                   confidence: float = 0.95) -> Path:
    """Horizontal bars of ``summary`` (from :func:`mean_with_ci`) with their confidence intervals: a panel per
    dataset, best run on top, coloured by model, each run's mean written beside its bar."""
    data = summary.merge(table[["run_id", "model", "dataset"]], on="run_id")
    colours = model_colours(table["model"])
    datasets = _datasets(data)
    fig, axes = _panels([0.5 + 0.32 * (data["dataset"] == d).sum() for d in datasets])
    for ax, dataset in zip(axes, datasets):
        part = data[data["dataset"] == dataset].sort_values("mean", ascending=metric_mode(metric) == "min",
                                                            kind="stable")
        y = np.arange(len(part))
        err = np.vstack([part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]])
        ax.barh(y, part["mean"], xerr=err, capsize=3, color=[colours[m] for m in part["model"]], height=0.7)
        ax.set_yticks(y, [f"{m}: {labels.get(r, r[:8])}" for m, r in zip(part["model"], part["run_id"])])
        ax.invert_yaxis()
        for yi, (mean, high) in enumerate(zip(part["mean"], part["ci_high"])):
            ax.annotate(f"{mean:.4f}", (high, yi), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=8)
        ax.set_xlim(0, part["ci_high"].max() * 1.15)
        ax.set_title(dataset, fontsize=10, loc="left")
        ax.set_xlabel(per_user_label(metric))
    fig.suptitle(f"{metric}: mean over test users, {confidence:.0%} bootstrap CI", fontsize=11)
    return _save(fig, path)


def plot_learning_curves(history: pd.DataFrame, table: pd.DataFrame, labels: Mapping[str, str], metric: str,
                         path: Path) -> Path:
    """``metric`` after each epoch (``history`` from :func:`recforge.analysis.runs.epoch_history`): a panel per
    dataset, a line per run coloured by its model; a run without epochs (EASE, ItemKNN) is a dashed level line."""
    data = history.merge(table[["run_id", "model", "dataset"]], on="run_id")
    colours = model_colours(table["model"])
    datasets = _datasets(table[table["run_id"].isin(data["run_id"])]) or ["(no values)"]
    fig, axes = _panels([3.2] * len(datasets))
    from matplotlib.ticker import MaxNLocator

    for ax, dataset in zip(axes, datasets):
        part = data[data["dataset"] == dataset]
        seen: dict[str, int] = {}
        for run_id, run in part.groupby("run_id", sort=False):
            model = run["model"].iloc[0]
            style = LINE_STYLES[seen.get(model, 0) % len(LINE_STYLES)]  # runs of one model: one style each
            seen[model] = seen.get(model, 0) + 1
            label = f"{model}: {labels.get(run_id, run_id[:8])}"
            if run["epoch"].isna().all():
                ax.axhline(run["value"].iloc[-1], color=colours[model], linestyle="--", linewidth=1,
                           label=f"{label} (no epochs)")
            else:
                ax.plot(run["epoch"], run["value"], color=colours[model], linestyle=style, marker="o",
                        markersize=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish_panel(ax, dataset, "epoch", metric, len(part) > 0)
    fig.suptitle(f"learning curves: {metric} after each epoch", fontsize=11)
    return _save(fig, path)


def plot_metric_vs_param(table: pd.DataFrame, param: str, metric: str, path: Path) -> Path:
    """``metric`` against hyperparameter ``param`` (columns of a runs table): a panel per dataset, a line per model
    through its runs (the mean where several share a value); log x for wide positive ranges, one tick per value
    when there are few, one column per value for categorical ones. Runs without the parameter, and for optimizer
    and scheduler parameters runs fitted without epochs, are left out."""
    colours = model_colours(table["model"])
    table = table[table[param].notna() & table[metric].notna()]
    if param.startswith(("optimizer.", "scheduler.")) and "s_per_epoch" in table:
        table = table[table["s_per_epoch"] != 0]  # fitted without epochs (EASE, ItemKNN): no optimizer to vary
    numbers = pd.to_numeric(table[param], errors="coerce")
    numeric = bool(len(table)) and numbers.notna().all()
    x_all = numbers if numeric else table[param].map(str)
    categories = sorted(x_all.unique()) if not numeric else []
    datasets = _datasets(table) or ["(no runs with this parameter)"]
    fig, axes = _panels([3.2] * len(datasets), width=max(7.0, 0.7 * len(categories) + 3))
    for ax, dataset in zip(axes, datasets):
        part = table[table["dataset"] == dataset]
        x = (x_all[part.index] if numeric else x_all[part.index].map({c: i for i, c in enumerate(categories)}))
        for model, rows in part.groupby("model", sort=True):
            xs, ys = x[rows.index].to_numpy(float), rows[metric].to_numpy(float)
            ax.scatter(xs, ys, color=colours[model], s=18, zorder=3)
            means = pd.Series(ys).groupby(xs).mean()
            ax.plot(means.index, means.to_numpy(), color=colours[model], label=model, linewidth=1.5)
        if numeric:
            _value_ticks(ax, np.unique(x.to_numpy(float)))
        else:  # every category in every panel; a class path by its class name
            names = [c.rsplit(".", 1)[-1] if param.endswith("_target_") else c for c in categories]
            slanted = max(map(len, names)) > 6
            ax.set_xticks(range(len(names)), names, rotation=30 if slanted else 0, ha="right" if slanted else "center")
            ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.set_title(dataset, fontsize=10, loc="left")
        if len(part):
            ax.legend(fontsize=8, title="model", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{metric} vs {param}", fontsize=11)
    return _save(fig, path)


def _value_ticks(ax, values: np.ndarray) -> None:
    """A log axis for a wide positive range; one labelled tick per value when there are few values."""
    from matplotlib.ticker import NullFormatter, NullLocator

    if len(values) and (values > 0).all() and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    if len(values) <= MAX_VALUE_TICKS:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(values, [f"{v:g}" for v in values])


FAMILY_CAPTIONS = {"activity": "users by history length", "profile": "users by history popularity",
                   "items": "test items by popularity"}


def plot_metric_by_slice(summary: pd.DataFrame, table: pd.DataFrame, labels: Mapping[str, str], metric: str,
                         path: Path, confidence: float = 0.95) -> Path:
    """``metric`` by slice (``summary`` from :func:`recforge.analysis.slices.slice_summary`): a panel per dataset,
    the slices along x in the summary's order (a gap between families: user activity, user popularity profile,
    item popularity), one line of points with confidence-interval bars per run (``labels``: its legend entry),
    coloured by its model and re-ranker (``ease``, ``ease+mmr``; line styles tell the runs of one colour apart)."""
    data = summary.merge(table[["run_id", "model", "dataset"]], on="run_id")
    reranked = table["rerank"].map(lambda r: "" if r == "none" else f"+{r}") if "rerank" in table else ""
    kind_of = dict(zip(table["run_id"], table["model"] + reranked))
    colours = model_colours(kind_of.values())
    family_of = dict(zip(summary["slice"], summary["family"]))
    slices = list(family_of)
    families = [family_of[s] for s in slices]
    x = np.cumsum([0] + [1 + 0.6 * (a != b) for a, b in zip(families, families[1:])])
    where = dict(zip(slices, x))
    datasets = _datasets(data) or ["(no per-user slices)"]
    fig, axes = _panels([3.4] * len(datasets), width=max(8.0, 0.9 * len(slices) + 4))
    for ax, dataset in zip(axes, datasets):
        part = data[data["dataset"] == dataset]
        run_ids = list(dict.fromkeys(part["run_id"]))
        seen: dict[str, int] = {}
        for i, run_id in enumerate(run_ids):
            run = part[part["run_id"] == run_id].set_index("slice")
            run = run.loc[[s for s in slices if s in run.index]]
            kind = kind_of[run_id]
            style = LINE_STYLES[seen.get(kind, 0) % len(LINE_STYLES)]
            seen[kind] = seen.get(kind, 0) + 1
            offset = (i - (len(run_ids) - 1) / 2) * min(0.12, 0.6 / max(len(run_ids), 1))
            xs = np.array([where[s] for s in run.index]) + offset
            err = np.vstack([run["mean"] - run["ci_low"], run["ci_high"] - run["mean"]])
            for family in dict.fromkeys(families):  # a line within each family of slices, none across
                keep = np.array([family_of[s] == family for s in run.index])
                ax.errorbar(xs[keep], run["mean"][keep], yerr=err[:, keep], color=colours[kind], linestyle=style,
                            marker="o", markersize=4, capsize=2, linewidth=1,
                            label=labels.get(run_id, run_id[:8]) if family == families[0] else None)
        ax.set_xticks(x, [s.partition("_")[2] for s in slices])  # cold, niche, head: the family says the rest
        for family in dict.fromkeys(families):
            centre = np.mean([where[s] for s in slices if family_of[s] == family])
            ax.annotate(FAMILY_CAPTIONS.get(family, family), (centre, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -20), textcoords="offset points", ha="center", va="top", fontsize=8,
                        color="0.35")
        _finish_panel(ax, dataset, None, metric, len(part) > 0)
    fig.suptitle(f"{metric} by slice: mean over the slice's test users, {confidence:.0%} bootstrap CI", fontsize=11)
    return _save(fig, path)


RERANK_MARKERS = {"none": "*", "mmr": "o", "calibrated": "s", "xquad": "^", "fair": "D"}


def plot_tradeoff(table: pd.DataFrame, accuracy: str, beyond: str, path: Path) -> Path:
    """Accuracy against a beyond-accuracy metric for re-ranked runs (columns ``rerank`` and ``rerank.trade_off``
    of ``table``): a panel per dataset, a line per (model, re-ranker) through its runs in order of trade-off, from
    the model's run without re-ranking (a star) when there is exactly one; each point says its trade-off (unless
    that label would cover another point's)."""
    colours = model_colours(table["model"])
    table = table[table[accuracy].notna() & table[beyond].notna()]
    datasets = _datasets(table) or ["(no runs with both metrics)"]
    fig, axes = _panels([3.6] * len(datasets))
    for ax, dataset in zip(axes, datasets):
        part = table[table["dataset"] == dataset]
        for model, runs in part.groupby("model", sort=True):
            start = runs[runs["rerank"] == "none"]
            if len(start):
                ax.plot(start[beyond], start[accuracy], linestyle="none", marker="*", markersize=11,
                        color=colours[model], label=f"{model}: no re-ranking")
            for method, points in runs[runs["rerank"] != "none"].groupby("rerank", sort=True):
                points = points.sort_values("rerank.trade_off", kind="stable")
                if len(start) == 1:
                    points = pd.concat([start, points])
                ax.plot(points[beyond], points[accuracy], color=colours[model], linewidth=1,
                        marker=RERANK_MARKERS.get(method, "o"), markersize=5, label=f"{model} + {method}",
                        linestyle=LINE_STYLES[list(RERANK_MARKERS).index(method) % len(LINE_STYLES)]
                        if method in RERANK_MARKERS else "-")
                for _, row in points[points["rerank"] != "none"].iterrows():
                    ax.annotate(f"{row['rerank.trade_off']:g}", (row[beyond], row[accuracy]), xytext=(3, 3),
                                textcoords="offset points", fontsize=7, gid=POINT_LABEL)
        _finish_panel(ax, dataset, beyond, accuracy, len(part) > 0)
    fig.suptitle(f"re-ranking: {accuracy} against {beyond} (numbers: trade_off)", fontsize=11)
    return _save(fig, path)
