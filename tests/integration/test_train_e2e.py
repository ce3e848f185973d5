"""End to end: train on tiny data into a temporary folder, check the MLflow run, reload, re-evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pytorch_lightning.callbacks import early_stopping

from recforge import CONFIG_DIR
from recforge.errors import RecForgeError
from recforge.eval import evaluate
from recforge.pipeline import build_experiment
from recforge.train import train
from tests.conftest import REPO, compose_train


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    cfg = compose_train(["data.n_users=120", "data.n_items=60", "data.mean_interactions=12",
                         "trainer.max_epochs=3", "export.recommendations=true"], tmp)
    metrics = train(cfg)
    return cfg, metrics, tmp


def client_for(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{(tmp / 'logs').resolve()}/mlflow.db")


def test_mlflow_run_has_config_metrics_artifacts(tracked_run):
    cfg, metrics, tmp = tracked_run
    run = client_for(tmp).get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"] == "synthetic" and len(run.data.tags["split_fingerprint"]) == 16
    assert run.data.params["model._target_"] == "recforge.models.mf.MatrixFactorization"
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test/ndcg_at_10"], rel=1e-6)
    assert "val/ndcg_at_10" in run.data.metrics and "train/loss" in run.data.metrics
    assert run.data.params["data_report.leak_pairs"] == "0"  # the split's leakage checks are logged, as params
    assert int(run.data.params["data_report.n_test"]) > 0
    assert not any(k.startswith("data/") for k in run.data.metrics)   # no bookkeeping among the curves
    assert run.data.params["model"] == "bpr" and run.data.params["data"] == "synthetic"   # option names
    assert "datamodule._target_" not in run.data.params
    assert run.data.params["datamodule.preprocess"] == "DropMissing, Deduplicate(keep=last)"
    history = client_for(tmp).get_metric_history(run.info.run_id, "train/loss")
    assert len(history) == 3  # one value per epoch
    artifacts = {a.path for a in client_for(tmp).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "results", "id_maps", "export"} <= artifacts
    on_disk = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert on_disk["test/recall_at_10"] == pytest.approx(metrics["test/recall_at_10"])


def test_curves_end_at_their_last_epoch_and_the_best_is_apart(tracked_run):
    """The best checkpoint's re-validation is logged as val_best/*, not as one more point of val/*."""
    cfg, metrics, tmp = tracked_run
    client = client_for(tmp)
    curve = client.get_metric_history(metrics["run_id"], "val/ndcg_at_10")
    assert len(curve) == 3 == len(client.get_metric_history(metrics["run_id"], "train/loss"))
    best = client.get_metric_history(metrics["run_id"], "val_best/ndcg_at_10")
    assert len(best) == 1 and best[0].value == pytest.approx(max(p.value for p in curve), rel=1e-6)
    assert metrics["val/ndcg_at_10"] == pytest.approx(best[0].value, rel=1e-6)
    assert curve[int(metrics["val_best/epoch"]) - 1].value == pytest.approx(best[0].value, rel=1e-6)


def test_the_best_epoch_reported_is_the_one_the_progress_lines_showed(tiny_cfg, caplog):
    """Validating every second epoch, the best checkpoint was saved before the progress lines counted its epoch;
    restoring it for the final validation once brought back the previous best's epoch into the summary."""
    import re

    with caplog.at_level("INFO", logger="recforge"):
        metrics = train(tiny_cfg("trainer.max_epochs=8", "trainer.check_val_every_n_epoch=2",
                                 "callbacks.early_stopping.patience=10"))
    lines = re.findall(r"\(best [0-9.]+ at (\d+)\)", caplog.text)
    assert lines and int(metrics["val_best/epoch"]) == int(lines[-1])
    assert len(set(lines)) > 1  # the best moved during the run, so a stale epoch would show


def test_runs_are_named_for_what_they_are_and_record_their_dataset(tracked_run, tmp_path):
    cfg, metrics, tmp = tracked_run
    second_cfg = compose_train(["data.n_users=120", "data.n_items=60", "data.mean_interactions=12",
                                "trainer.max_epochs=1"], tmp)   # same seed, same store
    second_cfg.paths.output_dir = str(tmp_path / "second")   # not the module's run folder, which other tests read
    second = train(second_cfg)
    client = client_for(tmp)
    first_run, second_run = client.get_run(metrics["run_id"]), client.get_run(second["run_id"])
    assert first_run.info.run_name.startswith("bpr synthetic/random ")
    assert first_run.info.run_name != second_run.info.run_name
    (dataset_input,) = first_run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic/random"
    assert dataset_input.dataset.digest == first_run.data.tags["split_fingerprint"]
    assert {t.key: t.value for t in dataset_input.tags}["n_train"] == first_run.data.params["data_report.n_train"]


def test_per_user_metrics_average_to_reported(tracked_run):
    cfg, metrics, _ = tracked_run
    per_user = pd.read_parquet(Path(cfg.paths.output_dir) / "per_user_test_metrics.parquet")
    assert per_user["user"].is_unique
    assert per_user["ndcg_at_10"].mean() == pytest.approx(metrics["test/ndcg_at_10"], rel=1e-5)


def test_logged_model_loads_by_run_id_and_recommends(tracked_run):
    import mlflow

    cfg, metrics, tmp = tracked_run
    mlflow.set_tracking_uri(f"sqlite:///{(tmp / 'logs').resolve()}/mlflow.db")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{metrics['run_id']}/model")
    finally:
        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI for the tests that follow
    recs = model.predict(pd.DataFrame({"user": [0, 1, 999_999], "k": [5, 5, 5]}))
    assert len(recs) == 15 and list(recs.columns) == ["user", "item", "rank", "score", "fallback"]
    assert recs.loc[recs.user == 999_999, "fallback"].all() and not recs.loc[recs.user == 0, "fallback"].any()
    # a known user is never recommended an item seen in any split
    split = pd.concat([pd.read_parquet(Path(cfg.paths.output_dir) / f"{p}.parquet") for p in ("train", "val", "test")])
    seen = set(split.loc[split.user == 0, "item"])
    assert not seen & set(recs.loc[recs.user == 0, "item"])


def test_exported_files_reproduce_recall_without_recforge(tracked_run):
    cfg, metrics, _ = tracked_run
    out = Path(cfg.paths.output_dir)
    recs = pd.read_parquet(out / "recommendations.parquet")
    test = pd.read_parquet(out / "test.parquet")
    top10 = recs[recs["rank"] <= 10]
    hits = top10.merge(test[["user", "item"]], on=["user", "item"]).groupby("user").size()
    relevant = test.groupby("user").size()
    recall = (hits.reindex(relevant.index, fill_value=0) / relevant).mean()
    assert recall == pytest.approx(metrics["test/recall_at_10"], rel=1e-5)
    train_pairs = pd.read_parquet(out / "train.parquet")
    assert top10.merge(train_pairs, on=["user", "item"]).empty  # seen items excluded


@pytest.mark.parametrize("budget", [60, 600])
def test_reevaluation_by_run_id_reproduces_metrics_with_another_chunk_size(tracked_run, budget, tmp_path):
    cfg, metrics, tmp = tracked_run
    eval_cfg = compose_train([f"run_id={metrics['run_id']}", f"max_scores_in_memory={budget}"], tmp, config_name="eval")
    again = evaluate(eval_cfg)
    for name in ("test/ndcg_at_10", "test/recall_at_20", "test/map_at_10", "test/coverage_at_10"):
        assert again[name] == metrics[name], name


def test_reevaluation_from_checkpoint_path(tracked_run):
    cfg, metrics, tmp = tracked_run
    eval_cfg = compose_train([f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'best.ckpt'}"], tmp,
                             config_name="eval")
    assert evaluate(eval_cfg)["test/ndcg_at_20"] == metrics["test/ndcg_at_20"]


def test_crashed_run_is_marked_failed(tmp_path, monkeypatch):
    from recforge.training.module import RecommenderModule

    def boom(self, batch, batch_idx):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(RecommenderModule, "training_step", boom)
    cfg = compose_train(["data.n_users=60", "data.n_items=30", "data.mean_interactions=8"], tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    runs = client_for(tmp_path).search_runs(
        [client_for(tmp_path).get_experiment_by_name("recforge").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_same_seed_same_metrics(tiny_cfg):
    first = train(tiny_cfg("model=neumf"))
    second = train(tiny_cfg("model=neumf"))
    keys = [k for k in first if k.startswith(("val/", "test/"))]
    assert keys and all(first[k] == second[k] or (np.isnan(first[k]) and np.isnan(second[k])) for k in keys)


def test_explicit_mf_reports_rmse_per_user(tiny_cfg):
    cfg = tiny_cfg("model=mf", "optimizer.lr=0.01", "trainer.max_epochs=3")
    metrics = train(cfg)
    assert 0.3 < metrics["test/rmse"] < 2.0 and metrics["test/mae"] <= metrics["test/rmse"]
    per_user = pd.read_parquet(Path(cfg.paths.output_dir) / "per_user_test_metrics.parquet")
    assert {"user", "rmse", "mae", "n_test"} <= set(per_user.columns)
    weighted = np.sqrt((per_user["rmse"] ** 2 * per_user["n_test"]).sum() / per_user["n_test"].sum())
    assert weighted == pytest.approx(metrics["test/rmse"], rel=1e-4)


def test_popularity_needs_no_training_and_is_checkpointed(tiny_cfg):
    cfg = tiny_cfg("model=pop")
    metrics = train(cfg)
    assert metrics["time/s_per_epoch"] == 0.0 and metrics["test/hr_at_20"] > 0
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)
    assert state["state_dict"]["model.counts"].sum() > 0


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.lr=-0.01"], "optimizer.lr"),
    (["model=pop", "loss=mse"], "pick a matching loss"),
    (["monitor=val/ndgc_at_10"], "valid names"),
    (["model.embedding_dim=???"], "model.embedding_dim"),
    (["+model.hidden=3"], "model.hidden"),
    (["split.test_ratio=1.5"], "split.test_ratio"),
    (["callbacks=none", "+callbacks.early_stopping.patience=3"], "~callbacks.early_stopping"),
    (["resume_from=no/such/last.ckpt"], "resume_from=no/such/last.ckpt: file not found"),
])
def test_user_errors_name_the_key(tiny_cfg, overrides, message):
    with pytest.raises(RecForgeError, match=message.replace(".", r"\.")):
        train(tiny_cfg(*overrides))


@pytest.mark.parametrize("overrides", [
    [],
    # validation (and last.ckpt) every 2nd epoch, and a plateau schedule whose every step must survive the stop:
    # threshold 1 means no validation improves on the first, so the rate halves at each later one (patience 0)
    ["trainer.check_val_every_n_epoch=2", "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=1.0"],
    ["scheduler=cosine"],
    # Mult-VAE's KL weight, annealed over 10 steps, must go on from where the stopped run left it, not from 0
    ["model=multvae", "loss.total_anneal_steps=10", "datamodule.batch_size=40"],
], ids=["every-epoch", "every-2nd-epoch-plateau", "cosine", "multvae-kl-anneal"])
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tiny_cfg, tmp_path, monkeypatch, overrides):
    """Stopped after 4 of 6 epochs and resumed in its own folder with the same config, a run trains the same
    batches, draws the same negatives, keeps its schedules and ends with the same weights and metrics as 6 epochs in
    one go."""
    from recforge.training.module import RecommenderModule

    model = [] if any(o.startswith("model=") for o in overrides) else ["model=neumf"]

    def run(folder: str, *extra: str):
        cfg = tiny_cfg(*model, "trainer.max_epochs=6", "callbacks.early_stopping.patience=100", *overrides, *extra)
        cfg.paths.output_dir = str(tmp_path / folder)
        return train(cfg), torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=True)

    whole, whole_ckpt = run("whole")
    original = RecommenderModule.on_train_epoch_end

    def stop_after_four(self):  # the run is cut short as a crash or a time limit would, config unchanged
        original(self)
        self.trainer.should_stop = self.trainer.should_stop or self.current_epoch == 3

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", stop_after_four)
    _, stopped_ckpt = run("stopped")
    assert stopped_ckpt["epoch"] == 3
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original)
    resumed, resumed_ckpt = run("stopped", f"resume_from={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}")
    assert resumed_ckpt["epoch"] == whole_ckpt["epoch"] == 5
    for name, value in whole_ckpt["state_dict"].items():
        assert torch.equal(resumed_ckpt["state_dict"][name], value), name
    rates = [c["optimizer_states"][0]["param_groups"][0]["lr"] for c in (whole_ckpt, stopped_ckpt, resumed_ckpt)]
    scheduled = any(o.startswith("scheduler=") for o in overrides)
    assert rates[2] == rates[0] != 0.001 if scheduled else rates[0] == rates[1] == rates[2]
    keys = [k for k in whole if k.startswith(("val/", "test/"))]
    assert keys and all(resumed[k] == whole[k] for k in keys)


@pytest.mark.parametrize("overrides,expected", [
    (["scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"], 0.01 * 0.5**3),  # after each of 3 epochs
    (["scheduler=cosine"], 0.0),  # annealed to eta_min at the last epoch
    # 4 validations (every 2nd epoch): the first sets the best, the other 3 cannot improve on it (threshold 1), so
    # one halving after the 2nd bad one; stepped at every epoch on the stale metric it would halve 3 times
    (["scheduler=plateau", "scheduler.patience=1", "scheduler.threshold=1.0", "trainer.check_val_every_n_epoch=2",
      "trainer.max_epochs=8"], 0.01 * 0.5),
])
def test_learning_rate_schedules_step_per_epoch_or_per_validation(tiny_cfg, overrides, expected):
    cfg = tiny_cfg("optimizer.lr=0.01", "trainer.max_epochs=3", "callbacks.early_stopping.patience=100", *overrides)
    train(cfg)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(expected, abs=1e-12)
    plateau = cfg.scheduler._target_.endswith("ReduceLROnPlateau")  # stepped by the module, saved by it
    assert len(state["lr_schedulers"]) == (0 if plateau else 1) and ("recforge_plateau" in state) == plateau


def test_logged_learning_rate_is_the_rate_each_epoch_trained_at(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optimizer.lr=0.01", "trainer.max_epochs=3", "scheduler=step", "scheduler.step_size=1",
                   "scheduler.gamma=0.5", tracking=True)
    run_id = train(cfg)["run_id"]
    history = client_for(tmp_path).get_metric_history(run_id, "train/lr")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx([0.01, 0.005, 0.0025])


@pytest.mark.parametrize("override,message", [("split.test_ratio=0.3", "was trained on split"),
                                               ("data.n_users=100", "was trained on split"),
                                               ("model.embedding_dim=8", r"model.embedding_dim \(64 -> 8\)")])
def test_resume_refuses_a_checkpoint_of_another_split_or_model(tiny_cfg, override, message):
    cfg = tiny_cfg()
    train(cfg)
    with pytest.raises(RecForgeError, match=message):
        train(tiny_cfg(override, f"resume_from={cfg.paths.output_dir}/checkpoints/last.ckpt"))


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "recforge.train", "tracking=none", "optimizer.lr=-1", f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: optimizer.lr=-1")


def test_tracking_leaves_mlflow_environment_as_it_was(tiny_cfg, monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(tiny_cfg("trainer.max_epochs=1", "tracking.log_model=false", tracking=True))
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a second run in this process must not reuse the first store


def test_row_models_score_held_out_users_from_their_fold_in_rows(tiny_cfg):
    """Strong generalisation: EASE and Mult-VAE never train on the held-out users; they read their fold-in rows
    (plus validation rows at test time) when evaluated. Empty rows would give every held-out user the same scores."""
    split = ["split=strong_generalization", "split.val_users_ratio=0.2", "split.test_users_ratio=0.2"]
    exp = build_experiment(tiny_cfg("model=multvae", *split))
    split_parts = exp.datamodule.split
    fold_in = split_parts.fold_in[split_parts.fold_in["user"].isin(split_parts.test["user"])]  # the test users'
    users = torch.as_tensor(np.unique(fold_in["user"].to_numpy()))
    assert exp.model.user_rows(users).sum() == 0  # not in training
    # novelty's normaliser: the users item popularity counts, not the held-out ones as well
    assert exp.module.evaluator.n_train_users == split_parts.train["user"].nunique() < exp.datamodule.n_users
    exp.module.on_test_epoch_start()
    rows = exp.model.user_rows(users)
    assert rows.sum() == len(fold_in)
    assert rows[torch.searchsorted(users, torch.as_tensor(fold_in["user"].to_numpy())),
                torch.as_tensor(fold_in["item"].to_numpy())].all()

    # with empty rows EASE would score every item 0 for them and rank by item index, far below popularity
    pop = train(tiny_cfg("model=pop", *split))["test/ndcg_at_10"]
    assert train(tiny_cfg("model=ease", *split))["test/ndcg_at_10"] > pop + 0.005


@pytest.mark.parametrize("experiment, extra, metric", [
    ("ml1m_ncf", [], "test/sampled99_hr_at_10"),
    # eval.ks goes to 100: over 100 items after the rating threshold (a cut-off above the catalogue is refused)
    ("ml20m_multvae", ["split.n_val_users=20", "split.n_test_users=20", "data.n_items=150"], "test/ndcg_at_100"),
    ("ml20m_multvae", ["model=ease", "split.n_val_users=20", "split.n_test_users=20", "data.n_items=150"],
     "test/recall_at_50"),
])
def test_protocols_without_their_data_here_run_on_the_synthetic_stand_in(tiny_cfg, experiment, extra, metric):
    """ML-1M (NCF protocol) and ML-20M (strong generalisation) are not on this machine: their experiment files
    run end to end with the data swapped for the synthetic source, and log their protocol's metrics."""
    cfg = tiny_cfg(f"experiment={experiment}", "data=synthetic", "trainer.max_epochs=1", *extra)
    assert cfg.data._target_.endswith("SyntheticSource")
    metrics = train(cfg)
    assert 0 < metrics[metric] <= 1


@pytest.mark.parametrize("model, view, column", [("sasrec", "sequences", "user"), ("multvae", "users", "user"),
                                                 ("autorec", "items", "item")])
def test_row_and_sequence_views_yield_each_training_user_or_item_once_per_epoch(tiny_cfg, model, view, column):
    dm = build_experiment(tiny_cfg(f"model={model}")).datamodule
    assert dm.train_view == view
    ids = torch.cat([batch[0] for batch in dm.train_dataloader()])
    assert sorted(ids.tolist()) == sorted(dm.split.train[column].unique().tolist())


@pytest.mark.parametrize("model", ["sasrec", "ease"])
def test_served_history_models_read_every_known_interaction(tiny_cfg, model):
    """Evaluation reads only what each stage may see; a shipped bundle (saved, or rebuilt from the checkpoint)
    reads everything known, so it recommends from the user's latest items, the test ones included."""
    from recforge.tracking.bundle import Bundle

    cfg = tiny_cfg(f"model={model}", "split=leave_one_out", "trainer.max_epochs=1", "export.recommendations=true")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    test = pd.read_parquet(out / "test.parquet")
    for bundle in (Bundle.load(out / "model"), Bundle.from_checkpoint(next(out.rglob("*.ckpt")))):
        users = torch.as_tensor(bundle.user_index(test["user"].to_numpy()))
        items = torch.as_tensor(bundle.item_index(test["item"].to_numpy()))
        if model == "sasrec":  # under leave-one-out the test item is each user's latest
            assert torch.equal(bundle.model.recent_items(users, 1).squeeze(1), items)
        else:
            rows = bundle.model.user_rows(users)
            assert rows[torch.arange(len(users)), items].all()
            assert torch.equal(rows.sum(1), torch.as_tensor(np.diff(bundle.seen.tocsr().indptr))[users].float())


ALL_MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
SMALL_DATA = {  # the tiny data has 60 items: fewer negatives than SimpleX's 1,000 and UltraGCN's 200; its batches
    # of 256 hold 255 in-batch negatives, not the two-tower file's 1,023 (a batch of 1,024 minus the positive); it has
    # no item features, which SASRecF refuses (tests/integration/test_cold_start.py trains it with them)
    "simplex": ["loss.num_negatives=20"], "ultragcn": ["loss.num_negatives=20"], "twotower": ["loss.num_negatives=255"],
    "sasrecf": ["model.use_features=false"]}


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_trains_one_epoch_end_to_end_and_ships(tiny_cfg, model):
    """``recforge-train model=<name>`` alone runs: each model's file selects the loss, view and split it needs;
    the run tests, and its bundle reloads and recommends."""
    from recforge.tracking.bundle import Bundle

    cfg = tiny_cfg(f"model={model}", "trainer.max_epochs=1", *SMALL_DATA.get(model, []))
    metrics = train(cfg)
    assert np.isfinite(metrics[cfg.monitor]) and np.isfinite(metrics[cfg.monitor.replace("val/", "test/")])
    bundle = Bundle.load(Path(cfg.paths.output_dir) / "model")
    recs = bundle.recommend(bundle.user_ids[:3], k=5)
    assert len(recs) == 15 and recs.groupby("user")["item"].nunique().eq(5).all()


def test_a_run_prints_a_line_per_epoch_and_a_short_summary(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recforge.train", "data.n_users=120", "data.n_items=60",
                             "data.mean_interactions=12", "trainer.max_epochs=2", f"paths.log_dir={tmp_path}",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    epochs = [line for line in (result.stdout + result.stderr).splitlines() if "] epoch " in line]
    assert len(epochs) == 2 and "epoch 2/2  train/loss" in epochs[1] and "val/ndcg_at_10" in epochs[1]
    summary = result.stdout[result.stdout.index("done: bpr synthetic/random"):].splitlines()
    assert [line.split()[0] for line in summary[1:]] == ["best", "test", "folder", "again", "serve"]
    assert "at epoch" in summary[1] and "--run-id" in summary[5]
    assert "Restoring states" not in result.stdout + result.stderr and "Tip" not in result.stdout + result.stderr
    assert (tmp_path / "run" / "train.log").read_text().count("] epoch ") == 2   # the log keeps them too


def test_refit_trains_a_fresh_model_on_training_and_validation_for_the_chosen_epochs(tiny_cfg, caplog):
    """refit=true: validation chooses the epoch, a fresh model trains that long on train + validation, and the test,
    the checkpoint and the bundle are that model's; recforge-eval of its checkpoint gives its test numbers again."""
    import re

    from recforge.tracking.bundle import Bundle

    settings = ("trainer.max_epochs=5", "callbacks.early_stopping.patience=10")
    plain = train(tiny_cfg(*settings))
    cfg = tiny_cfg("refit=true", *settings)
    with caplog.at_level("INFO", logger="recforge"):
        metrics = train(cfg)
    chosen = int(metrics["val_best/epoch"])
    assert chosen == plain["val_best/epoch"] and metrics["val/ndcg_at_10"] == plain["val/ndcg_at_10"]
    assert metrics["refit/epochs"] == chosen and metrics["time/refit_s"] > 0
    refit_lines = caplog.text.split("refit: a fresh model on training + validation")[1]
    assert re.findall(r"epoch (\d+)/(\d+)", refit_lines)[-1] == (str(chosen), str(chosen))
    assert "val/ndcg_at_10" not in refit_lines   # the refit does not validate
    run = Path(cfg.paths.output_dir)
    state = torch.load(run / "checkpoints" / "refit.ckpt", weights_only=False)
    bundle = Bundle.load(run / "model")
    assert torch.equal(state["state_dict"]["model.user_embedding.weight"],
                       bundle.model.user_embedding.weight.detach())
    again = evaluate(compose_train([f"ckpt_path={run / 'checkpoints' / 'refit.ckpt'}"], run.parent,
                                   config_name="eval"))
    for name in ("test/ndcg_at_10", "test/recall_at_20"):
        assert again[name] == metrics[name], name


@pytest.mark.parametrize("patience", [1, 0])
def test_resuming_a_run_that_stopped_early_trains_nothing_more_and_can_refit(tiny_cfg, tmp_path, recwarn, patience):
    """A finished run resumed (``resume_from=<run>/checkpoints/last.ckpt``) goes straight to its test: Lightning
    alone would train one more epoch first. With ``refit=true`` it refits as a run started with refit=true does.
    Patience 0 (stop at the first validation without a gain) is a patience too."""
    settings = ("optimizer.lr=0.5", "trainer.max_epochs=30", f"callbacks.early_stopping.patience={patience}")
    cfg = tiny_cfg(*settings)
    first = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, weights_only=False)["epoch"]
    assert stopped_at < 29, "the run must stop early for this test to mean anything"
    again = train(tiny_cfg(*settings, f"resume_from={last}"))
    assert torch.load(last, weights_only=False)["epoch"] == stopped_at   # no epoch was added
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]   # its own folder, given back
    assert again["test/ndcg_at_10"] == first["test/ndcg_at_10"] and again["val_best/epoch"] == first["val_best/epoch"]
    assert "time/s_per_epoch" not in again and first["time/s_per_epoch"] > 0   # it trained no epoch to time
    refit = train(tiny_cfg(*settings, "refit=true", f"resume_from={last}"))
    direct = tiny_cfg(*settings, "refit=true")
    direct.paths.output_dir = str(tmp_path / "direct")
    expected = train(direct)
    assert refit["refit/epochs"] == expected["refit/epochs"] == first["val_best/epoch"]
    assert refit["test/ndcg_at_10"] == expected["test/ndcg_at_10"]


def test_resuming_a_run_stopped_by_a_non_finite_metric_trains_nothing_more(tiny_cfg):
    """Early stopping ends a diverged run at its first non-finite validation RMSE; no patience makes that run go on,
    so resuming it only tests (Lightning alone would train, and diverge, one more epoch)."""
    if not hasattr(early_stopping, "EarlyStoppingReason"):
        pytest.skip("this Lightning does not record why early stopping stopped a run")
    settings = ("model=mf", "optimizer.lr=1e30", "trainer.max_epochs=10")
    cfg = tiny_cfg(*settings)
    first = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, weights_only=False)["epoch"]
    assert np.isnan(first["val/rmse"]) and stopped_at < 9, "the run must diverge and stop for the test to mean anything"
    again = train(tiny_cfg(*settings, f"resume_from={last}"))
    assert torch.load(last, weights_only=False)["epoch"] == stopped_at   # no epoch was added
    assert "time/s_per_epoch" not in again


def test_a_diverged_ranking_model_stops_at_once_and_reports_nan_not_near_zero(tiny_cfg):
    """NaN scores make the validation NDCG NaN (the evaluator's policy), so early stopping ends the run at that
    epoch instead of training the cap out on a model whose lists merely look poor; its test reads NaN too."""
    cfg = tiny_cfg("model=bpr", "optimizer.lr=1e30", "trainer.max_epochs=10")
    metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    assert np.isnan(metrics["val/ndcg_at_10"]) and np.isnan(metrics["test/ndcg_at_10"])


@pytest.mark.parametrize("epochs", [3, 5], ids=["nothing-left-to-train", "two-more-epochs"])
def test_a_run_folder_moved_elsewhere_resumes_as_it_would_have_in_place(tiny_cfg, tmp_path, epochs):
    """The checkpoints keep the folder they were written in; a copy of the folder resumed where it now is restores
    the best score and tests its own best checkpoint (Lightning alone would drop the score and look for the best
    checkpoint in the old folder, removed here)."""
    import shutil

    def run(folder: Path, *extra: str) -> dict:
        cfg = tiny_cfg("optimizer.lr=0.5", *extra)
        cfg.paths.output_dir = str(folder)
        metrics = train(cfg)
        best = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=False)["epoch"]
        return {"test": metrics["test/ndcg_at_10"], "val": metrics["val/ndcg_at_10"], "best epoch": best}

    old, moved = tmp_path / "old", tmp_path / "moved"
    run(old, "trainer.max_epochs=3")
    shutil.copytree(old, moved)
    in_place = run(old, f"trainer.max_epochs={epochs}", f"resume_from={old / 'checkpoints' / 'last.ckpt'}")
    shutil.rmtree(old)   # nothing of the old folder is left for the moved copy to read
    assert run(moved, f"trainer.max_epochs={epochs}", f"resume_from={moved / 'checkpoints' / 'last.ckpt'}") == in_place


def test_a_stopped_run_resumed_with_more_patience_trains_on_as_if_it_had_had_it(tiny_cfg, tmp_path):
    """Patience is a setting, not state: Lightning restores the checkpoint's, RecForge keeps the config's, so a run
    that stopped too soon goes on and ends where a run given that patience from the start ends."""
    settings = ("optimizer.lr=0.5", "trainer.max_epochs=30")
    cfg = tiny_cfg(*settings, "callbacks.early_stopping.patience=1")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, weights_only=False)["epoch"]
    resumed = train(tiny_cfg(*settings, "callbacks.early_stopping.patience=4", f"resume_from={last}"))
    fresh = tiny_cfg(*settings, "callbacks.early_stopping.patience=4")
    fresh.paths.output_dir = str(tmp_path / "fresh")
    expected = train(fresh)
    ended_at = torch.load(last, weights_only=False)["epoch"]
    assert stopped_at < ended_at == torch.load(tmp_path / "fresh" / "checkpoints" / "last.ckpt",
                                               weights_only=False)["epoch"]
    assert resumed["val_best/epoch"] == expected["val_best/epoch"]
    assert resumed["test/ndcg_at_10"] == expected["test/ndcg_at_10"]


def test_a_tracked_refit_logs_its_test_and_its_checkpoint(tiny_cfg):
    cfg = tiny_cfg("refit=true", tracking=True)
    metrics = train(cfg)
    client = client_for(Path(cfg.paths.log_dir).parent)
    run = client.get_run(metrics["run_id"])
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test/ndcg_at_10"], rel=1e-6)
    assert run.data.metrics["refit/epochs"] == metrics["val_best/epoch"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/refit.ckpt"]


def test_training_on_validation_merges_it_and_ranks_test_as_before(tiny_cfg):
    selection = build_experiment(tiny_cfg()).datamodule
    merged = build_experiment(tiny_cfg("datamodule.train_on_validation=true")).datamodule
    assert len(merged.split.train) == len(selection.split.train) + len(selection.split.val)
    assert len(merged.split.val) == 0 and merged.split.test.equals(selection.split.test)
    assert merged.fingerprint != selection.fingerprint
    assert len(selection.eval_shard("test")) == len(merged.eval_shard("test"))
    for before, after in zip(selection.eval_shard("test"), merged.eval_shard("test")):  # the same items excluded
        for key in before:
            if isinstance(before[key], torch.Tensor):
                assert torch.equal(before[key], after[key]), key


def test_refit_of_a_model_without_training_fits_training_and_validation(tiny_cfg):
    cfg = tiny_cfg("model=pop", "refit=true")
    metrics = train(cfg)
    dm = build_experiment(tiny_cfg("model=pop")).datamodule
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "refit.ckpt", weights_only=True)
    assert state["state_dict"]["model.counts"].sum() == len(dm.split.train) + len(dm.split.val)
    assert metrics["refit/epochs"] == 0 and metrics["test/hr_at_20"] > 0


@pytest.mark.parametrize("overrides,message", [
    (["scheduler=plateau"], "scheduler=plateau"),
    (["datamodule.train_on_validation=true"], "datamodule.train_on_validation"),
    (["+optuna_trial={metric:val/ndcg_at_10}"], "sweep trial"),
])
def test_refit_refuses_what_it_cannot_repeat(tiny_cfg, overrides, message):
    with pytest.raises(RecForgeError, match=message.replace(".", r"\.")):
        train(tiny_cfg("refit=true", *overrides))
