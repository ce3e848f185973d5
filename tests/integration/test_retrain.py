"""Retraining end to end: new interactions are merged, candidates are judged on the newest data against the
champion, and the registry alias moves only for a candidate that is not worse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.errors import RecForgeError
from recforge.retrain import retrain, time_cuts
from recforge.train import train
from tests.conftest import TINY, compose_train


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A registered champion (BPR-MF on tiny synthetic data) and a file of newer interactions with new users."""
    from recforge.serving.registry import register

    tmp = tmp_path_factory.mktemp("retrain")
    cfg = compose_train(TINY[:3] + ["trainer.max_epochs=20", "optimizer.lr=0.05"], tmp / "champion")
    metrics = train(cfg)
    uri = f"sqlite:///{Path(cfg.paths.log_dir).resolve()}/mlflow.db"
    register(metrics["run_id"], "recs", "champion", uri)
    import scipy.sparse as sp

    bundle = Path(cfg.paths.output_dir) / "model"
    known_users = pd.read_parquet(bundle / "users.parquet")["user"].to_numpy()
    item_ids = pd.read_parquet(bundle / "items.parquet")["item"].to_numpy()
    popularity = np.asarray(sp.load_npz(bundle / "seen.npz").astype(bool).sum(axis=0)).ravel() ** 2.0
    rng = np.random.default_rng(0)
    users = np.concatenate([rng.choice(known_users, 300), rng.integers(5000, 5010, 100)])
    # newer interactions that follow the data's (sharpened) popularity: there is something to learn
    items = item_ids[rng.choice(len(item_ids), len(users), p=popularity / popularity.sum())]
    new = pd.DataFrame({"user": users, "item": items, "rating": 1.0, "timestamp": 10**10 + np.arange(len(users))})
    new.drop_duplicates(["user", "item"]).to_csv(tmp / "new.csv", index=False)
    return uri, metrics, tmp


def retrain_cfg(tmp: Path, uri: str, *overrides: str):
    return compose_train(["champion=models:/recs@champion", f"new_data={tmp / 'new.csv'}", f"tracking.uri={uri}",
                          *overrides], tmp / "retrain", config_name="retrain")


def same_store(cfg, tmp: Path):
    cfg.paths.log_dir = str(tmp / "champion" / "logs")  # the champion's MLflow store
    return cfg


def alias_version(uri: str, name: str = "recs") -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(uri).get_model_version_by_alias(name, "champion").version)


def test_a_worse_candidate_is_refused_and_the_alias_stays(champion):
    uri, _, tmp = champion
    before = alias_version(uri)
    # an untrained candidate (0 epochs) cannot match the champion on the newest data
    out = retrain(retrain_cfg(tmp, uri, "mode=scratch", "overrides=['trainer.max_epochs=0']"))
    assert not out["promoted"] and out["improvement"] < 0 and out["registered"] is None
    assert alias_version(uri) == before
    decision = json.loads((tmp / "retrain" / "out" / "decision.json").read_text())
    assert decision["champion_run_id"] == champion[1]["run_id"]
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("recforge").experiment_id],
                                           "tags.task = 'retrain'")
    assert logged and logged[0].data.tags["decision"] == "refused"
    assert logged[0].data.metrics["champion/test_ndcg_at_10"] == pytest.approx(out["champion_value"])


def test_a_better_candidate_is_promoted_at_zero_tolerance_and_registered(champion):
    from recforge.serving.registry import register

    uri, _, tmp = champion
    # an untrained champion (0 epochs) that any trained candidate beats
    weak = train(same_store(compose_train(TINY[:3] + ["trainer.max_epochs=0"], tmp / "weak"), tmp))
    register(weak["run_id"], "weak", "champion", uri)
    before = alias_version(uri, "weak")
    # the candidates inherit the champion's config (0 epochs): the overrides give them training
    out = retrain(retrain_cfg(tmp, uri, "champion=models:/weak@champion", "mode=both", "finetune_epochs=5",
                              "tolerance=0", "overrides=['trainer.max_epochs=10','optimizer.lr=0.01']"))
    assert out["promoted"] and out["improvement"] > 0 and out["candidate"] in ("finetune", "scratch")
    assert alias_version(uri, "weak") == out["registered"]["model_version"] != before
    # fine-tuning warm-started from the champion: its users' rows were carried over, the new users added
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("recforge").experiment_id],
                                        "attributes.run_name = 'retrain-finetune'")[0]
    assert run.data.metrics["warm_start/new_users"] == 10 and run.data.metrics["warm_start/known_users"] > 100


def test_a_closed_form_champion_is_refitted_not_grown(champion):
    from recforge.serving.registry import register

    uri, _, tmp = champion
    knn = train(same_store(compose_train(TINY[:3] + ["model=itemknn"], tmp / "knn"), tmp))
    register(knn["run_id"], "knn", "champion", uri)
    out = retrain(retrain_cfg(tmp, uri, "champion=models:/knn@champion", "mode=finetune"))
    assert out["candidate"] == "scratch"  # a closed-form model is refitted
    assert out["metrics"]["champion"]["test/ndcg_at_10"] > 0


def test_promotion_rule_for_higher_and_lower_is_better_metrics():
    from recforge.retrain import decide

    assert decide(0.30, 0.31, "test/ndcg_at_10", 0.0) == (pytest.approx(0.01), True)
    assert decide(0.30, 0.29, "test/ndcg_at_10", 0.0)[1] is False
    assert decide(0.30, 0.29, "test/ndcg_at_10", 0.02)[1] is True
    assert decide(0.90, 0.85, "test/rmse", 0.0) == (pytest.approx(0.05), True)  # lower RMSE is better
    assert decide(0.90, 0.95, "test/rmse", 0.0)[1] is False


def test_bad_new_data_is_a_clear_error(champion, tmp_path):
    uri, _, tmp = champion
    with pytest.raises(RecForgeError, match="file not found"):
        retrain(compose_train(["champion=models:/recs@champion", f"new_data={tmp_path / 'none.csv'}",
                               f"tracking.uri={uri}"], tmp_path, config_name="retrain"))
    with pytest.raises(RecForgeError, match="eval_fraction"):
        time_cuts(np.arange(10), 0.7, 0.5)
    with pytest.raises(RecForgeError, match="overlap the dataset in time"):
        time_cuts(np.arange(350, 800), 0.5, 0.2, old_until=500)
    assert time_cuts(np.arange(600, 800), 0.5, 0.2, old_until=500) == (660, 700)
