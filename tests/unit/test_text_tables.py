"""Tables a terminal shows: ``to_text`` keeps to a width (text cut first, then columns left out and named), and
``recforge-eval`` prints each reproduced metric beside the logged one with its verdict."""

from __future__ import annotations

import math

import pandas as pd

from recforge.analysis.runs import to_text
from recforge.eval import against_logged


def test_to_text_cuts_text_then_leaves_out_columns_and_says_which():
    frame = pd.DataFrame({"run": ["a-very-long-run-name-indeed-0001", "short"], "model": ["bpr", "ease"],
                          **{f"test/metric_{i}": [0.123456, math.nan] for i in range(8)}, "s/epoch": [12.34, 0.0]})
    wide = to_text(frame, width=400)
    assert wide.splitlines()[1].startswith("a-very-long-run-name-indeed-0001  bpr ")
    assert wide.splitlines()[2].split()[2] == "-" and "12.3" in wide  # NaN as "-", large values with one decimal
    text = to_text(frame, width=60)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("a-ver…0001  bpr ")  # cut in the middle to 10 characters, marked
    note = " ".join(lines[4:])
    assert lines[3].startswith("(not shown for width: ") and "test/metric_7, s/epoch)" in note
    assert lines[0].split()[:3] == ["run", "model", "test/metric_0"]
    # numbers keep their digits, right-aligned under their header
    assert lines[0].index("test/metric_0") + len("test/metric_0") == lines[1].index("0.1235") + len("0.1235")


def test_eval_says_whether_each_metric_matches_the_logged_run():
    text = against_logged({"test/ndcg_at_10": 0.25, "test/recall_at_20": 0.3101, "test/new": 1.0},
                          {"test/ndcg_at_10": 0.25 * (1 + 1e-9), "test/recall_at_20": 0.31}, "abc123")
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "reproduced", "logged"]
    assert lines[1].split() == ["test/ndcg_at_10", "0.250000", "0.250000", "matches"]
    assert lines[2].split() == ["test/new", "1.000000", "-", "not", "logged", "by", "the", "run"]
    assert lines[3].split() == ["test/recall_at_20", "0.310100", "0.310000", "differs", "by", "+0.0001"]
    assert lines[4] == "1 of 3 test metrics match those logged by run abc123"


def test_compare_shows_exact_and_ann_runs_side_by_side():
    """Runs ranked through an ANN index (eval.retrieval=ann log test/ann_recall_at_K) get a retrieval column and
    their ANN recall right after the metric; a table of exact runs only has neither."""
    from recforge.analysis.report import key_columns

    table = pd.DataFrame({"run_id": ["a" * 32, "b" * 32], "run_name": ["bpr", "bpr"], "model": ["bpr", "bpr"],
                          "dataset": ["d", "d"], "split": ["s", "s"], "s_per_epoch": [1.0, 1.0],
                          "monitor": ["val/ndcg_at_10"] * 2, "val/ndcg_at_10": [0.2, 0.2],
                          "test/ndcg_at_10": [0.30, 0.29], "test/ann_recall_at_10": [float("nan"), 0.97],
                          "test/ann_recall_at_20": [float("nan"), 0.95]})
    view = key_columns(table, "test/ndcg_at_10")
    assert view["retrieval"].tolist() == ["exact", "ann"]
    columns = list(view.columns)
    assert columns[columns.index("test/ndcg@10") + 1] == "test/ann_recall@10"
    assert view["test/ann_recall@10"].tolist()[1] == 0.97
    exact_only = key_columns(table.drop(columns=["test/ann_recall_at_10", "test/ann_recall_at_20"]), "test/ndcg_at_10")
    assert "retrieval" not in exact_only and "test/ann_recall@10" not in exact_only
