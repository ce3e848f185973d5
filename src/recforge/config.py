"""The one place below the entry points that knows Hydra/OmegaConf: composing, checking, instantiating."""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from recforge import CONFIG_DIR as PACKAGE_CONFIG_DIR
from recforge.errors import RecForgeError
from recforge.metrics.names import metric_mode

CONFIG_DIR = str(PACKAGE_CONFIG_DIR)

if not OmegaConf.has_resolver("metric_mode"):
    OmegaConf.register_new_resolver("metric_mode", metric_mode)


def resolve_target(target: str):
    module, _, name = target.rpartition(".")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError):
        return None


def check_target(cfg: DictConfig, key: str, fixed: tuple[str, ...] = ()) -> None:
    """Fail with a one-line message when ``cfg[key]`` names a missing class or passes unknown arguments."""
    node = cfg.get(key)
    if node is None or "_target_" not in node:
        raise RecForgeError(f"config key '{key}' is missing or has no _target_; pick an option, e.g. {key}=<name>")
    target = resolve_target(node._target_)
    if target is None:
        raise RecForgeError(f"{key}._target_: cannot import {node._target_!r}")
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in node:
        if name.startswith("_"):
            continue
        if name not in params or name in fixed:
            valid = sorted(p for p in params if p not in fixed and p != "self")
            raise RecForgeError(f"{key}.{name} is not an argument of {node._target_}; valid keys: {valid}")


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(cfg[key], **kwargs)`` with user mistakes turned into :class:`RecForgeError`."""
    try:
        return instantiate(cfg[key], **kwargs)
    except MissingMandatoryValue as exc:
        raise RecForgeError(f"missing required value {exc.full_key!r}: set it with {exc.full_key}=<value>") from None
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, RecForgeError):
            raise cause from None
        raise RecForgeError(f"{key}: {cause or exc}") from None


def build_model(cfg: DictConfig, data_kwargs: dict[str, Any]):
    """Instantiate ``cfg.model``, passing the data-dependent arguments its constructor accepts."""
    target = resolve_target(cfg.model._target_)
    params = inspect.signature(target).parameters
    given = {k: v for k, v in data_kwargs.items() if k in params}
    try:
        return instantiate(cfg.model, **given)
    except InstantiationException as exc:
        raise RecForgeError(f"model: {exc.__cause__ or exc}") from None


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


MAIN_GROUPS = ("model", "data", "split", "loss", "sampler", "optimizer", "scheduler", "rerank")
INFRA_TARGETS = ("datamodule", "trainer", "tracking", "callbacks")   # the same class in every run: no param


def option_names(cfg: DictConfig, groups: tuple[str, ...] = MAIN_GROUPS) -> dict[str, str]:
    """The option each config group was composed from (``{"model": "bpr", ...}``): Hydra's record of the command
    line's choices, else the option file whose values the group has (configs composed in code), else the class."""
    from hydra.core.hydra_config import HydraConfig

    from recforge.utils.options import matching_option

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    flat = {k: str(v) for k, v in _flat_items(OmegaConf.to_container(cfg, resolve=True), "")}
    out = {}
    for group in groups:
        node = cfg.get(group)
        if node is None:
            continue
        if OmegaConf.is_dict(node) and not node:  # an option file that is null (rerank=none)
            out[group] = str(choices.get(group) or "none")
            continue
        name = choices.get(group) or matching_option(group, flat)
        out[group] = str(name or (node.get("_target_", group).rsplit(".", 1)[-1] if OmegaConf.is_dict(node) else group))
    return out


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as MLflow params a person can read: ``{"model": "bpr", "model.embedding_dim": "64",
    "datamodule.preprocess": "DropMissing, Deduplicate(keep=last)", ...}``. Each main group's option name is a param
    of its own; the classes every run shares (data module, trainer, tracker, callbacks) and ``_partial_`` flags are
    left out; values are cut at MLflow's 250 characters (the full YAML is logged beside them)."""
    out = dict(option_names(cfg))
    for key, value in _flat_items(OmegaConf.to_container(cfg, resolve=True), ""):
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "_partial_" or (leaf == "_target_" and key.split(".", 1)[0] in INFRA_TARGETS):
            continue
        out[key] = value[:250]
    return out


def _flat_items(node: Any, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flat_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list) and any(isinstance(v, dict) for v in node):
        yield prefix, ", ".join(_readable(v) for v in node)
    else:
        yield prefix, str(node)


def _readable(node: Any) -> str:
    """``{"_target_": "recforge.data.preprocess.KCore", "user_k": 5}`` -> ``KCore(user_k=5)``."""
    if not isinstance(node, dict):
        return str(node)
    name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
    return f"{name}({args})" if args else name


__all__ = ["CONFIG_DIR", "OmegaConfBaseException", "build", "build_model", "check_target", "flatten", "option_names",
           "to_yaml"]
