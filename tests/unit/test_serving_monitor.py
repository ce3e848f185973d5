"""recforge-monitor against hand-computed values on a small hand-written log and a hand-made bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.errors import RecForgeError
from recforge.models.mf import MatrixFactorization
from recforge.serving import monitor
from recforge.tracking.bundle import Bundle, save_bundle

# six training users, ten items 100..109; item popularity (training interactions) 6, 4, 3, 2, 1, 0, 0, 0, 0, 0
POPULARITY = [6, 4, 3, 2, 1, 0, 0, 0, 0, 0]
LOG = [
    {"ts": "2026-01-01T12:00:05.000Z", "endpoint": "/recommend", "status": 200, "latency_ms": 10, "user": 1, "k": 3,
     "items": [100, 101, 102], "fallback": False},
    {"ts": "2026-01-01T12:00:30.000Z", "endpoint": "/recommend", "status": 200, "latency_ms": 20, "user": "x",
     "k": 3, "items": [100, 105, 106], "fallback": True},
    {"ts": "2026-01-01T12:01:10.000Z", "endpoint": "/recommend", "status": 400, "latency_ms": 30, "user": 1, "k": 0,
     "error": "k=0 is out of range"},
    {"ts": "2026-01-01T12:01:50.000Z", "endpoint": "/similar-items/{item_id}", "status": 200, "latency_ms": 40,
     "item": "100", "k": 2, "items": [101, 102]},
    {"ts": "2026-01-01T12:03:00.000Z", "endpoint": "/recommend", "status": 200, "latency_ms": 50, "user": 2, "k": 3,
     "items": [103, 104, 999], "fallback": False},  # 999: not in this model's catalogue
]


@pytest.fixture
def bundle(tmp_path) -> Bundle:
    rows, cols = [], []
    for item, count in enumerate(POPULARITY):
        rows += list(range(count))
        cols += [item] * count
    seen = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(6, 10))
    kwargs = {"n_users": 6, "n_items": 10, "embedding_dim": 2, "use_bias": False}
    save_bundle(tmp_path / "model", MatrixFactorization(**kwargs), "recforge.models.mf.MatrixFactorization", kwargs,
                np.arange(1, 7), np.arange(100, 110), seen, {})
    return Bundle.load(tmp_path / "model")


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "serve.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LOG))
    return path


def test_summary_matches_hand_computed_values(bundle, log_file):
    s = monitor.summarise(monitor.read_log(log_file), bundle)
    assert s["requests"] == 5
    assert s["traffic"]["minutes"] == 4  # 12:00, 12:01, 12:02, 12:03
    assert s["traffic"]["duration_s"] == 175 and s["traffic"]["requests_per_second"] == pytest.approx(5 / 175)
    assert s["traffic"]["peak_per_minute"] == 2
    assert s["traffic"]["by_endpoint"] == {"/recommend": 4, "/similar-items/{item_id}": 1}
    # latencies 10..50: linear-interpolation percentiles
    assert s["latency_ms"] == pytest.approx({"p50": 30.0, "p95": 48.0, "p99": 49.6, "mean": 30.0})
    assert s["latency_ms_by_endpoint"]["/recommend"]["p50"] == pytest.approx(25.0)  # 10, 20, 30, 50
    assert s["error_rate"] == pytest.approx(1 / 5) and s["server_errors"] == 0
    assert s["recommend_ok"] == 3 and s["fallback_rate"] == pytest.approx(1 / 3)
    assert s["served_slots"] == 9 and s["distinct_items_served"] == 8
    assert s["items_unknown_to_model"] == 1
    assert s["coverage"] == pytest.approx(7 / 10)  # 100 101 102 103 104 105 106
    # served slots known to the model: 100 101 102 100 105 106 103 104 -> popularity 6 4 3 6 0 0 2 1
    assert s["mean_popularity_served"] == pytest.approx(22 / 8)
    assert s["mean_popularity_training"] == pytest.approx((36 + 16 + 9 + 4 + 1) / 16)
    assert s["top10pct_items"] == 1  # ceil(0.1 * 10): item 100
    assert s["top10pct_share_served"] == pytest.approx(2 / 8)
    assert s["top10pct_share_training"] == pytest.approx(6 / 16)


def test_summary_without_a_bundle_has_no_catalogue_figures(log_file):
    s = monitor.summarise(monitor.read_log(log_file))
    assert "coverage" not in s and s["distinct_items_served"] == 8


def test_cli_prints_text_and_json(bundle, log_file, tmp_path, capsys):
    monitor.main([str(log_file), "--bundle", str(tmp_path / "model"), "--json"])
    assert json.loads(capsys.readouterr().out)["coverage"] == pytest.approx(0.7)
    monitor.main([str(log_file), "--bundle", str(tmp_path / "model")])
    text = capsys.readouterr().out
    assert "catalogue coverage  70.00% of 10 items" in text and "error rate          20.00%" in text


def test_cli_summarises_rotated_logs_together(log_file, tmp_path, capsys):
    older = tmp_path / "serve.jsonl.1"
    log_file.rename(older)
    log_file.write_text("".join(json.dumps({**r, "ts": r["ts"].replace("12:", "13:")}) + "\n" for r in LOG[:2]))
    monitor.main([str(older), str(log_file), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 7 and summary["traffic"]["minutes"] == 61  # 12:00 .. 13:00
    assert summary["recommend_ok"] == 5 and summary["fallback_rate"] == pytest.approx(2 / 5)


def test_malformed_line_is_an_error_naming_the_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(LOG[0]) + "\n{oops\n")
    with pytest.raises(RecForgeError, match=r"bad.jsonl:2: not a JSON line"):
        monitor.read_log(path)
    with pytest.raises(SystemExit) as exit_:
        monitor.main([str(path)])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith(f"error: {path}:2")


def test_durations_are_reported_as_they_were(tmp_path, capsys):
    """A quarter-second log is 0.25 s, not "1 min"; its rate is per second over those 0.25 s."""
    assert [monitor.format_duration(x) for x in (0.25, 0, 42, 60, 123.9, 3600 * 5 + 7 * 60 + 9, 86400 * 2 + 3 * 3600)] \
        == ["0.25 s", "0 s", "42 s", "1 min 0 s", "2 min 3 s", "5 h 7 min", "2 d 3 h"]
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({**r, "ts": f"2026-01-01T12:00:00.{i * 125:03d}Z"}) + "\n"
                            for i, r in enumerate(LOG[:3])))  # 12:00:00.000, .125, .250
    monitor.main([str(path)])
    period, rate = capsys.readouterr().out.splitlines()[1:3]
    assert period.endswith("(0.25 s)") and "min" not in period
    assert rate.endswith("12.0 requests/s over 0.25 s (busiest calendar minute: 3 requests)")
