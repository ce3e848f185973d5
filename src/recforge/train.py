"""``recforge-train``: compose the config, train, evaluate, track. ``train(cfg)`` returns the metrics."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from recforge.cli import command, in_multirun, quiet_warnings, run_cli
from recforge.config import CONFIG_DIR, build, flatten, option_names, resolve_target, to_yaml
from recforge.errors import RecForgeError
from recforge.metrics.names import metric_mode
from recforge.pipeline import (Experiment, build_experiment, config_integer, finite, git_commit, model_spec,
                               per_user_frame, recommendations_frame, split_frames, write_parquet)
from recforge.restore import check_resumable
from recforge.training.checkpoint import AtomicCheckpointIO, CheckpointState, RunIdInCheckpoint, stored_run_id
from recforge.training.progress import EpochLines
from recforge.utils.io import atomic_dir, atomic_write_text, writable_folder

log = logging.getLogger("recforge")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate the experiment ``cfg`` describes; return its validation and test metrics."""
    started = time.perf_counter()
    resume = resume_path(cfg)
    check_refit(cfg)
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
    names = option_names(cfg)
    if tracker and not tracker.run_name:   # runs named for what they are (MLflow's random names repeat under a seed)
        tracker.run_name = run_name(names)
    progress = EpochLines(cfg.monitor, metric_mode(cfg.monitor))
    callbacks = [build(cfg.callbacks, name) for name in cfg.get("callbacks") or {}]
    callbacks += [CheckpointState(config_yaml, dm.fingerprint), RunIdInCheckpoint(), progress]
    if cfg.get("optuna_trial"):  # a trial of the Optuna sweeper: report each epoch, stop when pruned
        from recforge.tuning.pruning import OptunaPruning

        callbacks.append(OptunaPruning(**cfg.optuna_trial))
    bar = cfg.trainer.get("enable_progress_bar")
    bar = sys.stderr.isatty() if bar is None else bar   # a progress bar on a terminal unless the config says
    trainer = build(cfg, "trainer", logger=tracker.logger if tracker else False, callbacks=callbacks,
                    plugins=[AtomicCheckpointIO()], enable_progress_bar=bar)
    checkpoint = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)

    status = "FAILED"
    try:
        with sigterm_exits():
            if tracker:
                resumed_from = stored_run_id(resume) if resume else None   # the run this one continues
                tracker.start(flatten(cfg), {"dataset": dm.raw.name, "split_fingerprint": dm.fingerprint,
                                             "feedback": exp.feedback, "git_commit": git_commit(),
                                             "model": cfg.model._target_.rsplit(".", 1)[-1],
                                             **list_tags(module),
                                             **({"recforge.resumed_from": resumed_from} if resumed_from else {})},
                              config_yaml)
                log_data(tracker, cfg, dm, names, warm)
            log.info("data: %s", dm.describe())
            fit_started = time.perf_counter()
            if exp.model.requires_training:
                with warnings.catch_warnings():
                    if resume:   # the folder given back holds the run's own checkpoints, as it should
                        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                    trainer.fit(module, datamodule=dm, ckpt_path=resume)
                best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
            else:
                exp.model.fit(*dm.train_tensors)
                best = None
            fit_seconds = time.perf_counter() - fit_started
            # read now: validating and testing the best checkpoint restore the callbacks' state as it was saved, when
            # the progress lines still held the previous best
            best_epoch = progress.best_epoch
            module.val_stage = "val_best" if exp.model.requires_training else "val"   # apart from the epoch series
            val = {k.replace("val_best/", "val/", 1): v
                   for k, v in trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)[0].items()}
            module.val_stage = "val"
            if not exp.model.requires_training and checkpoint is not None:
                best = str(Path(checkpoint.dirpath) / f"{checkpoint.filename}.ckpt")
                trainer.save_checkpoint(best, weights_only=False)
            epochs = trainer.current_epoch - done_before if exp.model.requires_training else 0   # by this process
            fitted = exp
            if cfg.get("refit"):   # test a fresh model fit on train + validation instead (the test is read once)
                if exp.model.requires_training and best_epoch is None:
                    raise RecForgeError(f"refit=true: validation never gave a finite {cfg.monitor}, so no epoch was "
                                        "chosen to refit for; fix the selection run (its learning rate, its monitor) "
                                        "first")
                refit_started = time.perf_counter()
                fitted, test, best = refit(cfg, best_epoch if exp.model.requires_training else None, output_dir, bar)
                if tracker:   # the refit's trainer logs nothing: its test numbers are the run's
                    tracker.log_metrics(finite(test))
                refit_seconds = time.perf_counter() - refit_started
            else:
                test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]
            metrics = finite({**val, **test})
            metrics["time/fit_s"] = fit_seconds
            if epochs or not exp.model.requires_training:   # 0: fitted without epochs; none: a finished run resumed
                metrics["time/s_per_epoch"] = fit_seconds / epochs if epochs else 0.0
            metrics["params/n_parameters"] = float(sum(p.numel() for p in exp.model.parameters()))
            if best_epoch is not None:
                metrics["val_best/epoch"] = float(best_epoch)
                metrics["time/epochs"] = float(trainer.current_epoch)
            if cfg.get("refit"):
                metrics["refit/epochs"] = float(best_epoch or 0)
                metrics["time/refit_s"] = refit_seconds
            if trainer.global_rank != 0:  # under DDP every process has the metrics; one writes and tracks
                status = "FINISHED"
                return metrics
            write_outputs(cfg, fitted, output_dir, config_yaml, metrics, best, tracker)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):   # Ctrl-C, SIGTERM (sigterm_exits), Lightning's exit after a Ctrl-C
        status = "KILLED"
        raise
    finally:
        if tracker:
            tracker.finish(status)
    print_summary(cfg, metrics, output_dir, tracker, names, time.perf_counter() - started)
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
                    {"dataset": dm.raw.name, "fingerprint": dm.fingerprint, "feedback": exp.feedback},
                    reranker=module.reranker, encoders=dm.feature_encoders(), context=dm.context_columns)
        if cfg.export.get("ann_index"):  # the model is a dot-product model: build_experiment checked
            import torch

            from recforge.retrieval.ann import retrieval_items

            with torch.no_grad():
                build(cfg, "ann").build(retrieval_items(exp.model)).save(folder)
    atomic_write_text(output_dir / "config.yaml", config_yaml)
    if tracker:
        tracker.log_metrics({k: v for k, v in metrics.items()
                             if k.startswith(("time/", "params/", "val_best/epoch", "refit/"))})
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


def refit(cfg: DictConfig, epochs: int | None, output_dir: Path, bar: bool) -> tuple[Experiment, dict, str]:
    """``refit=true``: a fresh model of ``cfg`` (same seed) trained for ``epochs`` (the selection run's best) on
    training + validation (``datamodule.train_on_validation``), without validation; a model without training is fit
    on both parts. Returns its experiment, its test metrics and its checkpoint, ``checkpoints/refit.ckpt``, whose
    config rebuilds the merged data (``recforge-eval ckpt_path=...`` tests it again)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings["refit"] = False
    settings["datamodule"]["train_on_validation"] = True
    if epochs is not None:
        settings["trainer"]["max_epochs"] = epochs
    refit_cfg = OmegaConf.create(settings)
    log.info("refit: a fresh model on training + validation%s", refit_span(epochs))
    pl.seed_everything(config_integer(cfg, "seed", 42), workers=True, verbose=False)
    exp = build_experiment(refit_cfg)
    callbacks = [CheckpointState(to_yaml(refit_cfg), exp.datamodule.fingerprint),
                 EpochLines(cfg.monitor, metric_mode(cfg.monitor))]
    trainer = build(refit_cfg, "trainer", logger=False, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                    enable_checkpointing=False, limit_val_batches=0,
                    enable_progress_bar=bar)
    if exp.model.requires_training:
        trainer.fit(exp.module, datamodule=exp.datamodule)
    else:
        exp.model.fit(*exp.datamodule.train_tensors)
    test = trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    path = output_dir / "checkpoints" / "refit.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, weights_only=False)
    return exp, test, str(path)


def refit_span(epochs: int | None) -> str:
    """`` for 50 epochs`` (`` for 1 epoch``; nothing for a model without training)."""
    return f" for {epochs} epoch" + "s" * (epochs > 1) if epochs else ""


def check_refit(cfg: DictConfig) -> None:
    """``refit=true`` needs what it repeats: a best epoch chosen by validation, a schedule that does not follow it."""
    if not cfg.get("refit"):
        return
    if cfg.get("optuna_trial"):
        raise RecForgeError("refit=true in a sweep trial: a trial is scored on validation and never tested; drop "
                            "refit from the sweep and give it to the final run of the chosen values")
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    schedule = resolve_target(cfg.scheduler._target_) if cfg.get("scheduler") else None  # a wrong name: check_config
    if isinstance(schedule, type) and issubclass(schedule, ReduceLROnPlateau):
        raise RecForgeError("refit=true with scheduler=plateau: the plateau schedule follows validation, which a "
                            "refit has not; use scheduler=cosine or step, or refit=false")
    if OmegaConf.select(cfg, "datamodule.train_on_validation"):
        raise RecForgeError("refit=true with datamodule.train_on_validation=true: the selection run needs its "
                            "validation part; leave train_on_validation to the refit")


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


def list_tags(module) -> dict[str, str]:
    """Where the test's list metrics found their item vectors and categories (``beyond.item_vectors``:
    item_features, model or none; ``beyond.categories``: genres or none), when it computes them."""
    context = module.test_evaluator.beyond
    if context is None:
        return {}
    return {"beyond.item_vectors": context.vectors_from,
            "beyond.categories": "genres" if context.item_categories is not None else "none"}


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


def run_name(names: dict[str, str]) -> str:
    """``bpr ml-100k/random 12-02 21:05 3fa1``: the model, data and split options, the start and 4 random hex digits
    (drawn from the OS, not from the seeded generators, so two runs with one seed differ)."""
    return (f"{names.get('model', 'model')} {names.get('data', 'data')}/{names.get('split', 'split')} "
            f"{datetime.now():%m-%d %H:%M} {os.urandom(2).hex()}")


def log_data(tracker, cfg: DictConfig, dm, names: dict[str, str], warm: dict[str, float]) -> None:
    """The data as the run's dataset input, its sizes, leak and cold-start counts and preprocessing removals as
    params (``data_report.*``: bookkeeping, not curves), its preparation times as ``time/data_*`` metrics."""
    report = dm.data_report()
    counts = {k.removeprefix("data/"): int(v) for k, v in report.items() if not k.endswith("_s")}
    tracker.log_params({f"data_report.{k}": str(v) for k, v in counts.items()})
    tracker.log_metrics({**{f"time/data_{k.removeprefix('data/')}": round(v, 3) for k, v in report.items()
                            if k.endswith("_s")}, **warm})
    source = OmegaConf.select(cfg, "data.data_dir") or OmegaConf.select(cfg, "data.path")
    tracker.log_dataset(f"{names.get('data', dm.raw.name)}/{names.get('split', 'split')}", dm.fingerprint,
                        str(source) if source else None, dm.split.train.head(1000),
                        {k: counts[k] for k in ("n_users", "n_items", "n_train", "n_val", "n_test") if k in counts})


SUMMARY_TESTS = ("ndcg_at_10", "recall_at_10", "ndcg_at_20", "recall_at_20", "rmse", "mae")


def print_summary(cfg: DictConfig, metrics: dict, output_dir: Path, tracker, names: dict[str, str],
                  seconds: float) -> None:
    """What a person needs at the end of a run: the monitored metric and its best epoch, a few test metrics, the run
    and its folder, and the commands to run it again or serve it. A sweep's trial prints one line."""
    monitor = cfg.monitor
    best = f"{monitor} {metrics[monitor]:.4f}" if isinstance(metrics.get(monitor), float) else monitor
    if "val_best/epoch" in metrics:
        best += f" at epoch {int(metrics['val_best/epoch'])} of {int(metrics['time/epochs'])}"
    tests = "  ".join(f"{m} {metrics[f'test/{m}']:.4f}" for m in SUMMARY_TESTS if f"test/{m}" in metrics)
    if "refit/epochs" in metrics:   # the test numbers are the refit's
        tests += f"  (refit on train + validation{refit_span(int(metrics['refit/epochs']))})"
    run_id = metrics.get("run_id")
    if in_multirun():
        print(f"trial {output_dir.name}: {best} | test {tests}" + (f" | run {run_id}" if run_id else ""))
        return
    title = tracker.run_name if tracker else f"{names.get('model')} {names.get('data')}/{names.get('split')}"
    lines = [f"done: {title} in {seconds:.0f} s" + (f" (MLflow run {run_id})" if run_id else ""),
             f"  best    {best}", f"  test    {tests}", f"  folder  {output_dir}"]
    overrides = command_line_overrides()
    if overrides is not None:
        lines.append(f"  again   recforge-train {' '.join(overrides)}".rstrip())
    source = f"--run-id {run_id}" if run_id else f"--bundle {output_dir / 'model'}"
    lines.append(f"  serve   recforge-serve {source}")
    print("\n".join(lines))


def command_line_overrides() -> list[str] | None:
    """The overrides this run was started with (Hydra's record), or None outside a Hydra command."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


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
