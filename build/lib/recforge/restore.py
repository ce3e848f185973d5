"""Rebuilding a run from one of its checkpoints: continuing its training (``resume_from=``, checked by
:func:`check_resumable`) or reloading the trained experiment to evaluate or serve it (:func:`load_checkpoint`).

A checkpoint stores the run's resolved config (:class:`recforge.training.checkpoint.CheckpointState`); every class
it names is checked against the allow-list (:mod:`recforge.utils.trust`) before anything is built from it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from recforge.config import OmegaConfBaseException
from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment
from recforge.utils.trust import require_trusted_config

# settings that choose how the same update is computed (torch's kernels), not what it is: a run may resume under
# others (optimizer states load across them), e.g. a checkpoint from before optimizer.fused became the default
HOW_NOT_WHAT = {("optimizer", "fused"), ("optimizer", "foreach")}


def check_resumable(path: str, cfg: DictConfig, fingerprint: str) -> int:
    """Refuse, before training, to resume from a checkpoint of another split, model, loss, optimizer or schedule
    (the checkpoint's optimizer and schedule states would win silently). Returns the epochs it had trained."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated or foreign file
        raise RecForgeError(f"resume_from={path}: cannot be read as a checkpoint "
                            f"({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict) or "recforge_config" not in checkpoint:
        raise RecForgeError(f"resume_from={path}: not a RecForge checkpoint (no stored config)")
    stored = checkpoint.get("recforge_split_fingerprint")
    if stored != fingerprint:
        raise RecForgeError(f"resume_from={path}: the checkpoint was trained on split {stored}, but this config gives "
                            f"split {fingerprint}; resume with the data and split overrides of the stopped run")
    stored = OmegaConf.create(checkpoint["recforge_config"])
    for group in ("model", "loss", "optimizer", "scheduler"):
        before = OmegaConf.to_container(stored[group]) if stored.get(group) else {}
        now = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) else {}
        changed = sorted(k for k in before.keys() | now.keys()
                         if before.get(k) != now.get(k) and (group, k) not in HOW_NOT_WHAT)
        if changed:
            raise RecForgeError(f"resume_from={path}: the {group} config differs from the stopped run's in "
                                + ", ".join(f"{group}.{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed)
                                + "; resume with the stopped run's overrides")
    return int(checkpoint.get("epoch", -1)) + 1


def checkpoint_config(checkpoint: dict, where: str, data_dir: str | None = None,
                      max_scores_in_memory: int | None = None) -> DictConfig:
    """The training config stored in a RecForge checkpoint, pointed at ``data_dir`` and an evaluation chunk
    budget if given (neither changes the split)."""
    if "recforge_config" not in checkpoint:
        raise RecForgeError(f"{where}: not a RecForge checkpoint (no stored config)")
    try:
        cfg = OmegaConf.create(checkpoint["recforge_config"])
        require_trusted_config(OmegaConf.to_container(cfg, resolve=True), f"{where} (its stored config)")
    except OmegaConfBaseException as exc:
        raise RecForgeError(f"{where}: its stored config cannot be read ({str(exc).splitlines()[0]})") from None
    if data_dir and "data_dir" in cfg.data:
        cfg.data.data_dir = data_dir
    if max_scores_in_memory:
        cfg.datamodule.max_scores_in_memory = int(max_scores_in_memory)
    return cfg


def load_checkpoint(path: str | Path, data_dir: str | None = None, max_scores_in_memory: int | None = None):
    """The experiment (data, model with the checkpoint's weights, module) a RecForge checkpoint was trained in,
    rebuilt from its stored config; refused if the data no longer gives the same split."""
    path = Path(path)
    if not path.is_file():
        raise RecForgeError(f"ckpt_path={path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a checkpoint at all
        raise RecForgeError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise RecForgeError(f"{path}: not a RecForge checkpoint")
    exp = build_experiment(checkpoint_config(checkpoint, str(path), data_dir, max_scores_in_memory))
    if exp.datamodule.fingerprint != checkpoint.get("recforge_split_fingerprint"):
        raise RecForgeError(
            f"{path}: the data now gives split {exp.datamodule.fingerprint}, but the model was trained on "
            f"{checkpoint.get('recforge_split_fingerprint')}; the raw data or the split code changed"
        )
    exp.module.load_state_dict(checkpoint["state_dict"])
    return exp
