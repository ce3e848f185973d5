"""``recforge-train``: compose the config, train, evaluate, track. ``train(cfg)`` returns the metrics."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from recforge.config import CONFIG_DIR, build, flatten, to_yaml
from recforge.errors import RecForgeError
from recforge.pipeline import (CheckpointState, build_experiment, check_resumable, config_integer, finite, git_commit,
                               model_spec, per_user_frame, recommendations_frame, split_frames, write_parquet)
from recforge.utils.io import atomic_write_text

log = logging.getLogger("recforge")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate the experiment ``cfg`` describes; return its validation and test metrics."""
    started = time.perf_counter()
    resume = resume_path(cfg)
    pl.seed_everything(config_integer(cfg, "seed", 42), workers=True, verbose=False)
    exp = build_experiment(cfg)
    dm, module = exp.datamodule, exp.module
    done_before = check_resumable(resume, cfg, dm.fingerprint) if resume else 0  # epochs the checkpoint had trained
    warm = {}
    if cfg.get("init_from"):  # fine-tuning: start from a trained bundle, grown to this data's users and items
        from recforge.training.warm_start import warm_start

        warm = warm_start(exp.model, cfg.init_from, dm.id_maps.users, dm.id_maps.items)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = to_yaml(cfg)
    tracker = build(cfg, "tracking") if cfg.get("tracking") else None
    callbacks = [build(cfg.callbacks, name) for name in cfg.get("callbacks") or {}]
    callbacks.append(CheckpointState(config_yaml, dm.fingerprint))
    if cfg.get("optuna_trial"):  # a trial of the Optuna sweeper: report each epoch, stop when pruned
        from recforge.tuning.pruning import OptunaPruning

        callbacks.append(OptunaPruning(**cfg.optuna_trial))
    trainer = build(cfg, "trainer", logger=tracker.logger if tracker else False, callbacks=callbacks)
    checkpoint = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)

    status = "FAILED"
    try:
        if tracker:
            tracker.start(flatten(cfg), {"dataset": dm.raw.name, "split_fingerprint": dm.fingerprint,
                                         "feedback": exp.feedback, "git_commit": git_commit(),
                                         "model": cfg.model._target_.rsplit(".", 1)[-1]}, config_yaml)
            tracker.log_metrics({**dm.data_report(), **warm})  # sizes, leaks, cold starts, removals, warm start
        log.info("data: %s", dm.describe())
        fit_started = time.perf_counter()
        if exp.model.requires_training:
            trainer.fit(module, datamodule=dm, ckpt_path=resume)
            best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        else:
            exp.model.fit(*dm.train_tensors)
            best = None
        fit_seconds = time.perf_counter() - fit_started
        val = trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
        if not exp.model.requires_training and checkpoint is not None:
            best = str(Path(checkpoint.dirpath) / f"{checkpoint.filename}.ckpt")
            trainer.save_checkpoint(best)
        test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
        metrics = finite({**val, **test})
        epochs = max(trainer.current_epoch - done_before, 1) if exp.model.requires_training else 0
        metrics["time/fit_s"] = fit_seconds
        metrics["time/s_per_epoch"] = fit_seconds / epochs if epochs else 0.0
        metrics["params/n_parameters"] = float(sum(p.numel() for p in exp.model.parameters()))
        if trainer.global_rank != 0:  # under DDP every process has the metrics; one writes and tracks
            status = "FINISHED"
            return metrics

        write_parquet(per_user_frame(module, dm), output_dir / "per_user_test_metrics.parquet")
        if cfg.export.recommendations:
            write_parquet(recommendations_frame(module, dm), output_dir / "recommendations.parquet")
            for name, frame in split_frames(dm).items():
                write_parquet(frame, output_dir / f"{name}.parquet")
        target, kwargs = model_spec(cfg, dm)
        from recforge.tracking.bundle import save_bundle

        bundle = save_bundle(output_dir / "model", exp.model, target, kwargs, dm.id_maps.users, dm.id_maps.items,
                             dm.seen_matrix(), {"dataset": dm.raw.name, "fingerprint": dm.fingerprint, "feedback": exp.feedback})
        atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        atomic_write_text(output_dir / "config.yaml", config_yaml)
        if tracker:
            tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith(("time/", "params/"))})
            tracker.log_artifact(output_dir / "per_user_test_metrics.parquet", "results")
            tracker.log_artifact(output_dir / "metrics.json", "results")
            if best:
                tracker.log_artifact(best, "checkpoints")
            if cfg.export.recommendations:
                for name in ("recommendations", "train", "val", "test"):
                    tracker.log_artifact(output_dir / f"{name}.parquet", "export")
            id_frames = dm.id_maps.to_frame()
            write_parquet(id_frames[0], output_dir / "user_ids.parquet")
            write_parquet(id_frames[1], output_dir / "item_ids.parquet")
            tracker.log_artifact(output_dir / "user_ids.parquet", "id_maps")
            tracker.log_artifact(output_dir / "item_ids.parquet", "id_maps")
            import pandas as pd

            tracker.log_pyfunc(bundle, pd.DataFrame({"user": dm.id_maps.users[:2], "k": [10, 10]}))
            metrics["run_id"] = tracker.run_id  # type: ignore[assignment]
        status = "FINISHED"
    finally:
        if tracker:
            tracker.finish(status)
    log.info("finished in %.1f s", time.perf_counter() - started)
    print_metrics(metrics, output_dir)
    return metrics


def resume_path(cfg: DictConfig) -> str | None:
    """``resume_from``: a checkpoint of an interrupted run of this experiment to continue from, or None."""
    path = cfg.get("resume_from")
    if not path:
        return None
    if not Path(path).is_file():
        raise RecForgeError(f"resume_from={path}: file not found; give a checkpoint of this experiment, e.g. "
                            "<its output_dir>/checkpoints/last.ckpt")
    run_dir = Path(path).resolve().parent.parent
    if run_dir != Path(cfg.paths.output_dir).resolve():
        log.warning("resume_from is not under paths.output_dir: the best checkpoint's score stays behind and the "
                    "first validation after resuming counts as the best; add paths.output_dir=%s to continue "
                    "the run in its own folder", run_dir)
    return str(path)


def print_metrics(metrics: dict, output_dir: Path) -> None:
    lines = [f"{k:<28} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))
             and isinstance(v, float)]
    print("\n".join(lines))
    if "run_id" in metrics:
        print(f"mlflow run: {metrics['run_id']}")
    print(f"outputs: {output_dir}")


def run_cli(task, cfg: DictConfig):
    """Run ``task(cfg)``; a user mistake prints one line and exits 2 instead of a traceback."""
    try:
        return task(cfg)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if _in_multirun():  # a sweep records the failed job and goes on; exiting would end the whole sweep
            raise
        sys.exit(2)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def quiet_warnings() -> None:
    """Silence library chatter that says nothing about the user's experiment."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded artifact
    for message in (".*IterableDataset.*has `__len__` defined.*", ".*isinstance.treespec, LeafSpec.*",
                    ".*Inferred schema contains integer column.*", ".*smaller than the logging interval.*",
                    ".*when logging on epoch level in distributed setting.*"):
        warnings.filterwarnings("ignore", message=message)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | list | None:
    quiet_warnings()
    metrics = run_cli(train, cfg)
    objective = cfg.get("optimized_metric")
    if not metrics:
        return None
    if isinstance(objective, str) or objective is None:
        return metrics.get(objective)
    return [metrics.get(name) for name in objective]  # several objectives (e.g. an NSGA-II sweep)


if __name__ == "__main__":
    main()
