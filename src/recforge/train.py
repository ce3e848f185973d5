"""``recforge-train``: compose the config, train, evaluate, track. ``train(cfg)`` returns the metrics."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from recforge.cli import command, quiet_warnings, run_cli
from recforge.config import CONFIG_DIR, build, flatten, to_yaml
from recforge.errors import RecForgeError
from recforge.pipeline import (Experiment, build_experiment, config_integer, finite, git_commit, model_spec,
                               per_user_frame, recommendations_frame, split_frames, write_parquet)
from recforge.restore import check_resumable
from recforge.training.checkpoint import AtomicCheckpointIO, CheckpointState, RunIdInCheckpoint, stored_run_id
from recforge.utils.io import atomic_dir, atomic_write_text, writable_folder

log = logging.getLogger("recforge")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate the experiment ``cfg`` describes; return its validation and test metrics."""
    started = time.perf_counter()
    resume = resume_path(cfg)
    output_dir = writable_folder(cfg.paths.output_dir, "paths.output_dir")
    tracker = build(cfg, "tracking") if cfg.get("tracking") else None   # checks that its log folder can be written
    pl.seed_everything(config_integer(cfg, "seed", 42), workers=True, verbose=False)
    exp = build_experiment(cfg)
    dm, module = exp.datamodule, exp.module
    done_before = check_resumable(resume, cfg, dm.fingerprint) if resume else 0  # epochs the checkpoint had trained
    warm = {}
    if cfg.get("init_from"):  # fine-tuning: start from a trained bundle, grown to this data's users and items
        from recforge.training.warm_start import warm_start

        warm = warm_start(exp.model, cfg.init_from, dm.id_maps.users, dm.id_maps.items)
    config_yaml = to_yaml(cfg)
    callbacks = [build(cfg.callbacks, name) for name in cfg.get("callbacks") or {}]
    callbacks += [CheckpointState(config_yaml, dm.fingerprint), RunIdInCheckpoint()]
    if cfg.get("optuna_trial"):  # a trial of the Optuna sweeper: report each epoch, stop when pruned
        from recforge.tuning.pruning import OptunaPruning

        callbacks.append(OptunaPruning(**cfg.optuna_trial))
    trainer = build(cfg, "trainer", logger=tracker.logger if tracker else False, callbacks=callbacks,
                    plugins=[AtomicCheckpointIO()])
    checkpoint = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)

    status = "FAILED"
    try:
        with sigterm_exits():
            if tracker:
                resumed_from = stored_run_id(resume) if resume else None   # the run this one continues
                tracker.start(flatten(cfg), {"dataset": dm.raw.name, "split_fingerprint": dm.fingerprint,
                                             "feedback": exp.feedback, "git_commit": git_commit(),
                                             "model": cfg.model._target_.rsplit(".", 1)[-1],
                                             **({"recforge.resumed_from": resumed_from} if resumed_from else {})},
                              config_yaml)
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
            write_outputs(cfg, exp, output_dir, config_yaml, metrics, best, tracker)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):   # Ctrl-C, SIGTERM (sigterm_exits), Lightning's exit after a Ctrl-C
        status = "KILLED"
        raise
    finally:
        if tracker:
            tracker.finish(status)
    log.info("finished in %.1f s", time.perf_counter() - started)
    print_metrics(metrics, output_dir)
    return metrics


def write_outputs(cfg: DictConfig, exp: Experiment, output_dir: Path, config_yaml: str, metrics: dict,
                  best: str | None, tracker) -> None:
    """The run folder's files and the MLflow run's artifacts and model. Every file is written atomically, and
    ``metrics.json`` last: a run folder with it holds a finished run."""
    dm, module = exp.datamodule, exp.module
    write_parquet(per_user_frame(module, dm), output_dir / "per_user_test_metrics.parquet")
    if cfg.export.recommendations:
        write_parquet(recommendations_frame(module, dm), output_dir / "recommendations.parquet")
        for name, frame in split_frames(dm).items():
            write_parquet(frame, output_dir / f"{name}.parquet")
    target, kwargs = model_spec(cfg, dm)
    from recforge.tracking.bundle import save_bundle

    bundle = output_dir / "model"
    with atomic_dir(bundle) as folder:
        save_bundle(folder, exp.model, target, kwargs, dm.id_maps.users, dm.id_maps.items, dm.seen_matrix(),
                    {"dataset": dm.raw.name, "fingerprint": dm.fingerprint, "feedback": exp.feedback})
    atomic_write_text(output_dir / "config.yaml", config_yaml)
    if tracker:
        tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith(("time/", "params/"))})
        tracker.log_artifact(output_dir / "per_user_test_metrics.parquet", "results")
        tracker.log_dict(metrics, "results/metrics.json")
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

        tracker.log_pyfunc(bundle, pd.DataFrame({"user": dm.id_maps.users[:2], "k": 10}))   # data of 1 user: 1 row
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    if tracker:
        metrics["run_id"] = tracker.run_id  # type: ignore[assignment]


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop) raises SystemExit, as Ctrl-C raises KeyboardInterrupt, so the run is
    closed as KILLED instead of the process vanishing with its MLflow run RUNNING. Only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


entry = command(main, "train")

if __name__ == "__main__":
    entry()
