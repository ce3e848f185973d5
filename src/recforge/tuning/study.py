"""Optuna studies for sweeps: storages, directions, resume, dead workers, summaries, the best experiment.

Hydra-free: the sweeper plugin passes plain values. Optuna is imported inside the functions.

Storage strings (``hydra.sweeper.storage``):

* ``sqlite:///path/optuna.db`` (the default, under ``paths.log_dir``), ``postgresql://...``,
  ``mysql+pymysql://...``: an RDB storage with heartbeats, so trials of a dead worker are marked FAIL and
  retried.
* a path ending in ``.log``/``.jsonl``/``.journal`` (or ``journal:///path``): an Optuna journal file, safe
  for many processes on one machine or on a shared file system. Journal storages have no heartbeat; a
  trial left RUNNING by a dead worker on the same host is detected by its process id.
* ``null``: in memory, for one process only (no resume, no parallel workers).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from recforge.errors import RecForgeError
from recforge.utils.process import ProcessId

log = logging.getLogger("recforge.tuning")

WORKER = f"{socket.gethostname()}:{os.getpid()}"
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")
PRUNER_ATTR = "recforge.pruner"
PARENT_RUN_ATTR = "recforge.mlflow_parent_run_id"
FAIL_REASON = "fail_reason"
SURPLUS = "recforge.surplus"   # a trial asked when n_trials others were already under way: never run

_memory_storage = None
T = TypeVar("T")


def is_journal(storage: str) -> bool:
    return storage.startswith("journal://") or ("://" not in storage and storage.endswith(JOURNAL_SUFFIXES))


def normalize_storage(storage: str | None) -> str | None:
    """An absolute, canonical storage string: relative SQLite and journal paths become absolute."""
    if storage is None or storage in ("", "memory", "inmemory"):
        return None
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:///:memory:"):
        path = Path(storage[len("sqlite:///"):]).expanduser().resolve()
        return f"sqlite:///{path}"
    if is_journal(storage):
        path = storage.split("://", 1)[1] if storage.startswith("journal://") else storage
        return str(Path(path).expanduser().resolve())
    if "://" not in storage:
        raise RecForgeError(f"hydra.sweeper.storage={storage!r} is neither a database URL nor a journal file; "
                            "use e.g. sqlite:///logs/optuna.db, postgresql://user@host/db or logs/optuna.log")
    return storage


def display_storage(storage: str | None) -> str:
    """The storage string with any password masked (for logs, tags and summaries)."""
    if storage is None:
        return "in-memory"
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", storage)


def open_storage(storage: str | None, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = None):
    """An Optuna storage for ``storage`` (see the module docstring); heartbeats only for RDB storages."""
    import optuna

    storage = normalize_storage(storage)
    if storage is None:
        global _memory_storage
        if _memory_storage is None:
            _memory_storage = optuna.storages.InMemoryStorage()
        return _memory_storage
    if is_journal(storage):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite:"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}   # several writers wait instead of failing
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs = {"heartbeat_interval": int(heartbeat_interval), "grace_period": grace_period}
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)   # Optuna >= 4.9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if retry is not None:
                kwargs["heartbeat_stale_trial_callback"] = retry(max_retry=max_retry)
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)

    def rdb_storage():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, **kwargs)

    try:
        return despite_racers(rdb_storage)
    except ImportError as exc:
        raise RecForgeError(f"hydra.sweeper.storage={display_storage(storage)}: {exc}; install the database "
                            "driver (e.g. pip install psycopg2-binary for PostgreSQL)") from None


def despite_racers(create: Callable[[], T], attempts: int = 8) -> T:
    """``create()`` (a store on a database: Optuna's, MLflow's), tried again a little later when it fails with a
    database or migration error: workers starting together race to create the schema, and the loser finds it made."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts - 1):
        try:
            return create()
        except (DBAPIError, CommandError):
            time.sleep(0.5 * (attempt + 1))
    return create()


def heartbeat_enabled(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def resolve_directions(metrics: Sequence[str], direction: str | Sequence[str] | None) -> list[str]:
    """``direction`` as a list matching ``metrics``; ``None`` takes each metric's natural direction."""
    from recforge.metrics.names import metric_mode

    if direction is None:
        return ["minimize" if metric_mode(m) == "min" else "maximize" for m in metrics]
    directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
    for d in directions:
        if d not in ("minimize", "maximize"):
            raise RecForgeError(f"hydra.sweeper.direction: {d!r} is not 'minimize' or 'maximize'")
    if len(directions) != len(metrics):
        raise RecForgeError(f"hydra.sweeper.direction has {len(directions)} entries but optimized_metric names "
                            f"{len(metrics)} metrics ({', '.join(metrics)}); give one direction per metric or null")
    return directions


def check_objective(metrics: Sequence[str], valid: Sequence[str]) -> None:
    """Fail at once when ``optimized_metric`` names a metric the run does not produce; warn when it names a test
    metric (allowed: some protocols have no validation part, and a sweep may study the test's response)."""
    for name in metrics:
        if name not in valid:
            raise RecForgeError(f"optimized_metric={name} is not a metric this run produces; valid names: "
                                f"{', '.join(valid)}")
        if name.startswith("test/"):
            log.warning("optimized_metric=%s chooses on the test part: the best trial's test numbers are then "
                        "overstated, not a result to report; choose on val/%s unless the protocol has no "
                        "validation part (and say so)", name, name[len("test/"):])


def report_metric(metrics: Sequence[str], monitor: str, directions: Sequence[str]) -> str | None:
    """The validation metric a trial reports each epoch for pruning (``None``: no pruning).

    The objective itself when it is a ``val/`` metric, its ``val/`` twin for a ``test/`` objective, else
    ``monitor`` when it improves in the same direction. Multi-objective studies cannot prune.
    """
    from recforge.metrics.names import metric_mode

    if len(metrics) != 1:
        return None
    name = metrics[0]
    if name.startswith("test/"):
        name = "val/" + name[len("test/"):]
    if not name.startswith("val/"):
        name = monitor
    wanted = "min" if directions[0] == "minimize" else "max"
    return name if metric_mode(name) == wanted else None


def study_name_for(task_name: str, model: str | None, data: str | None, definition: str) -> str:
    """A stable default study name: rerunning the same sweep command resumes the same study."""
    import hashlib

    digest = hashlib.sha1(definition.encode()).hexdigest()[:8]
    parts = [p for p in (task_name, model, data) if p]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)) + f"-{digest}"


@dataclass
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0          # FAIL trials that ran (or were meant to): failed as data, or their worker died
    failed_data: int = 0     # FAIL trials that ran and failed (NaN, OOM, invalid combination): they count
    running: int = 0
    waiting: int = 0
    surplus: int = 0         # asked by a worker after n_trials others were under way, and never run

    @property
    def done(self) -> int:
        """Trials that count towards ``n_trials``; a trial of a dead worker does not (it is retried)."""
        return self.complete + self.pruned + self.failed_data


def count_trials(study) -> TrialCounts:
    from optuna.trial import TrialState

    counts = TrialCounts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts.complete += 1
        elif t.state == TrialState.PRUNED:
            counts.pruned += 1
        elif t.state == TrialState.FAIL and SURPLUS in t.user_attrs:
            counts.surplus += 1
        elif t.state == TrialState.FAIL:
            counts.failed += 1
            counts.failed_data += FAIL_REASON in t.user_attrs
        elif t.state == TrialState.RUNNING:
            counts.running += 1
        elif t.state == TrialState.WAITING:
            counts.waiting += 1
    return counts


def is_surplus(study, trial, n_trials: int) -> bool:
    """Whether ``trial``, just asked, would be one too many: ``n_trials`` trials numbered before it already count or
    may still (complete, pruned, failed as data, running, waiting).

    Two workers that see one free slot at the same instant both ask; the storage numbers their trials in order, so
    the later one finds the earlier one here and is not run, and the study ends with exactly ``n_trials``.
    """
    from optuna.trial import TrialState

    under_way = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and (
        t.state in under_way or (t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs)))
    return ahead >= n_trials


def reap_dead_trials(study, max_retry: int | None) -> list:
    """Mark trials left RUNNING by dead workers as FAIL and enqueue their retry; return those trials.

    RDB storages with heartbeats use Optuna's ``fail_stale_trials`` (any host). A RUNNING trial whose worker was on
    this host and whose process is gone is failed here, with heartbeats too: a worker killed after asking for a
    trial and before its first heartbeat leaves a trial that no heartbeat check ever finds stale.
    """
    import optuna
    from optuna.trial import TrialState

    reaped = []
    if heartbeat_enabled(study._storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        reaped = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number not in before]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        w_host, _, pid = worker.rpartition(":")
        if not pid.isdigit() or int(pid) == os.getpid() or not ProcessId(w_host, int(pid)).has_ended():
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue   # another worker got there first
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
            or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retry(max_retry=max_retry)(study, study._storage.get_trial(t._trial_id))
        log.warning("trial %d of dead worker %s marked FAIL and queued for retry", t.number, worker)
        reaped.append(t)
    return reaped


def local_dead_trials_possible(study) -> bool:
    """Whether waiting for RUNNING trials of other workers can end (they finish or are detected dead)."""
    from optuna.trial import TrialState

    if heartbeat_enabled(study._storage):
        return True
    host = socket.gethostname()
    return any(str(t.user_attrs.get("worker", "")).rpartition(":")[0] == host
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


class Heartbeat:
    """Records heartbeats for the trials this worker runs, so others can tell when it died."""

    def __init__(self, storage, trial_ids: Sequence[int]) -> None:
        self.storage, self.trial_ids = storage, list(trial_ids)
        self.enabled = heartbeat_enabled(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        if self.enabled:
            self._beat()
            interval = self.storage.get_heartbeat_interval() or 60
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                            name="recforge-heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        for trial_id in self.trial_ids:
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as exc:  # a missed beat is not fatal; the next one may get through
                log.debug("heartbeat failed: %s", exc)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._beat()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def finite_values(value: Any, n_objectives: int) -> list[float]:
    """The objective value(s) a job returned, or ``ValueError`` saying why they are unusable."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != n_objectives or any(v is None for v in values):
        raise ValueError(f"the job returned {value!r}, expected {n_objectives} objective value(s)")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"objective is not finite ({out}); the training diverged")
    return out


def summary(study, metrics: Sequence[str]) -> dict[str, Any]:
    """Best value(s) and params and the trial counts, as plain data (printed and saved by the sweeper)."""
    counts = count_trials(study)
    out: dict[str, Any] = {"study_name": study.study_name, "metrics": list(metrics),
                           "directions": [d.name.lower() for d in study.directions],
                           "n_complete": counts.complete, "n_pruned": counts.pruned, "n_failed": counts.failed,
                           "n_running": counts.running}
    if counts.complete == 0:
        return out
    if len(metrics) == 1:
        best = study.best_trial
        out.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
    else:
        out["pareto_front"] = [{"trial": t.number, "values": dict(zip(metrics, t.values)), "params": dict(t.params)}
                               for t in study.best_trials]
    return out


def format_summary(info: dict[str, Any]) -> str:
    lines = [f"study {info['study_name']}: {info['n_complete']} complete, {info['n_pruned']} pruned, "
             f"{info['n_failed']} failed" + (f", {info['n_running']} still running" if info["n_running"] else "")]
    if "best_value" in info:
        lines.append(f"best trial {info['best_trial']}: {info['metrics'][0]} = {info['best_value']:.6g}")
        lines.extend(f"  {k} = {v}" for k, v in info["best_params"].items())
    for point in info.get("pareto_front", []):
        values = ", ".join(f"{k} = {v:.6g}" for k, v in point["values"].items())
        params = ", ".join(f"{k}={v}" for k, v in point["params"].items())
        lines.append(f"pareto trial {point['trial']}: {values}  ({params})")
    if "best_value" not in info and "pareto_front" not in info:
        lines.append("no trial completed")
    return "\n".join(lines)


def experiment_yaml(groups: dict[str, str], added_groups: dict[str, str], values: dict[str, Any],
                    header: Sequence[str]) -> str:
    """A ``# @package _global_`` experiment overlay that reproduces a trial.

    ``groups``: config group choices that override the defaults (``model: neumf``); ``added_groups``: groups
    added with ``+`` (``experiment: foo``); ``values``: dotted keys to values (``optimizer.lr: 0.003``).
    """
    import yaml

    body: dict[str, Any] = {}
    for key, value in values.items():
        node = body
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key} conflicts with another override")
        node[leaf] = value
    defaults = [f"/{g}/{o}" if g == "experiment" else f"/{g}: {o}" for g, o in added_groups.items()]
    defaults += [f"override /{g}: {o}" for g, o in groups.items()]
    lines = ["# @package _global_", *(f"# {h}" for h in header)]
    if defaults:
        lines += ["defaults:", *(f"  - {d}" for d in defaults), "  - _self_", ""]
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False) if body else ""
    return "\n".join(lines) + "\n" + text
