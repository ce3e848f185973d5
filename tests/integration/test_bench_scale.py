"""The scale benchmark end to end on tiny sizes: it writes the data, runs bench.py per (size, model) in a fresh
process and reports times, memory and growth relative to the smallest size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_bench_scale_runs_each_size_and_model(tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "bench_scale.py"), "--sizes", "6000", "3000", "--users", "400", "--items",
           "150", "--models", "bpr", "lightgcn", "--batch-size", "512", "--lightgcn-limit-batches", "2",
           "--work-dir", str(tmp_path / "data"), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["rows_generated"], r["model"]) for r in rows] == [
        (3000, "bpr"), (3000, "lightgcn"), (6000, "bpr"), (6000, "lightgcn")]

    for rows_generated in (3000, 6000):  # the generated files hold exactly the requested rows
        (path,) = (tmp_path / "data").glob(f"inter_{rows_generated}_*.parquet")
        assert pq.read_metadata(path).num_rows == rows_generated

    for row in rows:
        assert 0 < row["n_train"] < row["rows_generated"]  # deduplicated, then 80% for training
        assert row["users"] <= 400 and row["items"] <= 150
        assert 0 < row["eval_users"] <= row["users"]
        assert row["train_s_per_epoch"] > 0 and row["eval_s"] > 0 and row["peak_rss_mb"] > 0
        assert set(row["metrics"]) >= {"test/recall_at_20", "test/ndcg_at_20"}
    bpr_small, graph_small, bpr_big, graph_big = rows
    # BPR trains full epochs; LightGCN 2 batches of 512, and interactions/s counts those only
    assert bpr_small["limit_batches"] is None and graph_small["limit_batches"] == 2
    # (the reported epoch time is rounded to 0.1 ms)
    assert graph_small["interactions_per_s"] == pytest.approx(2 * 512 / graph_small["train_s_per_epoch"], rel=2e-2)
    assert bpr_small["interactions_per_s"] == pytest.approx(bpr_small["n_train"] / bpr_small["train_s_per_epoch"],
                                                            rel=2e-2)
    # growth is relative to the smallest size of the same model
    assert bpr_small["train_cost_vs_first"] == 1.0 and graph_small["eval_s_per_user_vs_first"] == 1.0
    expected = round(bpr_small["interactions_per_s"] / bpr_big["interactions_per_s"], 2)
    assert bpr_big["train_cost_vs_first"] == expected
    assert bpr_big["n_train"] > bpr_small["n_train"] and graph_big["n_train"] == bpr_big["n_train"]
