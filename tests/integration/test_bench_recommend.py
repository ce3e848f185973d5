"""The batch-recommendation benchmark end to end on a tiny size: it builds the synthetic bundle and its index once,
runs recforge-recommend in a fresh process into parts and reports users/s and the job's peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_recommend_builds_a_bundle_once_and_reports_the_job(tmp_path):
    pytest.importorskip("faiss")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "scripts" / "bench_recommend.py"), "--users", "300", "--items", "200", "--rows",
           "3000", "--dim", "8", "--clusters", "8", "--index", "flat", "--chunk-size", "64", "--work-dir",
           str(tmp_path / "data"), "--json", str(tmp_path / "out.json")]
    for run in range(2):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("built " in done.stderr) == (run == 0)  # the bundle is reused
        row = json.loads((tmp_path / "out.json").read_text())
        assert row["users"] == 300 and row["items"] == 200 and row["index"] == "flat" and row["parts"] == 5
        assert row["rows"] == 3000 and row["users_per_s"] > 0 and row["peak_rss_mib"] > 50
        assert "--ann-min-items" in row["command"] and "ann:flat" in row["stdout"]
        assert "users/s" in done.stdout and "peak RSS" in done.stdout
        assert not (tmp_path / "data" / "recs").exists()  # the parts are deleted unless --keep-output
    (bundle,) = (tmp_path / "data").glob("mf_300u_200i_8d_3000r_s0_flat")
    assert {"model.pt", "seen.npz", "ann.faiss", "ann.json"} <= {p.name for p in bundle.iterdir()}
