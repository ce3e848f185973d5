"""The Optuna sweeper: asks the study for trials, launches them as Hydra jobs, tells the results.

``hydra.sweeper.params`` (and sweep overrides on the command line) use Hydra's sweep grammar:
``interval(a, b)`` (float), ``int(interval(a, b))``, ``tag(log, interval(a, b))``, ``choice(...)``,
``range(start, stop[, step])``. Trials come from ``study.ask()`` one batch (``n_jobs``) at a time, so any
number of workers running the same command share one study without running a trial twice, and a rerun
after a crash continues until ``n_trials`` trials have finished (complete, pruned or failed). Optuna, MLflow
and the training code are imported only when a sweep starts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from recforge.errors import RecForgeError

from . import config as _config  # noqa: F401  (registers hydra/sweeper=optuna)

log = logging.getLogger("recforge.tuning")

# overrides of these keys never go into a trial's experiment file
NOT_IN_EXPERIMENT = ("hydra", "hparams_search", "optuna_trial", "tracking.run_id", "paths")
MAIN_GROUPS = ("data", "split", "model", "loss", "optimizer", "trainer")
EXTRA_METRICS = ("time/fit_s", "time/s_per_epoch", "params/n_parameters")
PARENT_WAIT_S = 120   # how long a worker waits for the study's creator to start the MLflow parent run


def distribution_from_override(override: Override) -> Tuple[Any, Dict[Any, str]]:
    """An Optuna distribution for a sweep override, and the override text for each categorical choice."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        encoded = list(override.sweep_iterator(transformer=Transformer.encode))
        texts = list(override.sweep_string_iterator())
        return CategoricalDistribution(encoded), dict(zip(encoded, texts))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator())
        if not values:
            raise RecForgeError(f"{key}={value}: the range is empty")
        step = value.step
        if any(isinstance(v, float) for v in (value.start, value.stop, step)):
            return FloatDistribution(float(values[0]), float(values[-1]), step=float(step)), {}
        return IntDistribution(int(values[0]), int(values[-1]), step=int(step)), {}
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if log_scale and value.start <= 0:
            raise RecForgeError(f"{key}: tag(log, interval({value.start}, {value.end})) needs a positive start")
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale), {}
        return FloatDistribution(float(value.start), float(value.end), log=log_scale), {}
    raise RecForgeError(f"{override.input_line}: the Optuna sweeper supports interval, int(interval), "
                        "tag(log, interval), choice and range")


def grid_values(name: str, distribution: Any) -> List[Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, (IntDistribution, FloatDistribution)) and distribution.step is not None \
            and not distribution.log:
        n = int(round((distribution.high - distribution.low) / distribution.step)) + 1
        return [type(distribution.low)(distribution.low + i * distribution.step) for i in range(n)]
    raise RecForgeError(f"hydra.sweeper.sampler=grid needs choice() or range() for {name}, not an interval")


def suggest(trial: Any, name: str, distribution: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                               log=distribution.log)


def override_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def quote(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=optuna``: see :mod:`hydra_plugins.recforge_optuna_sweeper.config` for the keys."""

    def __init__(self, sampler: Any, pruner: Any = None, direction: Any = None, storage: Optional[str] = None,
                 study_name: Optional[str] = None, n_trials: int = 20, n_jobs: int = 1,
                 params: Optional[DictConfig] = None, heartbeat_interval: Optional[int] = 60,
                 grace_period: Optional[int] = None, max_retry: Optional[int] = 1, poll_interval: float = 2.0,
                 mlflow: bool = True) -> None:
        self.sampler_cfg, self.pruner_cfg, self.direction = sampler, pruner, direction
        self.storage, self.study_name, self.n_trials, self.n_jobs = storage, study_name, int(n_trials), int(n_jobs)
        self.params = params
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.poll_interval, self.mlflow = float(poll_interval), bool(mlflow)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.job_idx = config, hydra_context, 0
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: List[str]) -> Any:
        try:
            return self.run_sweep(arguments)
        except RecForgeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    # ------------------------------------------------------------------ set-up
    def _search_space(self, arguments: Sequence[str]):
        """Distributions, choice texts and fixed overrides from ``hydra.sweeper.params`` + the command line."""
        lines: Dict[str, str] = {}
        params = OmegaConf.to_container(self.params, resolve=True) if isinstance(self.params, DictConfig) \
            else dict(self.params or {})
        for key, value in params.items():
            lines[str(key)] = f"{key}={value}"
        for arg in arguments:
            lines[arg.split("=", 1)[0].lstrip("+~")] = arg
        try:
            parsed = OverridesParser.create().parse_overrides(list(lines.values()))
        except Exception as exc:
            raise RecForgeError(f"hydra.sweeper.params: {str(exc).splitlines()[0]}") from None
        space: Dict[str, Any] = {}
        texts: Dict[str, Dict[Any, str]] = {}
        fixed: List[str] = []
        for override in parsed:
            if override.is_sweep_override():
                name = override.get_key_element()
                space[name], texts[name] = distribution_from_override(override)
            else:
                fixed.append(override.input_line)
        return space, texts, fixed

    def _metrics(self) -> List[str]:
        objective = self.config.get("optimized_metric")
        if isinstance(objective, str) and objective:
            return [objective]
        if isinstance(objective, (list, ListConfig)) and objective:
            return [str(m) for m in objective]
        raise RecForgeError("optimized_metric is not set; name the metric to optimize, e.g. "
                            "optimized_metric=val/ndcg_at_10 (or a list for several objectives)")

    @staticmethod
    def _valid_metrics(cfg: DictConfig) -> List[str]:
        from recforge.config import resolve_target
        from recforge.training.module import metric_names

        loss = resolve_target(str(OmegaConf.select(cfg, "loss._target_", default="")))
        feedback = getattr(loss, "feedback", "implicit")
        ks = list(OmegaConf.select(cfg, "eval.ks", default=[10]))
        extra: Tuple[Any, ...] = ()
        try:   # the sampled-negatives protocol adds metrics when eval.sampled is set
            from recforge.pipeline import sampled_kwargs

            sampled = sampled_kwargs(cfg)
            extra = (sampled["sampled_negatives"], sampled["sampled_strategy"])
        except (ImportError, KeyError, AttributeError):
            pass
        except RecForgeError:
            raise
        return [*metric_names(feedback, ks, "val", *extra), *metric_names(feedback, ks, "test", *extra),
                *EXTRA_METRICS]

    def _compose(self, overrides: List[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    # ------------------------------------------------------------------ the sweep
    def run_sweep(self, arguments: List[str]) -> Any:
        import optuna

        from recforge.tuning import study as st

        cfg = self.config
        metrics = self._metrics()
        st.check_objective(metrics, self._valid_metrics(cfg))
        directions = st.resolve_directions(metrics, OmegaConf.to_container(self.direction)
                                           if isinstance(self.direction, ListConfig) else self.direction)
        space, texts, fixed = self._search_space(arguments)
        sampler_spec = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        is_grid = str(sampler_spec.get("_target_", "")).endswith("GridSampler")
        n_trials = self.n_trials
        grid = None
        if is_grid:
            grid = {name: grid_values(name, d) for name, d in space.items()}
            size = 1
            for values in grid.values():
                size *= len(values)
            n_trials = min(n_trials, size)
        pruner_spec = OmegaConf.to_container(self.pruner_cfg, resolve=True) if self.pruner_cfg is not None else None
        if len(metrics) > 1 and pruner_spec and not pruner_spec["_target_"].endswith("NopPruner"):
            log.warning("several objectives: Optuna cannot prune multi-objective trials; the pruner is ignored")
            pruner_spec = None

        storage_url = st.normalize_storage(self.storage)
        choices = cfg.hydra.runtime.choices
        study_name = self.study_name or st.study_name_for(
            str(cfg.get("task_name", "sweep")), choices.get("model"), choices.get("data"),
            json.dumps({"fixed": sorted(fixed), "space": {k: repr(v) for k, v in sorted(space.items())},
                        "metrics": metrics, "directions": directions}, sort_keys=True))
        storage = st.open_storage(storage_url, self.heartbeat_interval, self.grace_period, self.max_retry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:   # one worker creates the study (the storage makes sure), and with it the MLflow parent run
                study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=study_name, storage=storage)
                created = False
        existing = [d.name.lower() for d in study.directions]
        if existing != directions:
            raise RecForgeError(f"study {study_name} in {st.display_storage(storage_url)} optimizes {existing}, "
                                f"not {directions}; pick another hydra.sweeper.study_name")
        from recforge.tuning.pruning import build_pruner

        if "seed" in sampler_spec and sampler_spec["seed"] is not None:
            sampler_spec["seed"] = int(sampler_spec["seed"]) + len(study.get_trials(deepcopy=False))
        target = sampler_spec.pop("_target_")
        module, _, cls = target.rpartition(".")
        from importlib import import_module

        try:
            sampler_cls = getattr(import_module(module), cls)
            study.sampler = sampler_cls(search_space=grid, **sampler_spec) if is_grid else sampler_cls(**sampler_spec)
            study.pruner = build_pruner(pruner_spec)
        except (ImportError, TypeError, ValueError) as exc:
            raise RecForgeError(f"hydra.sweeper.sampler/pruner ({target}): {exc}") from None
        study.set_user_attr(st.PRUNER_ATTR, pruner_spec)
        study.set_user_attr("recforge.optimized_metric", metrics)
        study.set_user_attr("recforge.search_space", {k: repr(v) for k, v in space.items()})
        study.set_user_attr("recforge.fixed_overrides", fixed)
        report = st.report_metric(metrics, str(cfg.get("monitor", metrics[0])), directions)

        runs = None
        tracking = cfg.get("tracking")
        if self.mlflow and tracking is not None and str(tracking.get("_target_", "")).endswith("MLflowTracker"):
            from recforge.tuning.tracking import StudyRuns

            runs = StudyRuns(uri=tracking.get("uri"), experiment_name=tracking.get("experiment_name", "recforge"),
                             log_dir=tracking.get("log_dir", "logs"))
            runs.start_parent(study, {"study_name": study_name, "storage": st.display_storage(storage_url),
                                      "sampler": target, "pruner": (pruner_spec or {}).get("_target_", "none"),
                                      "n_trials": n_trials, "optimized_metric": ",".join(metrics),
                                      "directions": ",".join(directions), "fixed_overrides": " ".join(fixed),
                                      **{f"space.{k}": repr(v) for k, v in space.items()}},
                               wait=0 if created else PARENT_WAIT_S)
        log.info("study %s in %s: %s %s, sampler %s, pruner %s, %d trials", study_name,
                 st.display_storage(storage_url), "/".join(directions), ",".join(metrics), cls,
                 (pruner_spec or {}).get("_target_", "none").rsplit(".", 1)[-1], n_trials)

        launched = 0
        try:
            while True:
                for dead in st.reap_dead_trials(study, self.max_retry):   # retried; their child runs are closed
                    if runs is not None and dead.user_attrs.get("mlflow_run_id"):
                        runs.kill_child(dead.user_attrs["mlflow_run_id"])
                counts = st.count_trials(study)
                if counts.done >= n_trials:
                    break
                free = n_trials - counts.done - counts.running
                if free <= 0:
                    if not st.local_dead_trials_possible(study):
                        log.warning("%d trial(s) are RUNNING in other workers; leaving them to finish", counts.running)
                        break
                    time.sleep(self.poll_interval)   # other workers run the last trials, or died: wait
                    continue
                batch = self._ask(study, min(self.n_jobs, free), space, n_trials)
                if not batch:   # another worker took the last slot: wait, as when its trials run
                    time.sleep(self.poll_interval)
                    continue
                launched += self._run_batch(study, storage, storage_url, study_name, batch, space, texts, fixed,
                                            metrics, report, runs, first=launched == 0)
        except BaseException:
            if runs is not None:
                runs.fail_parent()
            raise
        return self._finish(study, metrics, runs)

    def _ask(self, study: Any, n: int, space: Dict[str, Any], n_trials: int) -> List[Any]:
        """Up to ``n`` new trials; one that another worker's simultaneous ask made surplus is told FAIL (marked
        ``recforge.surplus``, never run) and not returned."""
        from optuna.trial import TrialState

        from recforge.tuning.study import SURPLUS, WORKER, is_surplus

        trials = []
        for _ in range(n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = study.ask()
            trial.set_user_attr("worker", WORKER)
            if is_surplus(study, trial, n_trials):
                trial.set_user_attr(SURPLUS, True)
                study.tell(trial, state=TrialState.FAIL)
                log.info("trial %d not run: %d trials are already under way", trial.number, n_trials)
                continue
            for name, distribution in space.items():
                suggest(trial, name, distribution)
            trials.append(trial)
        return trials

    def _run_batch(self, study, storage, storage_url, study_name, trials, space, texts, fixed, metrics, report,
                   runs, first: bool) -> int:
        from optuna.trial import TrialState

        from recforge.tuning.study import FAIL_REASON, Heartbeat, finite_values

        jobs, launched = [], []
        for trial in trials:
            task = [*fixed, *(f"{name}={texts[name].get(v, override_text(v)) if texts.get(name) else override_text(v)}"
                              for name, v in trial.params.items() if name in space)]
            trial.set_user_attr("overrides", task)
            reason = self._check_trial(task, metrics)
            if reason is not None:
                if first and not launched:   # a mistake in the sweep's config: stop at once
                    study.tell(trial, state=TrialState.FAIL)
                    raise RecForgeError(reason)
                self._record_failure(study, trial, reason, runs, study_name)   # an invalid combination
                continue
            extra = [f"+optuna_trial.storage={quote(storage_url) if storage_url else 'null'}",
                     f"+optuna_trial.study_name={quote(study_name)}", f"+optuna_trial.trial_id={trial._trial_id}",
                     f"+optuna_trial.metric={quote(report) if report else 'null'}",
                     f"hydra.sweep.subdir=trial_{trial.number}"]
            run_id = None
            if runs is not None:
                run_id = runs.start_child(study_name, trial.number)
                trial.set_user_attr("mlflow_run_id", run_id)
                extra.append(f"tracking.run_id={run_id}")
            jobs.append([*task, *extra])
            launched.append((trial, run_id))
        if not jobs:
            return 0
        try:
            with Heartbeat(storage, [t._trial_id for t, _ in launched]):
                returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        except BaseException:
            for trial, run_id in launched:    # interrupted: not counted, asked again on the next run
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        self.job_idx += len(returns)
        for (trial, run_id), ret in zip(launched, returns):
            state, values, reason = TrialState.COMPLETE, None, None
            try:
                if ret.status == JobStatus.FAILED:   # (reading return_value would log a traceback first)
                    raise ret._return_value
                values = finite_values(ret.return_value, len(metrics))
            except Exception as exc:  # the job failed, was pruned or returned no usable value
                if type(exc).__name__ == "TrialPruned":
                    state, reason = TrialState.PRUNED, str(exc)
                else:
                    state, reason = TrialState.FAIL, f"{type(exc).__name__}: {exc}".strip()
            if state == TrialState.FAIL:
                trial.set_user_attr(FAIL_REASON, reason[:1000])
                log.warning("trial %d failed: %s", trial.number, reason.splitlines()[0] if reason else "")
            self._tell(study, trial, state, values)
            if runs is not None:
                runs.finish_child(run_id, state.name, trial.params,
                                  dict(zip(metrics, values)) if values else None, reason)
        return len(launched)

    @staticmethod
    def _tell(study, trial, state, values) -> None:
        try:
            study.tell(trial, values=values, state=state, skip_if_finished=True)
        except RuntimeError as exc:   # GridSampler stops the study when the grid is used up
            if "stop" not in str(exc).lower():
                raise

    def _record_failure(self, study, trial, reason: str, runs, study_name: str) -> None:
        from recforge.tuning.study import FAIL_REASON

        from optuna.trial import TrialState

        trial.set_user_attr(FAIL_REASON, reason[:1000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, reason)
        if runs is not None:
            run_id = runs.start_child(study_name, trial.number)
            runs.finish_child(run_id, "FAIL", trial.params, None, reason)

    def _check_trial(self, task: List[str], metrics: List[str]) -> Optional[str]:
        """Why this trial cannot run (its overrides do not compose, or the objective is not produced)."""
        try:
            trial_cfg = self._compose(task)
        except Exception as exc:
            return f"overrides {' '.join(task)} do not compose: {str(exc).splitlines()[0]}"
        valid = self._valid_metrics(trial_cfg)
        missing = [m for m in metrics if m not in valid]
        if missing:
            return f"optimized_metric={missing[0]} is not a metric this run produces; valid names: {', '.join(valid)}"
        return None

    # ------------------------------------------------------------------ the end
    def _finish(self, study, metrics: List[str], runs) -> Dict[str, Any]:
        from recforge.tuning import study as st
        from recforge.utils.io import atomic_write_text

        info = st.summary(study, metrics)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        files: List[Path] = []
        best = [info["best_trial"]] if "best_trial" in info else [p["trial"] for p in info.get("pareto_front", [])][:10]
        for number in best:
            trial = study.trials[number]
            name = f"best_{study.study_name}" if len(metrics) == 1 else f"pareto_{study.study_name}_trial{number}"
            name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
            text = self._experiment(trial, metrics, study.study_name, sweep_dir, name)
            path = sweep_dir / "experiment" / f"{name}.yaml"
            atomic_write_text(path, text)
            files.append(path)
        info["experiment_files"] = [str(p) for p in files]
        results = sweep_dir / "optimization_results.yaml"
        atomic_write_text(results, OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(info, default=str)))))
        files.append(results)
        if runs is not None:
            runs.finish_parent(info, files)
        text = st.format_summary(info)
        if files[:-1]:
            first = files[0].stem
            text += (f"\nbest experiment: {files[0]}\n  run it: recforge-train 'hydra.searchpath=[file://{sweep_dir}]' "
                     f"experiment={first}\n  or copy it into the experiment/ folder of your config folder "
                     f"(docs/extending.md) and run: recforge-train experiment={first}")
        print(text)
        return info

    def _experiment(self, trial, metrics, study_name: str, sweep_dir: Path, name: str) -> str:
        from recforge.tuning.study import experiment_yaml

        overrides = list(trial.user_attrs.get("overrides", []))
        choices = self._compose(overrides).hydra.runtime.choices
        # the trial's own choices of the main groups (some come from the hparams_search file, e.g. model)
        groups: Dict[str, str] = {g: str(choices[g]) for g in MAIN_GROUPS if choices.get(g) is not None}
        added: Dict[str, str] = {}
        values: Dict[str, Any] = {}
        for override in OverridesParser.create().parse_overrides(overrides):
            key = override.key_or_group
            if override.is_delete() or any(key == k or key.startswith(k + ".") for k in NOT_IN_EXPERIMENT) \
                    or key.startswith("hydra/"):
                continue
            if key in choices:
                (added if override.is_add() else groups)[key] = str(override.value())
            else:
                values[key] = override.value()
        score = ", ".join(f"{m}={v:.6g}" for m, v in zip(metrics, trial.values))
        header = [f"Trial {trial.number} of Optuna study '{study_name}': {score}",
                  f"Run: recforge-train 'hydra.searchpath=[file://{sweep_dir}]' experiment={name}",
                  "or copy this file into the experiment/ folder of your config folder (docs/extending.md) and run: "
                  "recforge-train experiment=" + name]
        return experiment_yaml(groups, added, values, header)
