"""Beyond accuracy end to end: a run logs every test metric per slice and the list metrics (to metrics.json and
MLflow, with MLflow-valid names), a re-ranker changes only the test lists (trade_off 0 changes nothing), the
served bundle re-ranks as the test did, calibration works from genre features, the ensemble re-ranks its lists,
and recforge-compare writes the per-slice tables, tests and plots."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recforge.compare import main as compare_main
from recforge.errors import RecForgeError
from recforge.metrics.ranking import mask_scores_, topk_items
from recforge.serving.core import ServedModel
from recforge.serving.registry import ModelRef
from recforge.tracking.bundle import Bundle
from recforge.tracking.client import tracking_client
from recforge.train import train
from tests.conftest import TINY, compose_train

RUNS = {"bpr": ["model=bpr"], "ease": ["model=ease"],
        "ease_xquad_0": ["model=ease", "rerank=xquad", "rerank.trade_off=0"],
        "ease_xquad_7": ["model=ease", "rerank=xquad", "rerank.trade_off=0.7"],
        "bpr_mmr": ["model=bpr", "rerank=mmr", "rerank.trade_off=0.5"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("beyond")
    runs = {}
    for name, extra in RUNS.items():
        cfg = compose_train([*TINY[:3], "trainer.max_epochs=2", f"tracking.run_name={name}", *extra], tmp / name)
        cfg.paths.log_dir = str(tmp / "logs")
        runs[name] = train(cfg)
    return f"sqlite:///{(tmp / 'logs').resolve()}/mlflow.db", runs, tmp


def test_a_run_logs_every_metric_per_slice_and_the_list_metrics(store):
    uri, runs, tmp = store
    saved = json.loads((tmp / "bpr" / "out" / "metrics.json").read_text())
    for name in ("test/ndcg_at_10/users_cold", "test/recall_at_20/users_heavy", "test/ndcg_at_10/users_niche",
                 "test/ndcg_at_10/items_tail", "test/coverage_at_10/users_blockbuster", "test/ild_at_10",
                 "test/aplt_at_20", "test/psrecall_at_10", "test/serendipity_at_10", "test/expgini_at_10",
                 "test/ild_at_10/users_light"):
        assert name in saved, name
    assert not any(k.startswith("val/") and k.count("/") > 1 for k in saved)  # validation is not sliced
    assert "test/miscalibration_at_10" not in saved  # the synthetic data has no genres
    run = tracking_client(uri).get_run(runs["bpr"]["run_id"])
    assert run.data.metrics["test/ndcg_at_10/users_cold"] == pytest.approx(saved["test/ndcg_at_10/users_cold"])
    assert run.data.tags["beyond.item_vectors"] == "model" and run.data.tags["beyond.categories"] == "none"
    assert run.data.params["rerank"] == "none"
    assert "test/ild_at_10" not in runs["ease"]  # no item features, no item vectors: no diversity, said so
    assert tracking_client(uri).get_run(runs["ease"]["run_id"]).data.tags["beyond.item_vectors"] == "none"
    per_user = pd.read_parquet(tmp / "bpr" / "out" / "per_user_test_metrics.parquet")
    assert set(per_user["slice_activity"]) == {"cold", "light", "medium", "heavy"}
    assert set(per_user["slice_profile"]) == {"niche", "diverse", "blockbuster"}
    cold = per_user[per_user["slice_activity"] == "cold"]["ndcg_at_10"]
    assert saved["test/ndcg_at_10/users_cold"] == pytest.approx(cold.mean(), abs=1e-6)


def test_a_reranker_changes_only_the_test_lists(store):
    _, runs, _ = store
    plain, unchanged, moved = runs["ease"], runs["ease_xquad_0"], runs["ease_xquad_7"]
    for key, value in plain.items():  # trade_off 0 keeps the model's lists: every metric is the same
        if key.startswith(("val/", "test/")):
            assert unchanged[key] == pytest.approx(value, nan_ok=True), key
    assert moved["val/ndcg_at_10"] == plain["val/ndcg_at_10"]  # validation stays on the model's own lists
    assert moved["test/ndcg_at_10"] != plain["test/ndcg_at_10"]


def test_the_served_bundle_reranks_like_the_test(store):
    _, _, tmp = store
    bundle = Bundle.load(tmp / "bpr_mmr" / "out" / "model")
    assert type(bundle.reranker).__name__ == "MMR" and bundle.reranker.trade_off == 0.5
    trained = torch.nn.functional.normalize(bundle.model.item_vectors().detach(), dim=1)
    assert torch.allclose(bundle.reranker.item_vectors, trained, atol=1e-6)  # the trained vectors, not the initial
    served = ServedModel(bundle, ModelRef("x"))
    assert served.info()["rerank"] == "MMR"
    users = bundle.user_ids[:6]
    batch = bundle.recommend(users, k=5)
    for row, user in enumerate(users):
        items, scores, fallback = served.recommend(user.item(), k=5)
        assert items == batch[batch.user == user]["item"].tolist() and not fallback
        # by hand: the model's top 100 unseen items, re-ranked by the stored MMR
        s = bundle.model.score_all(torch.tensor([row])).detach().float()
        seen = bundle.seen[row].tocoo()
        mask_scores_(s, torch.as_tensor(seen.row), torch.as_tensor(seen.col))
        values, top = topk_items(s, 100)
        listed, _ = bundle.reranker(torch.tensor([row]), top, values, 5)
        assert bundle.item_ids[listed[0].numpy()].tolist() == items
    plain = Bundle.load(tmp / "bpr" / "out" / "model")
    assert plain.reranker is None and not (tmp / "bpr" / "out" / "model" / "rerank.pt").exists()


def test_compare_writes_slice_tables_tests_and_tradeoff_plots(store, tmp_path, capsys):
    uri, runs, _ = store
    assert compare_main(["--tracking-uri", uri, "--n-bootstrap", "200", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test/ndcg_at_10 by slice: the best run of each slice" in out
    runs_text = out.split("paired tests")[0]
    assert "xquad 0.7" in runs_text and "mmr 0.5" in runs_text  # the re-ranker and its setting of each run
    winners_text = out.split("by slice:")[1].split("saved:")[0]
    assert "ease+xquad 0.7" in winners_text or "bpr+mmr 0.5" in winners_text  # models and re-rankers, not run ids
    assert winners_text.splitlines()[1] == "synthetic:"  # a table per dataset, under its name
    assert max(map(len, out.splitlines())) <= 120
    summary = pd.read_csv(tmp_path / "slices.csv")
    assert set(summary["slice"]) == {"users_cold", "users_light", "users_medium", "users_heavy", "users_niche",
                                     "users_diverse", "users_blockbuster", "items_head", "items_mid", "items_tail"}
    row = summary[(summary["slice"] == "users_cold") & (summary["run_id"] == runs["bpr"]["run_id"])].iloc[0]
    assert row["mean"] == pytest.approx(runs["bpr"]["test/ndcg_at_10/users_cold"], abs=1e-6)
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    tests = pd.read_csv(tmp_path / "slice_significance.csv")
    assert len(tests) == 10 * 10  # 5 runs on one split: 10 pairs in each of the 10 slices
    for _, pairs in tests.groupby("slice"):  # Holm within each slice: never below the raw p-value
        assert (pairs["t_pvalue_holm"] >= pairs["t_pvalue"] - 1e-12).all()
    same = tests[(tests.run_a == runs["ease"]["run_id"]) & (tests.run_b == runs["ease_xquad_0"]["run_id"])]
    assert (same["mean_diff"] == 0).all()
    winners = pd.read_csv(tmp_path / "slice_winners.csv")
    assert len(winners) == 10 and (winners["diff"] >= 0).all()
    runs_csv = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs_csv["rerank"]) == ["mmr", "none", "none", "xquad", "xquad"]
    assert not any(c.count("/") > 1 for c in runs_csv.columns)  # the slices are in slices.csv
    for png in ("test_ndcg_at_10_by_slice.png", "test_ndcg_at_10_vs_test_aplt_at_10.png",
                "test_ndcg_at_10_vs_test_ild_at_10.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_calibration_and_ild_from_genre_features(tmp_path):
    rng = np.random.default_rng(0)
    users, items = np.nonzero(rng.random((60, 30)) < 0.3)
    pd.DataFrame({"user": users, "item": items, "rating": 1.0, "timestamp": np.arange(len(users))}).to_csv(
        tmp_path / "x.csv", index=False)
    genres = rng.random((30, 3)) < 0.5
    pd.DataFrame({"item": np.arange(30), **{f"genre_{g}": genres[:, i].astype(int) for i, g in
                                            enumerate("abc")}}).to_csv(tmp_path / "items.csv", index=False)
    data = ["data=custom", f"data.path={tmp_path / 'x.csv'}", f"data.item_features={tmp_path / 'items.csv'}",
            "tracking=none", "model=ease"]
    plain = train(compose_train(data, tmp_path / "plain"))
    calibrated = train(compose_train([*data, "rerank=calibrated", "rerank.trade_off=0.9"], tmp_path / "cal"))
    assert 0 <= plain["test/ild_at_10"] <= 1 and plain["test/miscalibration_at_10"] > 0
    assert calibrated["test/miscalibration_at_10"] < plain["test/miscalibration_at_10"]
    assert type(Bundle.load(tmp_path / "cal" / "out" / "model").reranker).__name__ == "Calibrated"
    with pytest.raises(RecForgeError, match="rerank=calibrated needs genres"):
        train(compose_train([*TINY, "tracking=none", "rerank=calibrated"], tmp_path / "none"))
    with pytest.raises(RecForgeError, match="rerank=mmr needs item vectors.*model EASE"):
        train(compose_train([*TINY, "tracking=none", "rerank=mmr", "model=ease"], tmp_path / "ease"))


def test_the_ensemble_reranks_its_test_lists(store, tmp_path):
    from recforge.ensemble.cli import ensemble

    uri, runs, _ = store
    ids = [runs["bpr"]["run_id"], runs["ease"]["run_id"]]
    overrides = [f"runs=[{','.join(ids)}]", f"tracking.uri={uri}", "search=none", "n_bootstrap=100"]
    plain = ensemble(compose_train(overrides, tmp_path / "plain", config_name="ensemble"))
    fair = ensemble(compose_train([*overrides, "rerank=fair", "rerank.trade_off=0.5"], tmp_path / "fair",
                                  config_name="ensemble"))
    assert fair["val/ndcg_at_10"] == plain["val/ndcg_at_10"]
    assert fair["test/aplt_at_10"] > plain["test/aplt_at_10"]
    members = pd.read_csv(tmp_path / "fair" / "out" / "members.csv")  # the members' lists are re-ranked too
    assert members.loc[1, "test/ndcg_at_10"] != pytest.approx(runs["ease"]["test/ndcg_at_10"])
    per_user = pd.read_parquet(tmp_path / "fair" / "out" / "per_user_test_metrics.parquet")
    assert "slice_activity" in per_user and "ndcg_at_10/items_tail" in per_user
    assert type(Bundle.load(tmp_path / "fair" / "out" / "model").reranker).__name__ == "FairTopK"
    run = tracking_client(uri).get_run(fair["run_id"])
    assert run.data.params["rerank"] == "fair" and run.data.params["rerank.trade_off"] == "0.5"
