"""Training, comparing and ensembling against a real MLflow tracking server on a loopback port."""

from __future__ import annotations

import pandas as pd
import pytest

from recforge.compare import main as compare_main
from recforge.train import train
from tests.conftest import TINY, compose_train
from tests.integration.services import start_mlflow_server, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    proc, uri = start_mlflow_server(f"sqlite:///{tmp}/server.db", tmp)
    try:
        yield uri, tmp
    finally:
        stop(proc)


def test_train_compare_and_ensemble_through_a_tracking_server(server, tmp_path):
    from recforge.ensemble.cli import ensemble

    uri, tmp = server
    ids = []
    for model in ("bpr", "itemknn"):
        cfg = compose_train(TINY[:3] + ["trainer.max_epochs=2", f"model={model}", f"tracking.uri={uri}",
                                        "tracking.experiment_name=remote"], tmp_path / model)
        ids.append(train(cfg)["run_id"])
    cfg = compose_train([f"runs=[{','.join(ids)}]", f"tracking.uri={uri}", "tracking.experiment_name=remote",
                         "search=none", "n_bootstrap=100"], tmp_path / "ensemble", config_name="ensemble")
    metrics = ensemble(cfg)
    assert compare_main(["--tracking-uri", uri, "--experiment", "remote", "--n-bootstrap", "100",
                         "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert list(table["run_id"]) == [*ids, metrics["run_id"]]
    assert list(table["model"]) == ["bpr", "itemknn", "Ensemble"]  # config options; an ensemble has its tag
    assert list(table["model_class"]) == ["MatrixFactorization", "ItemKNN", "Ensemble"]
    assert len(pd.read_csv(tmp_path / "report" / "significance.csv")) == 3
    # artifacts went through the server (proxied), not to a local path of this process
    assert any((tmp / "artifacts").rglob("per_user_test_metrics.parquet"))
