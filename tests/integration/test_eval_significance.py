"""``recforge-compare --significance`` against real MLflow runs in a temporary SQLite store: runs logged with
the MLflow client exactly as ``recforge-train`` logs them (tag ``split_fingerprint``, artifact
``results/per_user_test_metrics.parquet``), including the refusal to pair runs from different splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.analysis.significance import compare_runs
from recforge.compare import main
from recforge.errors import RecForgeError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cmp", artifact_location=(tmp / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    users = np.arange(500) + 1000
    base = rng.uniform(0, 1, size=500)

    def log(values, fingerprint, users=users, with_artifact=True):
        run = client.create_run(experiment)
        client.set_tag(run.info.run_id, "split_fingerprint", fingerprint)
        if with_artifact:
            path = tmp / f"{run.info.run_id}.parquet"
            pd.DataFrame({"user": users, "ndcg_at_10": values, "recall_at_10": values / 2}).to_parquet(path)
            client.log_artifact(run.info.run_id, str(path.rename(path.parent / "per_user_test_metrics.parquet")),
                                "results")
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    runs = {
        "base": log(base, "fp1"),
        "better": log(base + 0.05 + rng.normal(0, 0.02, 500), "fp1"),
        "same": log(base + rng.normal(0, 0.02, 500), "fp1", users=users[::-1].copy()),  # other row order
        "other_split": log(base, "fp2"),
        "no_artifact": log(base, "fp1", with_artifact=False),
    }
    # "same" was logged in reversed user order: align by user id, not by row
    return uri, runs, base


def test_compare_runs_aligns_users_and_finds_the_real_difference(store):
    uri, runs, _ = store
    table = compare_runs([runs["base"], runs["better"], runs["same"]], "test/ndcg_at_10", uri, n_bootstrap=2000)
    assert len(table) == 3 and (table.n_users == 500).all()
    better = table[(table.run_a == runs["base"]) & (table.run_b == runs["better"])].iloc[0]
    assert better.mean_diff == pytest.approx(-0.05, abs=0.005)
    assert better.ci_low < better.mean_diff < better.ci_high < 0
    assert better.t_pvalue_holm < 1e-10 and better.wilcoxon_pvalue_holm < 1e-10
    same = table[(table.run_a == runs["base"]) & (table.run_b == runs["same"])].iloc[0]
    # "same" was logged in reversed row order; misaligned rows would give a huge spread, aligned ones ~0.02
    assert abs(same.mean_diff) < 0.005 and same.ci_low < 0 < same.ci_high


def test_refuses_runs_from_different_splits_naming_them(store):
    uri, runs, _ = store
    with pytest.raises(RecForgeError, match="split_fingerprint differs") as info:
        compare_runs([runs["base"], runs["better"], runs["other_split"]], tracking_uri=uri)
    assert runs["other_split"] in str(info.value) and "fp2" in str(info.value)
    with pytest.raises(RecForgeError, match="per_user_test_metrics"):
        compare_runs([runs["base"], runs["no_artifact"]], tracking_uri=uri)
    with pytest.raises(RecForgeError, match="available: test/ndcg_at_10, test/recall_at_10"):
        compare_runs([runs["base"], runs["better"]], "test/mrr_at_10", uri)
    with pytest.raises(RecForgeError, match="not found"):
        compare_runs([runs["base"], "0" * 32], tracking_uri=uri)
    with pytest.raises(RecForgeError, match="no tracking store"):
        compare_runs([runs["base"], runs["better"]], tracking_uri=uri + ".missing")


def test_cli_prints_and_saves_csv(store, tmp_path, capsys):
    uri, runs, _ = store
    out = tmp_path / "table.csv"
    code = main(["--significance", runs["base"], runs["better"], "--metric", "test/recall_at_10",
                 "--tracking-uri", uri, "--out", str(out), "--n-bootstrap", "500"])
    assert code == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()  # run ids cut to 8 characters to fit; the CSV has every column
    assert "p Wilcoxon (Holm)" in lines[0] and runs["better"][:8] in lines[1] and max(map(len, lines)) <= 120
    saved = pd.read_csv(out)
    assert len(saved) == 1 and saved.metric[0] == "test/recall_at_10"
    assert saved.mean_diff[0] == pytest.approx(-0.025, abs=0.003)
    code = main(["--significance", runs["base"], runs["other_split"], "--tracking-uri", uri])
    assert code == 2 and "different splits" in capsys.readouterr().err


@pytest.mark.slow
def test_significance_between_two_trained_runs(tiny_cfg):
    from recforge.train import train

    a = train(tiny_cfg("tracking.log_model=false", "model.embedding_dim=8", tracking=True))
    b = train(tiny_cfg("tracking.log_model=false", "model.embedding_dim=16", tracking=True))
    cfg = tiny_cfg(tracking=True)
    uri = f"sqlite:///{cfg.paths.log_dir}/mlflow.db"
    table = compare_runs([a["run_id"], b["run_id"]], "test/ndcg_at_10", uri, n_bootstrap=500)
    assert table.n_users[0] > 50
    assert table.mean_diff[0] == pytest.approx(a["test/ndcg_at_10"] - b["test/ndcg_at_10"], abs=1e-6)
