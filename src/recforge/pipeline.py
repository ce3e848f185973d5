"""Builds an experiment from a composed config; shared by ``train`` and ``eval``.

Hydra/OmegaConf stay at this level: everything below receives explicit arguments.
"""

from __future__ import annotations

import inspect
import logging
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from recforge.config import build, build_model, check_target, option_names, resolve_target
from recforge.data.datamodule import RecDataModule
from recforge.data.features import category_matrix
from recforge.data.split import ColdItemSplit, KFoldSplit, RandomSplit
from recforge.errors import RecForgeError
from recforge.metrics.beyond import (ITEM_GROUPS, ListContext, history_distribution, popularity_groups, slice_labels,
                                     unit_rows, user_slices)
from recforge.metrics.names import SAMPLED_SEED
from recforge.metrics.rating import per_user_error_metrics
from recforge.models.base import Recommender
from recforge.training.module import RecommenderModule, metric_names, train_view
from recforge.utils.io import atomic_path

log = logging.getLogger("recforge")


@dataclass
class Experiment:
    datamodule: RecDataModule
    model: Recommender
    module: RecommenderModule
    feedback: str


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before any data is read, on mistakes a user can fix."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise RecForgeError(f"missing required value {', '.join(missing)}: set it on the command line, "
                            f"e.g. {missing[0]}=<value>")
    for key in ("data", "split", "loss", "model", "optimizer", "sampler", "datamodule"):
        fixed = {"datamodule": ("source", "splitter", "feedback"),
                 "sampler": ("n_items", "positive_keys", "item_counts")}.get(key, ())
        check_target(cfg, key, fixed=fixed)
    if cfg.get("scheduler"):
        check_target(cfg, "scheduler")
    for name, node in (cfg.get("callbacks") or {}).items():
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            raise RecForgeError(f"callbacks.{name} is set ({node}) but names no callback class (no _target_): the "
                                f"chosen callbacks option does not define it; drop it with ~callbacks.{name}, or "
                                "use callbacks=default")
    for key, value in cfg.optimizer.items():
        if key in ("lr", "weight_decay", "momentum", "eps") and isinstance(value, (int, float)) and value < 0:
            raise RecForgeError(f"optimizer.{key}={value} must not be negative; e.g. optimizer.{key}=0.001")
    try:
        build(cfg, "optimizer")([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. fused=true with foreach=true
        raise RecForgeError(f"optimizer ({cfg.optimizer._target_}): {exc}; fix the optimizer.* overrides") from None
    precision = str(cfg.trainer.get("precision", "32"))
    mixed = precision.endswith("-mixed") or precision in ("16", "bf16")  # Lightning's MixedPrecision plugin
    if cfg.optimizer.get("fused") and mixed and (cfg.trainer.get("gradient_clip_val") or 0) > 0:
        raise RecForgeError(f"trainer.gradient_clip_val with trainer.precision={cfg.trainer.precision}: a fused "
                            "optimizer unscales its own gradients, so Lightning cannot clip them; add "
                            "optimizer.fused=null (torch's unfused Adam) or drop the clipping")
    ks = list(cfg.eval.ks)
    if not ks or any((not isinstance(k, int)) or k < 1 for k in ks):
        raise RecForgeError(f"eval.ks must be a list of positive integers, got {ks}")
    for key, example in INTEGER_KEYS.items():
        config_integer(cfg, key, example)
    if cfg.trainer.get("max_epochs") is not None and cfg.trainer.max_epochs < 0:
        raise RecForgeError("trainer.max_epochs must be >= 0")
    check_model_sizes(cfg)
    check_context_model(cfg)
    warn_random_split_of_histories(cfg)


# integer settings (and an example of each) that would otherwise end in a traceback deep inside a library
INTEGER_KEYS = {"seed": 42, "trainer.max_epochs": 15, "datamodule.batch_size": 1024,
                "datamodule.eval_batch_size": 65536}
# model arguments that are sizes (besides every ``*_dim`` and lists of layer widths); 0 leaves a model without weights
MODEL_SIZES = ("factors", "channels", "n_heads", "max_len", "max_history")


def config_integer(cfg: DictConfig, key: str, example: int) -> int | None:
    """The integer at the dotted ``key`` of ``cfg`` (None when unset); anything else stops with the key and type."""
    value = OmegaConf.select(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecForgeError(f"{key}={value!r} must be an integer, e.g. {key}={example}")
    return value


def check_model_sizes(cfg: DictConfig) -> None:
    """Refuse a model size (``model.embedding_dim``, ``model.hidden_dims``, ...) that is not a positive integer."""
    params = inspect.signature(resolve_target(cfg.model._target_)).parameters
    for key, value in cfg.model.items():
        is_list = OmegaConf.is_list(value)
        if is_list and key.endswith(("layers", "_dims")):
            sizes = list(value)
        elif key.endswith("_dim") or key in MODEL_SIZES:
            sizes = [value]
        else:
            continue
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            continue
        default = params[key].default if key in params else None
        example = default if default and default is not inspect.Parameter.empty else ([64] if is_list else 64)
        if is_list:
            value, example = (f"[{','.join(map(str, v))}]" for v in (value, example))
        raise RecForgeError(f"model.{key}={value} must be {'positive integers' if is_list else 'a positive integer'}: "
                            f"a size of the model (0 trains a model without weights); e.g. model.{key}={example}")


# the model options that read the interaction's context (data.context_columns) on the user's side
CONTEXT_MODELS = ("fm", "deepfm", "dcnv2", "widedeep", "autoint", "din")


def check_context_model(cfg: DictConfig) -> None:
    """``data.context_columns`` with a model that does not read the interaction's context is refused before any
    data is read (its constructor takes no ``n_context``)."""
    if not cfg.data.get("context_columns"):
        return
    model_cls = resolve_target(cfg.model._target_)
    if "n_context" in inspect.signature(model_cls).parameters:
        return
    name = option_names(cfg, ("model",)).get("model", model_cls.__name__)
    raise RecForgeError(f"data.context_columns is set, but model={name} does not read the interaction's context; "
                        f"use model={', '.join(CONTEXT_MODELS)} (with model.use_features=true), or drop it with "
                        "data.context_columns=null (docs/features.md)")


def warn_random_split_of_histories(cfg: DictConfig) -> None:
    """A sequential model learns to predict a user's next item; a random split (and an item cold-start split, whose
    held-out items a user met anywhere in time) tests it on items from anywhere in the history, some before items it
    trained on. A warning, not an error: it runs, and some studies do this."""
    model_cls, split_cls = resolve_target(cfg.model._target_), resolve_target(cfg.split._target_)
    random_split = inspect.isclass(split_cls) and issubclass(split_cls, (RandomSplit, KFoldSplit, ColdItemSplit))
    if getattr(model_cls, "train_view", None) == "sequences" and random_split:
        log.warning("model %s learns each user's history in time order, but split %s holds out interactions from "
                    "anywhere in a history (it tests on items from before those it trained on); use "
                    "split=leave_one_out to hold out each user's latest item", model_cls.__name__, split_cls.__name__)


def check_data_config(cfg: DictConfig, datamodule: RecDataModule, feedback: str) -> None:
    """The checks of :func:`check_config` that need the data: a ranking cut-off above the catalogue size is
    refused, not clamped, since a metric logged as ``*_at_20`` but cut at fewer items (and a monitor naming it)
    would not mean what its name says."""
    n_items, ks = datamodule.n_items, list(cfg.eval.ks)
    if feedback == "implicit" and max(ks) > n_items:
        fitting = [k for k in ks if k <= n_items] or [min(10, n_items)]
        raise RecForgeError(f"eval.ks={ks}: {max(ks)} is above the catalogue size ({n_items} items), where every item "
                            f"is in the top-K and a metric at K is not what its name says; use cut-offs up to "
                            f"{n_items}, e.g. eval.ks=[{','.join(map(str, fitting))}]")


def sampled_kwargs(cfg: DictConfig) -> dict:
    """The module's sampled-protocol arguments from ``eval.sampled`` (null: full ranking only)."""
    node = cfg.eval.get("sampled")
    if node is None:
        return {"sampled_negatives": None, "sampled_strategy": "uniform", "sampled_seed": SAMPLED_SEED}
    unknown = sorted(set(node) - {"n_negatives", "strategy", "seed"})
    if unknown:
        raise RecForgeError(f"eval.sampled.{unknown[0]} is not a key of eval.sampled; valid keys: "
                            "n_negatives, strategy, seed (e.g. eval.sampled={n_negatives:99,strategy:uniform})")
    return {"sampled_negatives": node.get("n_negatives", 99), "sampled_strategy": node.get("strategy", "uniform"),
            "sampled_seed": node.get("seed", SAMPLED_SEED)}


# the model options that score unseen ids from their features (the cold-start refusal names them): unseen users and
# items, and unseen items only (a sequential model's user is its history)
FEATURE_MODELS = ("fm", "deepfm", "dcnv2", "widedeep", "autoint", "din", "twotower")
ITEM_FEATURE_MODELS = ("sasrecf",)


def check_cold_start(cfg: DictConfig, datamodule: RecDataModule, model: Recommender) -> None:
    """A cold-start split (``split=cold_items`` / ``cold_users``) evaluates ids never seen in training: refuse, before
    training, a model that scores them by their ids alone."""
    kind = datamodule.split.meta.get("kind")
    if kind not in ("cold_items", "cold_users"):
        return
    side = "items" if kind == "cold_items" else "users"
    if model.scores_unseen(side):
        return
    name = option_names(cfg, ("model",)).get("model", type(model).__name__)
    features = datamodule.feature_tensors().get(f"{side[:-1]}_features")
    models = FEATURE_MODELS + (ITEM_FEATURE_MODELS if side == "items" else ())
    data = (f"data {datamodule.raw.name} has no {side[:-1]} features, so only model=pop (the reference) runs"
            if features is None else f"use a model that scores them from their {side[:-1]} features (with "
                                     f"model.use_features=true): model={', '.join(models)}; or model=pop (the "
                                     f"reference)")
    raise RecForgeError(f"split={kind}: model={name} scores {side} by their ids only and cannot score {side} it "
                        f"never trained on; {data} (docs/features.md)")


def pointwise_settings(cfg: DictConfig) -> dict | None:
    """``eval.pointwise*``: the labelled pairs of the point-wise metrics (``negatives``, ``seed``, ``threshold``),
    or None when ``eval.pointwise`` is false (the default)."""
    node = cfg.eval
    if not node.get("pointwise", False):
        return None
    if node.get("pointwise") is not True:
        raise RecForgeError(f"eval.pointwise={node.get('pointwise')!r} must be true or false")
    threshold = node.get("pointwise_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise RecForgeError(f"eval.pointwise_threshold={threshold!r} must be a number (e.g. 4) or null")
    return {"negatives": node.get("pointwise_negatives", 1), "seed": config_integer(cfg, "eval.pointwise_seed", 0) or 0,
            "threshold": threshold}


def build_datamodule(cfg: DictConfig, feedback: str) -> RecDataModule:
    """The data of ``cfg`` (source, preprocessing, split), set up for ``feedback`` (``explicit``/``implicit``)."""
    datamodule = build(cfg, "datamodule", source=build(cfg, "data"), splitter=build(cfg, "split"), feedback=feedback)
    datamodule.setup()
    return datamodule


def build_experiment(cfg: DictConfig) -> Experiment:
    check_config(cfg)
    loss = build(cfg, "loss")
    model_cls = resolve_target(cfg.model._target_)
    if loss.feedback not in model_cls.feedbacks:
        raise RecForgeError(
            f"model {cfg.model._target_.rsplit('.', 1)[-1]} learns from {'/'.join(model_cls.feedbacks)} feedback "
            f"but loss {cfg.loss._target_.rsplit('.', 1)[-1]} is for {loss.feedback} feedback; "
            f"pick a matching loss (e.g. loss={'bpr' if 'implicit' in model_cls.feedbacks else 'mse'})"
        )
    sampled = sampled_kwargs(cfg)
    pointwise = pointwise_settings(cfg)
    valid = metric_names(loss.feedback, cfg.eval.ks, "val", sampled["sampled_negatives"], sampled["sampled_strategy"],
                         pointwise is not None, loss.logits)
    if cfg.monitor not in valid:
        raise RecForgeError(f"monitor={cfg.monitor} is not logged with loss={cfg.loss._target_.rsplit('.', 1)[-1]}; "
                            f"valid names: {', '.join(valid)}")
    if pointwise is not None and loss.feedback == "explicit" and pointwise["threshold"] is None:
        raise RecForgeError("eval.pointwise=true with a rating model labels its rated pairs by a threshold: set "
                            "eval.pointwise_threshold (ratings >= it are positives, on the original scale), e.g. 4")
    datamodule = build_datamodule(cfg, loss.feedback)
    check_data_config(cfg, datamodule, loss.feedback)
    if pointwise is not None and loss.feedback == "implicit":
        datamodule.add_pointwise_pairs(**pointwise)
    data_kwargs = datamodule.model_kwargs(inspect.signature(model_cls).parameters)
    model = build_model(cfg, data_kwargs)
    if cfg.get("export") is not None and cfg.export.get("ann_index") and \
            type(model).retrieval_items is Recommender.retrieval_items:
        from recforge.retrieval.ann import retrieval_items

        retrieval_items(model)  # not a dot-product model: the one-line refusal, before training
    check_cold_start(cfg, datamodule, model)
    datamodule.train_view = train_view(model, loss)
    check_sparse_optimizer(cfg, model)
    sampler = None
    if loss.feedback == "implicit" and model.requires_training:
        sampler = build_sampler(cfg, loss, datamodule, data_kwargs["item_popularity"])
        if datamodule.split.meta.get("kind") == "cold_items" and hasattr(sampler, "restrict_to"):
            sampler.restrict_to(torch.nonzero(data_kwargs["item_popularity"] > 0).squeeze(1))
    histories = None
    if model.reads_histories:  # each stage's inputs: train (+ fold-in) at val, + val at test
        histories = {stage: datamodule.histories(stage) for stage in ("val", "test")}
    context = list_context(cfg, datamodule, model) if loss.feedback == "implicit" else None
    reranker = build_reranker(cfg, context, datamodule.raw.name, cfg.model._target_) if context else None
    module = RecommenderModule(
        model=model,
        histories=histories,
        loss=loss,
        optimizer=build(cfg, "optimizer"),
        scheduler=build(cfg, "scheduler") if cfg.get("scheduler") else None,
        scheduler_monitor=cfg.monitor,
        sampler=sampler,
        ks=list(cfg.eval.ks),
        rating_range=datamodule.raw.rating_range,
        clip_predictions=cfg.eval.clip_predictions,
        item_popularity=data_kwargs["item_popularity"],
        n_train_users=datamodule.n_train_users,
        rating_inverse=datamodule.inverse_ratings if datamodule.rating_inverse != (1.0, 0.0) else None,
        beyond=context if cfg.eval.get("beyond") is not None else None,
        reranker=reranker,
        item_vectors_from_model=context is not None and context.vectors_from == "model",
        ann=build_ann(cfg),
        logits=loss.logits,
        rating_threshold=pointwise["threshold"] if pointwise is not None and loss.feedback == "explicit" else None,
        **sampled,
    )
    return Experiment(datamodule, model, module, loss.feedback)


BEYOND_KEYS = {"activity_quantiles": [0.25, 0.5, 0.75], "activity_cuts": None, "profile_quantiles": [0.2, 0.8],
               "item_shares": [0.2, 0.8], "psrecall_gamma": 0.5, "calibration_alpha": 0.01}


def list_context(cfg: DictConfig, datamodule: RecDataModule, model: Recommender | None = None) -> ListContext:
    """The slices and list-metric data of the split (:class:`~recforge.metrics.beyond.ListContext`) from
    ``eval.beyond`` (its defaults when null: a re-ranker needs the item groups too). Item vectors come from the
    item features when the data has them, else from ``model.item_vectors()`` (refreshed after training),
    else there are none; categories from ``genre_*`` item features."""
    node = cfg.eval.get("beyond")
    settings = dict(BEYOND_KEYS)
    if node is not None:
        unknown = sorted(set(node) - set(BEYOND_KEYS))
        if unknown:
            raise RecForgeError(f"eval.beyond.{unknown[0]} is not a key of eval.beyond; valid keys: "
                                f"{', '.join(BEYOND_KEYS)}")
        settings.update(OmegaConf.to_container(node, resolve=True))
    history = datamodule.train_matrix if datamodule.fold_in_matrix is None else \
        datamodule.train_matrix + datamodule.fold_in_matrix
    history = history.tocoo()
    users, items = torch.as_tensor(history.row, dtype=torch.long), torch.as_tensor(history.col, dtype=torch.long)
    popularity = datamodule.model_kwargs(())["item_popularity"].float()
    try:
        groups = popularity_groups(popularity, settings["item_shares"])
        slices = user_slices(users, items, datamodule.n_users, popularity, settings["activity_quantiles"],
                             settings["activity_cuts"], settings["profile_quantiles"])
    except ValueError as exc:
        raise RecForgeError(f"eval.beyond: {exc}; e.g. eval.beyond.activity_cuts=[30,60,120]") from None
    features = datamodule.feature_tensors().get("item_features")
    vectors, source = (features, "item_features") if features is not None else (None, "none")
    if vectors is None and model is not None and model.item_vectors() is not None:
        vectors, source = model.item_vectors(), "model"
    categories = category_matrix(datamodule.item_features)
    profiles = None if categories is None else history_distribution(users, categories[items], datamodule.n_users)
    one_hot = torch.nn.functional.one_hot(groups[items], len(ITEM_GROUPS))
    shares = history_distribution(users, one_hot, datamodule.n_users)
    return ListContext(popularity, groups, slices, None if vectors is None else unit_rows(vectors), categories,
                       profiles, shares, float(settings["psrecall_gamma"]), float(settings["calibration_alpha"]),
                       source)


def build_ann(cfg: DictConfig):
    """The ANN index (``ann``, not yet built) when ``eval.retrieval=ann``, else ``None`` (exact ranking)."""
    retrieval = cfg.eval.get("retrieval", "exact")
    if retrieval not in ("exact", "ann"):
        raise RecForgeError(f"eval.retrieval={retrieval} is not a retrieval; use exact or ann "
                            f"(with ann=hnsw|ivf|ivfpq|flat)")
    if retrieval == "exact":
        return None
    if cfg.get("ann") is None:
        raise RecForgeError("eval.retrieval=ann needs an index: add ann=hnsw (or ivf, flat)")
    return build(cfg, "ann")


def build_reranker(cfg: DictConfig, context: ListContext, data_name: str, model_target: str):
    """The re-ranker ``cfg.rerank`` names (None for ``rerank=none``), given the data its constructor asks for:
    ``item_vectors``, ``item_categories`` and ``user_categories``, ``item_groups`` and ``user_group_shares``,
    ``protected`` (the tail items)."""
    if not cfg.get("rerank"):
        return None
    data = {"item_vectors": context.item_vectors, "item_categories": context.item_categories,
            "user_categories": context.user_categories, "item_groups": context.item_groups,
            "user_group_shares": context.user_group_shares, "protected": context.item_groups == len(ITEM_GROUPS) - 1}
    check_target(cfg, "rerank", fixed=tuple(data))
    params = inspect.signature(resolve_target(cfg.rerank._target_)).parameters
    missing = [k for k in params if k in data and data[k] is None]
    if missing:
        model = model_target.rsplit(".", 1)[-1]
        need = {"item_vectors": f"item vectors: data {data_name} has no item features and model {model} no item "
                                "vectors; use a model with item vectors (e.g. model=bpr, ials, lightgcn)",
                "item_categories": f"genres: data {data_name} has no genre_* item features"}
        reason = need.get(missing[0], need["item_categories"])
        raise RecForgeError(f"rerank={option_names(cfg, ('rerank',)).get('rerank', 'rerank')} needs {reason}; or "
                            "pick another re-ranker (rerank=xquad or rerank=fair need only the training data)")
    return build(cfg, "rerank", **{k: v for k, v in data.items() if k in params})


def build_sampler(cfg: DictConfig, loss: torch.nn.Module, datamodule: RecDataModule, item_counts: torch.Tensor):
    """The negative sampler ``cfg.sampler`` names, checked against the loss's ``num_negatives``."""
    n, in_batch = loss.num_negatives, cfg.sampler._target_.endswith("InBatchSampler")
    if n and not in_batch and n >= datamodule.n_items:
        raise RecForgeError(f"loss.num_negatives={n} asks for more negatives than the {datamodule.n_items} items "
                            f"minus a positive; set loss.num_negatives={max(1, datamodule.n_items // 2)} or fewer")
    if n and in_batch and n >= cfg.datamodule.batch_size:
        raise RecForgeError(f"sampler=in_batch draws loss.num_negatives={n} from the batch's other positives, but "
                            f"datamodule.batch_size={cfg.datamodule.batch_size}; set loss.num_negatives="
                            f"{cfg.datamodule.batch_size - 1} or a larger batch")
    if in_batch and loss.logq_correction and datamodule.sample_users_uniformly:
        raise RecForgeError("sampler=in_batch with loss.logq_correction=true subtracts each item's share of the "
                            "training positives, but datamodule.sample_users_uniformly=true puts items in batches "
                            "by their users' sizes instead; set datamodule.sample_users_uniformly=false or "
                            "loss.logq_correction=false")
    return build(cfg, "sampler", n_items=datamodule.n_items, positive_keys=datamodule.positive_keys(),
                 item_counts=item_counts)


SPARSE_OPTIMIZERS = ("recforge.training.optim.LazyAdam", "torch.optim.SparseAdam", "torch.optim.SGD",
                     "torch.optim.Adagrad")


def check_sparse_optimizer(cfg: DictConfig, model: torch.nn.Module) -> None:
    """Sparse embedding gradients need an optimizer that takes them, and ``torch.optim.SparseAdam`` needs
    nothing else (``optimizer=sparse_adam``, RecForge's LazyAdam, handles both)."""
    if not model.requires_training:
        return
    target = str(cfg.optimizer._target_)
    sparse = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse}
    if sparse and target not in SPARSE_OPTIMIZERS:
        raise RecForgeError(f"model.sparse_grad=true gives sparse gradients, which {target} cannot apply: use "
                            "optimizer=sparse_adam (or sgd/adagrad), or model.sparse_grad=false")
    dense = [name for name, p in model.named_parameters() if id(p) not in sparse]
    if target == "torch.optim.SparseAdam" and dense:
        raise RecForgeError(f"torch.optim.SparseAdam needs sparse gradients for every parameter, but "
                            f"{', '.join(dense[:3])} get dense ones: use optimizer=sparse_adam (lazy Adam, mixes both) "
                            "or set model.sparse_grad=true and model.use_bias=false")


def model_spec(cfg: DictConfig, datamodule: RecDataModule) -> tuple[str, dict]:
    """The model's import path and the constructor arguments a served copy is built with: those of training,
    except that a model reading user histories (row and sequential models) gets every known interaction as its
    history (``interactions`` / ``sequences``), so that it recommends from the user's latest items."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    target = kwargs.pop("_target_")
    cls = resolve_target(target)
    params = inspect.signature(cls).parameters
    data = datamodule.model_kwargs(params)
    if cls.reads_histories:
        data["interactions"] = data["sequences"] = datamodule.known_sequences()
    kwargs.update({k: v for k, v in data.items() if k in params})
    return target, kwargs


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def per_user_frame(module: RecommenderModule, datamodule: RecDataModule) -> pd.DataFrame:
    """Per-user test metrics with raw user ids (ranking metrics, or RMSE/MAE per user)."""
    results = module.test_results or {}
    if not results:
        return pd.DataFrame()
    if module.feedback == "explicit":
        stats = per_user_error_metrics(results["users"], results["errors"].double(), datamodule.n_users)
        present = (stats["n"] > 0).numpy()
        return pd.DataFrame({"user": datamodule.id_maps.users[present], "rmse": stats["rmse"].numpy()[present],
                             "mae": stats["mae"].numpy()[present], "n_test": stats["n"].numpy()[present]})
    return ranking_results_frame(results, datamodule.id_maps.users, module.test_evaluator.beyond)


def ranking_results_frame(results: dict, user_ids: np.ndarray, context: ListContext | None = None) -> pd.DataFrame:
    """Per-user ranking metrics (an evaluator's aggregated per-user results) with raw user ids, and with a
    ``context`` each user's slices (``slice_activity``, ``slice_profile``; see
    :func:`recforge.metrics.beyond.slice_labels`)."""
    from recforge.metrics.evaluator import NON_METRIC_KEYS, PAIR_KEYS

    columns = {k: v.cpu().numpy() for k, v in results.items() if k not in NON_METRIC_KEYS + PAIR_KEYS}
    labels = slice_labels(context, results["users"]) if context is not None else {}
    return pd.DataFrame({"user": user_ids[results["users"].cpu().numpy()], **labels, **columns})


def recommendations_frame(module: RecommenderModule, datamodule: RecDataModule) -> pd.DataFrame:
    results = module.test_results or {}
    if "topk" not in results:
        return pd.DataFrame(columns=["user", "item", "rank", "score"])
    topk, scores, valid = results["topk"].numpy(), results["scores"].numpy(), results["valid"].numpy()
    users = np.repeat(results["users"].numpy(), topk.shape[1])
    ranks = np.tile(np.arange(1, topk.shape[1] + 1), len(topk))
    keep = valid.ravel()
    return pd.DataFrame({
        "user": datamodule.id_maps.users[users[keep]],
        "item": datamodule.id_maps.items[topk.ravel()[keep]],
        "rank": ranks[keep],
        "score": scores.ravel()[keep],
    })


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def split_frames(datamodule: RecDataModule) -> dict[str, pd.DataFrame]:
    """The split's parts (and a strong-generalisation split's ``fold_in``, the held-out users' input) with raw ids
    and ratings on the file's scale (a ``NormalizeRatings`` step undone): what the run trained and evaluated on."""
    ids, split = datamodule.id_maps, datamodule.split
    scale, offset = datamodule.rating_inverse
    parts = {"train": split.train, "val": split.val, "test": split.test}
    if split.fold_in is not None:
        parts["fold_in"] = split.fold_in
    return {name: pd.DataFrame({"user": ids.users[part["user"].to_numpy()], "item": ids.items[part["item"].to_numpy()],
                                "rating": part["rating"].to_numpy() * np.float32(scale) + np.float32(offset),
                                "timestamp": part["timestamp"].to_numpy()})
            for name, part in parts.items()}


def finite(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        value = float(v)
        out[k] = value if math.isfinite(value) else float("nan")
    return out
