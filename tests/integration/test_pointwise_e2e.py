"""Point-wise evaluation end to end: a tracked run logs test/auc, test/gauc, test/logloss (and val/), the labelled
pairs are balanced and never interacted with, monitor=val/auc is accepted, and scores that are not logits get no
log loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recforge.errors import RecForgeError
from recforge.metrics.pointwise import pointwise_metrics
from recforge.pipeline import build_experiment
from recforge.train import train

POINTWISE = ["eval.pointwise=true", "eval.beyond=null"]


def test_run_logs_auc_gauc_logloss(tiny_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = tiny_cfg("model=mf", "loss=bce", "monitor=val/auc", *POINTWISE, tracking=True)
    metrics = train(cfg)
    for stage in ("val", "test"):
        for name in ("auc", "gauc", "logloss", "gauc_skipped_users"):
            assert f"{stage}/{name}" in metrics
        assert 0.0 <= metrics[f"{stage}/auc"] <= 1.0 and metrics[f"{stage}/logloss"] > 0
    run = MlflowClient(f"sqlite:///{(tmp_path / 'logs').resolve()}/mlflow.db").get_run(metrics["run_id"])
    assert run.data.metrics["test/auc"] == pytest.approx(metrics["test/auc"], rel=1e-6)
    assert run.data.metrics["test/gauc"] == pytest.approx(metrics["test/gauc"], rel=1e-6)
    assert run.data.metrics["test/logloss"] == pytest.approx(metrics["test/logloss"], rel=1e-6)
    assert int(run.data.params["data_report.pointwise_pairs_test"]) == 2 * int(run.data.params["data_report.n_test"])
    per_user = pd.read_parquet(Path(cfg.paths.output_dir) / "per_user_test_metrics.parquet")
    assert per_user["user_auc"].notna().all() and per_user["user_auc"].between(0, 1).all()   # every user has both


def test_pairs_balanced_unseen_and_metrics_equal_a_direct_computation(tiny_cfg):
    exp = build_experiment(tiny_cfg("model=mf", "loss=bce", *POINTWISE))
    dm, model = exp.datamodule, exp.model
    split = dm.split
    seen = np.concatenate([p["user"].to_numpy() * dm.n_items + p["item"].to_numpy()
                           for p in (split.train, split.val, split.test)])
    users, items, labels = [], [], []
    for batch in dm._eval_batches["test"]:
        users.append(batch["users"][batch["pair_rows"]])
        items.append(batch["pair_cols"])
        labels.append(batch["pair_labels"])
    users, items, labels = torch.cat(users), torch.cat(items), torch.cat(labels)
    keys = (users * dm.n_items + items).numpy()
    negative = labels.numpy() == 0
    assert not np.isin(keys[negative], seen).any()
    assert set(keys[~negative]) == set(split.test["user"].to_numpy() * dm.n_items + split.test["item"].to_numpy())
    np.testing.assert_array_equal(np.bincount(users[labels == 0], minlength=dm.n_users),
                                  np.bincount(users[labels == 1], minlength=dm.n_users))
    # the module's test metrics equal the metrics of the model's scores of exactly these pairs
    with torch.no_grad():
        direct = pointwise_metrics(model(users, items), labels, users, logits=True)
    outputs = [exp.module.evaluate_batch(b, "test") for b in dm._eval_batches["test"]]
    metrics, results = exp.module.test_evaluator.aggregate(outputs)
    for name in ("auc", "gauc", "logloss"):
        assert float(metrics[name]) == pytest.approx(float(direct[name]), abs=1e-6)
    # each user's own AUC is a per-user column; weighted by the user's pairs it averages to GAUC
    pairs_per_user = torch.bincount(users, minlength=dm.n_users)[results["users"]].double()
    weighted = (results["user_auc"].double() * pairs_per_user).sum() / pairs_per_user.sum()
    assert float(weighted) == pytest.approx(float(metrics["gauc"]), abs=1e-6)
    # the same seed gives the same pairs in another experiment (another model)
    again = build_experiment(tiny_cfg("model=pop", *POINTWISE)).datamodule._eval_batches["test"][0]
    assert torch.equal(again["pair_cols"], dm._eval_batches["test"][0]["pair_cols"])


def test_bpr_scores_are_not_logits_and_monitor_names_are_checked(tiny_cfg):
    exp = build_experiment(tiny_cfg("model=pop", *POINTWISE))
    outputs = [exp.module.evaluate_batch(b, "test") for b in exp.datamodule._eval_batches["test"]]
    metrics, _ = exp.module.test_evaluator.aggregate(outputs)
    assert "auc" in metrics and "logloss" not in metrics
    with pytest.raises(RecForgeError, match="monitor=val/logloss is not logged"):
        build_experiment(tiny_cfg("model=mf", "monitor=val/logloss", *POINTWISE))
    with pytest.raises(RecForgeError, match="monitor=val/auc is not logged"):
        build_experiment(tiny_cfg("model=mf", "monitor=val/auc"))


def test_metrics_do_not_depend_on_how_users_are_chunked(tiny_cfg):
    """Evaluation batches split into pieces (as several processes split them) give the same point-wise metrics."""
    from recforge.data.batches import split_eval_batch

    exp = build_experiment(tiny_cfg("model=mf", "loss=bce", *POINTWISE))
    batches = exp.datamodule._eval_batches["test"]
    whole, _ = exp.module.test_evaluator.aggregate([exp.module.evaluate_batch(b, "test") for b in batches])
    pieces = [p for b in batches for p in split_eval_batch(b, 3)]
    assert len(pieces) > len(batches)
    split, _ = exp.module.test_evaluator.aggregate([exp.module.evaluate_batch(p, "test") for p in pieces])
    for name in ("auc", "gauc", "logloss", "ndcg_at_10"):
        assert float(split[name]) == pytest.approx(float(whole[name]), abs=1e-7)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")   # the module's aggregation driven by hand
def test_rating_models_get_auc_of_their_predictions_against_binarised_ratings(tiny_cfg):
    with pytest.raises(RecForgeError, match="set eval.pointwise_threshold"):
        build_experiment(tiny_cfg("model=mf", *POINTWISE))
    exp = build_experiment(tiny_cfg("model=mf", "eval.pointwise_threshold=4", "monitor=val/gauc", *POINTWISE))
    test = exp.datamodule.split.test
    users, items = torch.as_tensor(test["user"].to_numpy()), torch.as_tensor(test["item"].to_numpy())
    labels = torch.as_tensor(test["rating"].to_numpy() >= 4).float()
    assert 0 < labels.mean() < 1
    outputs = [exp.module.evaluate_batch(b, "test") for b in exp.datamodule.test_dataloader()]
    exp.module._outputs = outputs
    metrics = exp.module._aggregate("test")
    with torch.no_grad():
        direct = pointwise_metrics(exp.model(users, items), labels, users, logits=False)
    assert "test/logloss" not in metrics
    for name in ("auc", "gauc", "gauc_skipped_users"):
        assert float(metrics[f"test/{name}"]) == pytest.approx(float(direct[name]), abs=1e-6)


def test_implicit_threshold_labels_the_test_pairs_without_sampling(tiny_cfg):
    exp = build_experiment(tiny_cfg("model=bpr", "eval.pointwise_threshold=4", *POINTWISE))
    dm = exp.datamodule
    labels = torch.cat([b["pair_labels"] for b in dm._eval_batches["test"]])
    assert len(labels) == len(dm.split.test)
    assert int(labels.sum()) == int((dm.split.test["rating"] >= 4).sum())
