"""Per-epoch pruning for a trial that runs as a Hydra job, in this process or any other.

The sweeper passes ``+optuna_trial={storage, study_name, trial_id, metric}`` to the job; ``train`` then adds
:class:`OptunaPruning`, which reports ``trainer.callback_metrics[metric]`` to the study through its storage
after every validation epoch and raises :class:`optuna.TrialPruned` when the study's pruner says so. The
pruner is rebuilt from the study's user attribute ``recforge.pruner`` (written by the sweeper), so the
decision is the same wherever the trial runs.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from recforge.tuning.study import PRUNER_ATTR, open_storage
from recforge.utils.trust import import_trusted

log = logging.getLogger("recforge.tuning")


def build_pruner(spec: dict | None):
    """An Optuna pruner from ``{"_target_": "optuna.pruners.MedianPruner", **kwargs}`` (``None``: no pruning)."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    spec = dict(spec)
    return import_trusted(spec.pop("_target_"), "the study's pruner (user attribute recforge.pruner)")(**spec)


class OptunaPruning(pl.Callback):
    """Reports ``metric`` to Optuna trial ``trial_id`` each validation epoch; stops the trial when pruned."""

    def __init__(self, storage: str | None, study_name: str, trial_id: int, metric: str | None = None) -> None:
        self.storage, self.study_name, self.trial_id, self.metric = storage, study_name, int(trial_id), metric
        self._trial = None
        self._warned = False

    @property
    def trial(self):
        if self._trial is None:
            import optuna

            storage = open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler())
            study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import optuna

        if self.metric is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            if not self._warned:
                log.warning("pruning: metric %s is not logged; valid names: %s", self.metric,
                            ", ".join(sorted(trainer.callback_metrics)))
                self._warned = True
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at epoch {epoch}: "
                                     f"{self.metric}={float(value):.6g}")
