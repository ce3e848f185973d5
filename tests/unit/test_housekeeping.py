"""Housekeeping: written files get a plain write's mode, `make clean` removes what runs write into the
repository, and git ignores reports and batch outputs at the top of it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from recforge.utils.io import atomic_append_text, atomic_path, atomic_write_text
from tests.conftest import REPO


def test_atomic_writes_get_a_plain_writes_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "runs.md", "| a |\n")
        with atomic_path(tmp_path / "runs.csv") as tmp:
            tmp.write_text("a\n")
        (tmp_path / "plain.txt").write_text("a\n")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"runs.md": 0o644, "runs.csv": 0o644, "plain.txt": 0o644}


def test_appends_from_processes_at_once_are_all_kept(tmp_path):
    # four processes add 50 lines each to one file at the same time; a read-then-replace without the lock drops some
    target = tmp_path / "rows.jsonl"
    code = ("import sys; from recforge.utils.io import atomic_append_text as add\n"
            "for i in range(50): add(sys.argv[1], f'{sys.argv[2]} {i}\\n')")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(target), str(w)]) for w in range(4)]
    assert [w.wait(timeout=120) for w in workers] == [0] * 4
    lines = target.read_text().splitlines()
    assert sorted(lines) == sorted(f"{w} {i}" for w in range(4) for i in range(50))
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]   # no temporary file left behind
    atomic_append_text(target, "last\n")
    assert target.read_text().splitlines()[-1] == "last"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_removes_what_runs_write(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    written = ["logs", "outputs", "multirun", "data_cache", "reports"]
    for name in [*written, "conf", "src"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "conf", "src"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_reports_and_batch_outputs_are_ignored(tmp_path):
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    paths = ["reports/ml100k/runs.csv", "recs.parquet", "data_cache/x.parquet", "logs/mlflow.db",
             "src/recforge/x.py", "tests/data/interactions.parquet", "docs/compare.md"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.split() == paths[:4]  # a Parquet file below the top (test data) is not ignored
