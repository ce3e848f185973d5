"""The per-step benchmark end to end on the embedded synthetic data: one row per (variant, batch size), Lightning's
overhead the difference of the two timings, compile rows only where gradients are dense."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_bench_step_times_each_variant_and_batch_size(tmp_path):
    cmd = [sys.executable, str(SCRIPTS / "bench_step.py"), "--data", "synthetic-1m", "--variants", "adam", "lazy_adam",
           "--batch-sizes", "64", "--steps", "5", "--epochs", "2", "--rounds", "1", "--device", "cpu", "--no-compile",
           "--json", "--override", "data.n_users=400", "data.n_items=200", "data.mean_interactions=20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["variant"], r["batch_size"]) for r in rows] == [("adam", 64), ("lazy_adam", 64)]
    for row in rows:
        assert row["steps"] == 5 and row["device"] == "cpu" and row["n_train"] > 64 * 5
        assert row["bare_ms_per_step"] > 0 and row["lightning_ms_per_step"] > 0
        assert row["overhead_ms_per_step"] == pytest.approx(row["lightning_ms_per_step"] - row["bare_ms_per_step"],
                                                            abs=2e-3)
        assert row["lightning_interactions_per_s"] == pytest.approx(
            row["batch_size"] / row["lightning_ms_per_step"] * 1e3, rel=1e-2)
        assert not any(k.startswith(("compiled_", "host_batches")) for k in row)  # --no-compile, and a CPU


def test_bench_step_refuses_a_single_epoch(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_step.py"), "--epochs", "1"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "--epochs must be at least 2" in done.stderr
