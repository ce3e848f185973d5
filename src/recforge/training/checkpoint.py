"""Checkpoint files that survive a failed write, and the MLflow run each belongs to."""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import pytorch_lightning as pl
import torch
from fsspec.utils import get_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

try:   # newer Lightning records why early stopping stopped a run
    from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
    _FINAL_STOPS = {EarlyStoppingReason.NON_FINITE_METRIC, EarlyStoppingReason.STOPPING_THRESHOLD,
                    EarlyStoppingReason.DIVERGENCE_THRESHOLD}
except ImportError:
    _FINAL_STOPS = set()

from recforge.utils.io import atomic_path

RUN_ID_KEY = "recforge_run_id"
log = logging.getLogger("recforge")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint (``best.ckpt``, ``last.ckpt``, ``trainer.save_checkpoint``) to a temporary file in its
    own folder, flushes it to disk and renames it into place (:func:`recforge.utils.io.atomic_path`): a failed write
    (a full disk, a kill) leaves the previous checkpoint intact.

    Lightning's own writer writes in ``$TMPDIR`` and moves the file; from another file system the move is a copy that
    truncates the destination first, so a full disk left a truncated ``last.ckpt`` and no point to resume from.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":   # an object store replaces whole
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)   # in memory first: torch reports a failed file write without its cause
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())


class RunIdInCheckpoint(pl.Callback):
    """Stores the MLflow run id of the training run in every checkpoint, so a run resumed from one
    (``resume_from=``) is linked to the run it continues."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_ID_KEY] = getattr(trainer.logger, "run_id", None)


def stored_run_id(path: str) -> str | None:
    """The MLflow run id :class:`RunIdInCheckpoint` stored in the checkpoint ``path`` (None: untracked, or older)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(RUN_ID_KEY)


def moved_folder(trainer, checkpoint: dict) -> None:
    """A run folder moved or copied elsewhere (another disk, another machine) keeps the old folder in its
    checkpoints' callback states: Lightning then drops the best score (the first validation after resuming would
    count as the best) and tests the best checkpoint at its old path. When the run resumes from a checkpoint in the
    callback's folder and the checkpoints the state names are there too, the state is pointed there before
    Lightning reads it."""
    states = checkpoint.get("callbacks", {})
    resumed = os.path.dirname(os.path.realpath(trainer.ckpt_path)) if trainer.ckpt_path else None
    for callback in trainer.checkpoint_callbacks:
        state = states.get(callback.state_key)
        if not state or not callback.dirpath or state.get("dirpath") in (None, callback.dirpath):
            continue
        if resumed != os.path.realpath(callback.dirpath):
            continue   # resume_from another folder's checkpoint: train() warns about that case
        here = lambda path: os.path.join(callback.dirpath, os.path.basename(path))  # noqa: E731
        if not state.get("best_model_path") or not os.path.isfile(here(state["best_model_path"])):
            continue
        state["dirpath"] = callback.dirpath
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if state.get(key):
                state[key] = here(state[key])
        state["best_k_models"] = {here(path): score for path, score in state.get("best_k_models", {}).items()}


class CheckpointState(pl.Callback):
    """Puts the resolved config (so ``recforge-eval ckpt_path=...`` can rebuild the run), the split's fingerprint and
    the random generators' states into every checkpoint. Resuming from one (``resume_from=...``, checked by
    :func:`check_resumable`) restores the generators, so the resumed run draws the negatives an uninterrupted run
    would have drawn (in one process; under DDP the checkpoint holds rank 0's, from which every process draws its
    own stream again: :func:`distinct_streams`), and a run that had already stopped early trains no further
    (Lightning would train one more epoch before early stopping looked again): resuming a finished run goes straight
    to its test, or to its refit (``refit=true``), as does one it stopped for a reason no patience changes (a
    non-finite validation metric, a threshold). Early stopping's patience is the config's, not the checkpoint's
    (which Lightning restores), so a finished run resumed with a larger patience trains on as if it had had it. A
    run folder moved elsewhere resumes as it would have in place (:func:`moved_folder`)."""

    def __init__(self, config_yaml: str, fingerprint: str) -> None:
        self.config_yaml, self.fingerprint = config_yaml, fingerprint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["recforge_config"] = self.config_yaml
        checkpoint["recforge_split_fingerprint"] = self.fingerprint
        checkpoint["recforge_rng"] = {"cpu": torch.get_rng_state(),
                                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        moved_folder(trainer, checkpoint)
        rng = checkpoint.get("recforge_rng")
        if rng:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":   # before a resumed run restores the callbacks' states, patience among them
            self._patience = [stopper.patience for stopper in trainer.early_stopping_callbacks]

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            distinct_streams(trainer.global_rank)
        if trainer.ckpt_path is None:   # a fresh run
            return
        for stopper, patience in zip(trainer.early_stopping_callbacks, self._patience):
            if stopper.patience != patience:   # a setting, not state: the config's wins, so a stopped run can go on
                log.info("resume_from: early stopping's patience is %d validations (the checkpoint's run had %d)",
                         patience, stopper.patience)
                stopper.patience = patience
            if stopper.wait_count >= max(stopper.patience, 1):   # patience 0: stopped at a validation without gain
                log.info("resume_from: the run had stopped early at epoch %d (no better %s in its last %d validations); "
                         "nothing left to train", trainer.current_epoch, stopper.monitor, stopper.wait_count)
                trainer.should_stop = True
            elif getattr(stopper, "stopping_reason", None) in _FINAL_STOPS:   # a non-finite metric, a threshold
                log.info("resume_from: the run had stopped at epoch %d (%s); nothing left to train",
                         trainer.current_epoch, stopper.stopping_reason_message)
                trainer.should_stop = True


def distinct_streams(rank: int) -> None:
    """Give each DDP process its own random stream: every process starts from the run's one seed (a resumed run
    from rank 0's saved generators), so each would otherwise draw the same negatives, shared negative sets and
    dropout masks as the others for its own batch. Each reseeds from one draw of that common stream plus its
    rank: reproducible for a seed, and distinct between processes. Batch order has its own generator
    (:class:`recforge.data.batches.ShuffledBatches`) and stays common."""
    torch.manual_seed(int(torch.randint(2**62, ())) + rank)
