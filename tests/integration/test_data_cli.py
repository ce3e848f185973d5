"""``recforge-data`` as a user runs it: describe with JSON output, and a bad input's one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from recforge.config import CONFIG_DIR
from recforge.data_cli import run as run_command

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECFORGE_CACHE_DIR": str(tmp_path / "cache"), "RECFORGE_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run([sys.executable, "-m", "recforge.data_cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)


def test_describe_in_process_composes_the_train_config(tmp_path, capsys):
    out = tmp_path / "stats.json"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data.n_users=50", "data.n_items=40", "data.mean_interactions=8",
                                                      "split=kfold", "split.fold=1", f"paths.cache_dir={tmp_path}",
                                                      f"+out={out}"])
    stats = run_command("describe", cfg)
    printed = capsys.readouterr().out
    assert "users          50" in printed and "density" in printed and "ratings" in printed
    assert json.loads(out.read_text())["split"] == stats["split"]
    assert stats["interactions"] == sum(stats["split"].values())


@pytest.mark.slow
def test_describe_prints_and_writes_json_then_reads_the_cache(tmp_path):
    data = tmp_path / "inter.csv"
    rows = [f"{u},{i},{(u * i) % 5 + 1},{u * 100 + i}" for u in range(30) for i in range(u % 7, 40, 3)]
    data.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    args = ["describe", "data=custom", f"data.path={data}", "split=per_user_ratio", f"+out={tmp_path / 's.json'}"]
    done = run(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert "interactions   " in done.stdout and "per user" in done.stdout and "split" in done.stdout
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["interactions"] == len(rows) and stats["users"] == 30
    assert sum(stats["split"].values()) == len(rows)
    assert sum(stats["rating_histogram"].values()) == len(rows)
    assert stats["report"]["data/leak_pairs"] == 0 and stats["report"]["data/cache_hit"] == 0
    again = run(tmp_path, *args)
    assert json.loads((tmp_path / "s.json").read_text())["report"]["data/cache_hit"] == 1
    assert again.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "inter.csv", "s.json"]  # no run folders, no logs


def test_bad_input_is_one_line_exit_2_without_traceback(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text("user,item,rating,timestamp\n1,2,3,4\n1,3,oops,5\n")
    done = run(tmp_path, "describe", "data=custom", f"data.path={data}")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: {data}, line 3: column 'rating' is not a number: 'oops'; fix the value, " \
                                  "or map the right column in data.columns"
    assert not (tmp_path / "cache" / "prepared").exists()
