"""The autoencoder step benchmark runs each model with the dense and the sparse first layer and reports both."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize("model", ["multvae", "recvae", "cdae"])
def test_bench_row_input_times_the_dense_and_the_sparse_step(model):
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_row_input.py"), "--model", model, "--items", "300",
                           "--row-items", "3", "--batch", "16", "--steps", "1", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    times = re.search(r"dense ([\d.]+) s, sparse ([\d.]+) s a step, ([\d.]+)x", done.stdout)
    assert times and done.stdout.startswith(f"{model}, 16 rows of 3 / 300 items")
    dense, sparse, ratio = map(float, times.groups())
    assert dense >= 0 and sparse >= 0 and ratio > 0
