"""Every option of every config group composes, instantiates, and its keys match its target's signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recforge.config import CONFIG_DIR, build_model, check_target, resolve_target
from recforge.metrics.names import metric_mode
from tests.conftest import compose_train

CONF = Path(CONFIG_DIR)
GROUPS = ["data", "split", "model", "loss", "sampler", "optimizer", "scheduler", "trainer", "tracking", "callbacks",
          "paths", "experiment", "debug", "hparams_search", "rerank", "ann"]


RERANK_DATA = {"item_vectors": torch.eye(6), "item_categories": torch.eye(6)[:, :3],
               "user_categories": torch.full((5, 3), 1 / 3), "item_groups": torch.tensor([0, 1, 2, 2, 1, 0]),
               "user_group_shares": torch.full((5, 3), 1 / 3), "protected": torch.tensor([0, 0, 1, 1, 0, 1]).bool()}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for group in ["data", "split", "model", "loss", "optimizer", "trainer", "tracking", "callbacks", "paths", "debug"]:
        assert options(group), f"conf/{group}/ is empty"
    assert {"synthetic", "ml-100k"} <= set(options("data"))
    assert {"pop", "mf", "bpr", "neumf"} <= set(options("model"))
    assert {"mse", "bce", "bpr"} <= set(options("loss"))
    assert {"sgd", "adam", "adamw", "adagrad"} <= set(options("optimizer"))
    assert {"random", "leave_one_out"} <= set(options("split"))


def check_keys(node, where: str) -> None:
    """Every non-underscore key of a ``_target_`` node is an argument of the target."""
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            target = resolve_target(node._target_)
            assert target is not None, f"{where}: cannot import {node._target_}"
            params = inspect.signature(target).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                for key in node:
                    if not str(key).startswith("_"):
                        assert key in params, f"{where}.{key} is not an argument of {node._target_}"
        for key, value in node.items():
            if not str(key).startswith("_") and (OmegaConf.is_dict(value) or OmegaConf.is_list(value)):
                check_keys(value, f"{where}.{key}")


@pytest.mark.parametrize("group,option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    for key in ("data", "split", "loss", "model", "optimizer", "datamodule"):
        check_target(cfg, key, fixed=("source", "splitter", "feedback") if key == "datamodule" else ())
    check_keys(cfg, "cfg")
    instantiate(cfg.split)
    instantiate(cfg.loss)
    check_target(cfg, "sampler", fixed=("n_items", "positive_keys", "item_counts"))
    sampler = instantiate(cfg.sampler, n_items=6, positive_keys=torch.tensor([0, 7]), item_counts=torch.ones(6))
    assert sampler(torch.tensor([0, 1]), 2, positives=torch.tensor([1, 2]), scorer=lambda u, i: i.float()).shape[0] == 2
    instantiate(cfg.data)
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.Optimizer)
    if cfg.get("scheduler"):
        check_target(cfg, "scheduler")
        assert isinstance(instantiate(cfg.scheduler)(optimizer), torch.optim.lr_scheduler.LRScheduler)
    interactions = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    model = build_model(cfg, {"n_users": 5, "n_items": 6, "global_mean": 3.5, "interactions": interactions,
                              "item_popularity": torch.ones(6), "item_features": torch.eye(6)[:, :2]})
    assert isinstance(model, torch.nn.Module)
    if cfg.get("tracking"):
        instantiate(cfg.tracking)
    if cfg.get("ann"):
        check_target(cfg, "ann")
        assert instantiate(cfg.ann).arguments()["kind"] == cfg.ann.kind
    if cfg.get("rerank"):  # the data arguments a re-ranker may take, each a valid value for 5 users x 6 items
        check_target(cfg, "rerank", fixed=tuple(RERANK_DATA))
        params = inspect.signature(resolve_target(cfg.rerank._target_)).parameters
        reranker = instantiate(cfg.rerank, **{k: v for k, v in RERANK_DATA.items() if k in params})
        items, scores = reranker(torch.tensor([0, 1]), torch.tensor([[5, 4, 3], [0, 1, 2]]),
                                 torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, float("-inf")]]), 2)
        assert items.shape == (2, 2) and torch.isfinite(scores).all()
    for name in cfg.callbacks or {}:
        instantiate(cfg.callbacks[name])
    accelerator = cfg.trainer.accelerator
    if accelerator == "gpu" and not torch.cuda.is_available():
        accelerator = "cpu"  # the keys are still checked; the GPU itself is exercised on a GPU machine
    trainer = instantiate(cfg.trainer, logger=False, accelerator=accelerator)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("model,loss", [("mf", "mse"), ("bpr", "bpr"), ("neumf", "bce"), ("pop", "bpr")])
def test_model_selects_its_loss_and_command_line_wins(model, loss, tmp_path):
    cfg = compose_train([f"model={model}"], tmp_path)
    assert cfg.loss._target_.lower().endswith(f"{loss}loss")
    cfg = compose_train([f"model={model}", "loss=bce"], tmp_path)
    assert cfg.loss._target_ == "recforge.losses.BCELoss"
    assert cfg.monitor == "val/ndcg_at_10"


def test_issue_example_composes(tmp_path):
    cfg = compose_train(["data=ml-100k", "model=neumf", "loss=bce", "optimizer=adagrad", "optimizer.lr=0.01",
                         "trainer.max_epochs=20"], tmp_path)
    assert cfg.optimizer._target_ == "torch.optim.Adagrad" and cfg.optimizer.lr == 0.01
    assert cfg.trainer.max_epochs == 20 and cfg.model._target_.endswith("NeuMF")


def test_metric_mode():
    assert metric_mode("val/rmse") == "min"
    assert metric_mode("val/mae") == "min"
    assert metric_mode("val/ndcg_at_10") == "max"
    assert metric_mode("val/recall_at_20") == "max"
    for metric in ("test/miscalibration_at_10", "time/fit_s", "time/s_per_epoch", "params/n_parameters",
                   "test/gini_at_10", "val/logloss"):
        assert metric_mode(metric) == "min", metric
    assert metric_mode("test/novelty_at_10") == metric_mode("test/coverage_at_20") == "max"


@pytest.mark.parametrize("method", ["score", "rrf", "borda", "vote"])
def test_ensemble_config_composes_for_every_method(method, tmp_path):
    from recforge.models.fusion import METHODS, NORMALIZATIONS, check_method

    cfg = compose_train(["runs=[a,b]", f"method={method}"], tmp_path, config_name="ensemble")
    assert method in METHODS and cfg.normalization in NORMALIZATIONS
    check_method(cfg.method, cfg.normalization)
    assert list(cfg.runs) == ["a", "b"] and cfg.tracking.run_name == f"ensemble-{method}"
    assert cfg.search in ("optuna", "grid", "none")


def test_sparse_adam_trains_sparse_and_mixed_models_and_torch_sparse_adam_refuses_dense(tiny_cfg):
    from recforge.errors import RecForgeError
    from recforge.train import train

    metrics = train(tiny_cfg("optimizer=sparse_adam", "model.sparse_grad=true", "optimizer.lr=0.01"))
    assert metrics["test/ndcg_at_10"] > 0
    # biased MF: sparse embeddings plus a dense global bias, both updated
    assert train(tiny_cfg("model=mf", "optimizer=sparse_adam", "model.sparse_grad=true"))["test/rmse"] > 0
    with pytest.raises(RecForgeError, match="optimizer=sparse_adam"):
        train(tiny_cfg("optimizer=sparse_adam", "optimizer._target_=torch.optim.SparseAdam", "~optimizer.weight_decay"))


def test_sparse_gradients_with_a_dense_only_optimizer_are_refused_before_training(tiny_cfg):
    from recforge.errors import RecForgeError
    from recforge.pipeline import build_experiment

    with pytest.raises(RecForgeError, match="optimizer=sparse_adam"):
        build_experiment(tiny_cfg("model.sparse_grad=true"))  # default optimizer: dense Adam


def test_fused_adam_conflicts_are_refused_before_any_data_is_read(tiny_cfg):
    from recforge.errors import RecForgeError
    from recforge.pipeline import check_config

    with pytest.raises(RecForgeError, match="Lightning cannot clip them; add optimizer.fused=null"):
        check_config(tiny_cfg("trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=1.0"))
    with pytest.raises(RecForgeError, match="foreach.*fix the optimizer"):
        check_config(tiny_cfg("+optimizer.foreach=true"))  # torch: fused and foreach cannot both be true
    check_config(tiny_cfg("trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=1.0", "optimizer.fused=null"))
    check_config(tiny_cfg("trainer.precision=bf16-true", "+trainer.gradient_clip_val=1.0"))  # no unscaling there


def test_resume_accepts_a_checkpoint_from_before_fused_adam_but_not_another_rate(tiny_cfg, tmp_path):
    from recforge.errors import RecForgeError
    from recforge.restore import check_resumable

    cfg = tiny_cfg()
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["optimizer"]["fused"]  # saved before optimizer.fused became a key: torch's unfused Adam
    path = tmp_path / "last.ckpt"
    torch.save({"recforge_config": OmegaConf.to_yaml(stored), "recforge_split_fingerprint": "f", "epoch": 2}, path)
    assert check_resumable(str(path), cfg, "f") == 3
    assert check_resumable(str(path), tiny_cfg("+optimizer.foreach=false"), "f") == 3
    with pytest.raises(RecForgeError, match=r"optimizer.lr \(0.001 -> 0.01\)"):
        check_resumable(str(path), tiny_cfg("optimizer.lr=0.01"), "f")
