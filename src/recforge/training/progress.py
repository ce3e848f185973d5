"""Training you can watch: one concise line per epoch (the monitored metric, the best so far, the epoch's train
loss and seconds), for logs and terminals alike; on a terminal Lightning's progress bar runs beside it."""

from __future__ import annotations

import logging
import math
import time

import pytorch_lightning as pl

log = logging.getLogger("recforge")


class EpochLines(pl.Callback):
    """Logs ``epoch 3/300  train/loss 0.4123  val/ndcg_at_10 0.2113 (best 0.2113 at 3)  1.2 s`` after each training
    epoch (its validation has run by then), and keeps the best value of ``monitor`` and its epoch (1-based) for the
    end-of-run summary."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        parts = [f"epoch {epoch}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0
                 else f"epoch {epoch}"]
        loss = pl_module.epoch_loss()
        if loss is not None:
            parts.append(f"train/loss {loss:.4f}")
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and math.isfinite(float(value)):
            value = float(value)
            if self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value):
                self.best_value, self.best_epoch = value, epoch
            parts.append(f"{self.monitor} {value:.4f} (best {self.best_value:.4f} at {self.best_epoch})")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        log.info("  ".join(parts))

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:   # a resumed run keeps the best so far
        self.best_value, self.best_epoch = state_dict.get("best_value"), state_dict.get("best_epoch")
