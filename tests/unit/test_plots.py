"""The comparison plots are grouped the way runs compare: a panel per dataset, a colour per model (the same in
every plot), a line per model against a hyperparameter, epochs on the x axis of learning curves, and x tick
labels that never overlap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recforge.analysis import plots

TABLE = pd.DataFrame({
    "run_id": ["r1", "r2", "r3", "r4", "r5"],
    "model": ["bpr", "bpr", "neumf", "ease", "bpr"],
    "dataset": ["ml-100k", "ml-100k", "ml-100k", "ml-100k", "synthetic"],
    "optimizer.lr": ["0.001", "0.01", "0.005", "0.001", "0.005"],
    "test/ndcg_at_10": [0.17, 0.21, 0.26, 0.33, 0.19],
    "s_per_epoch": [10.0, 11.0, 60.0, 0.0, 9.0],
})
LABELS = {r: f"run-{r}" for r in TABLE["run_id"]}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw and write, kept open to be looked at."""
    import matplotlib.pyplot as plt

    close, drawn = plt.close, []
    monkeypatch.setattr(plt, "close", drawn.append)
    yield drawn
    for fig in drawn:
        close(fig)


def panels(fig) -> dict[str, object]:
    return {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}


def test_metric_vs_param_has_a_panel_per_dataset_and_a_line_per_model(figures, tmp_path):
    plots.plot_metric_vs_param(TABLE, "optimizer.lr", "test/ndcg_at_10", tmp_path / "x.png")
    axes = panels(figures[0])
    assert list(axes) == ["ml-100k", "synthetic"]
    lines = {line.get_label(): line for line in axes["ml-100k"].get_lines()}
    assert sorted(lines) == ["bpr", "neumf"]  # EASE has no optimizer (no epochs): left out of an lr plot
    assert list(lines["bpr"].get_xdata()) == [0.001, 0.01]
    assert [line.get_label() for line in axes["synthetic"].get_lines()] == ["bpr"]
    colours = plots.model_colours(TABLE["model"])
    assert lines["neumf"].get_color() == colours["neumf"] != colours["bpr"]
    assert axes["ml-100k"].get_xscale() == "log"
    assert [t.get_text() for t in axes["ml-100k"].get_xticklabels()] == ["0.001", "0.005", "0.01"]


def test_learning_curves_are_over_epochs_per_dataset_and_level_lines_without_epochs(figures, tmp_path):
    history = pd.DataFrame({"run_id": ["r1", "r1", "r1", "r4", "r5", "r5"],
                            "epoch": [1, 2, 3, math.nan, 1, 2], "value": [0.1, 0.2, 0.25, 0.3, 0.05, 0.1]})
    plots.plot_learning_curves(history, TABLE, LABELS, "val/ndcg_at_10", tmp_path / "c.png")
    axes = panels(figures[0])
    assert list(axes) == ["ml-100k", "synthetic"]
    lines = {line.get_label(): line for line in axes["ml-100k"].get_lines()}
    assert list(lines["bpr: run-r1"].get_xdata()) == [1, 2, 3] and axes["ml-100k"].get_xlabel() == "epoch"
    assert list(lines["ease: run-r4 (no epochs)"].get_ydata()) == [0.3, 0.3]  # a level line
    assert [line.get_label() for line in axes["synthetic"].get_lines()] == ["bpr: run-r5"]


def test_metric_ci_bars_are_per_dataset_best_first(figures, tmp_path):
    summary = pd.DataFrame({"run_id": ["r1", "r2", "r5"], "mean": [0.17, 0.21, 0.19], "ci_low": [0.15, 0.2, 0.18],
                            "ci_high": [0.19, 0.22, 0.2], "n_users": [900, 900, 100]})
    plots.plot_metric_ci(summary, TABLE, LABELS, "test/ndcg_at_10", tmp_path / "b.png")
    axes = panels(figures[0])
    assert [t.get_text() for t in axes["ml-100k"].get_yticklabels()] == ["bpr: run-r2", "bpr: run-r1"]
    assert [t.get_text() for t in axes["synthetic"].get_yticklabels()] == ["bpr: run-r5"]
    plots.plot_metric_ci(summary, TABLE, LABELS, "test/rmse", tmp_path / "e.png")  # lower is better: r1 on top
    assert [t.get_text() for t in panels(figures[1])["ml-100k"].get_yticklabels()] == ["bpr: run-r1", "bpr: run-r2"]


def test_x_tick_labels_never_overlap(figures, tmp_path):
    close = TABLE.assign(**{"optimizer.lr": ["0.001", "0.0011", "0.0012", "0.05", "0.051"],
                            "dataset": "ml-100k", "s_per_epoch": 1.0})
    plots.plot_metric_vs_param(close, "optimizer.lr", "test/ndcg_at_10", tmp_path / "x.png")
    fig = figures[0]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in fig.axes[0].get_xticklabels() if t.get_visible() and t.get_text()]
    assert len(boxes) >= 2 and not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    assert np.isclose(fig.axes[0].get_xticks(), [0.001, 0.0011, 0.0012, 0.05, 0.051]).all()  # every value ticked
