"""Several sweep workers on one PostgreSQL study, one killed with SIGKILL in the middle of a trial and restarted: the
commands of docs/distributed.md ("Sweeps on several machines"), run as written, with MLflow in a SQLite file the
workers share and behind a tracking server on PostgreSQL that they reach over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from recforge.tuning.study import SURPLUS, open_storage
from tests.conftest import shared_datasets
from tests.integration.services import free_port, missing, stop, wait_for_health

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "distributed.md"
SECTION = "## Sweeps on several machines"
N_TRIALS = 6
# the sizes a test can afford, appended to the documented worker command (later overrides win)
# (a heartbeat every 2 s, and 20 s without one before a trial counts as dead: a busy machine never misses that many)
SMALL = [f"hydra.sweeper.n_trials={N_TRIALS}", "trainer.max_epochs=5", "tracking.log_model=false",
         "hydra.sweeper.heartbeat_interval=2", "hydra.sweeper.grace_period=20", "hydra/sweeper/pruner=none",
         "datamodule.batch_size=4096"]


def doc_blocks(path: Path = DOC, section: str = SECTION) -> list[str]:
    """The ```bash blocks of one section of a document."""
    text = path.read_text()
    text = text[text.index(section):]
    end = text.find("\n## ", len(section))
    return re.findall(r"```bash\n(.*?)```", text[:end] if end > 0 else text, re.S)


def doc_commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def the_block(starting: str) -> str:
    """The one block of the section that starts with ``starting``."""
    (block,) = [b for b in doc_blocks() if b.startswith(starting)]
    return block


def test_sweeps_md_shows_the_tested_worker():
    """docs/sweeps.md shows the worker command of docs/distributed.md, which the test below runs."""
    assert f"```bash\n{the_block('export MLFLOW_TRACKING_URI')}```" in (REPO / "docs" / "sweeps.md").read_text()


def start(args: list[str], env: dict, cwd: Path, log: str) -> subprocess.Popen:
    """``args`` in its own session (so that a kill reaches everything it started), its output in ``cwd/log``."""
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=open(cwd / log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_mid_trial(study_of, proc: subprocess.Popen, deadline: float, services_up: Callable[[], None]) -> int:
    """SIGKILL ``proc`` (a worker, and its session) once one of its trials has reported an epoch; returns that
    trial's number."""
    host = socket.gethostname()

    def ours(trial) -> bool:
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        try:
            return worker_host == host and os.getpgid(int(pid)) == proc.pid
        except (ValueError, ProcessLookupError):
            return False

    while time.monotonic() < deadline and proc.poll() is None:
        services_up()
        try:
            running = [t for t in study_of().get_trials(deepcopy=False)
                       if t.state.name == "RUNNING" and t.intermediate_values and ours(t)]
        except KeyError:   # no study yet
            running = []
        if running:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return running[0].number
        time.sleep(0.3)
    raise AssertionError(f"the worker ran no trial in time (exit code {proc.poll()})")


def wait_for(proc: subprocess.Popen, log: Path, deadline: float, services_up: Callable[[], None]) -> None:
    """Wait until the worker ``proc`` ends, and check that it succeeded."""
    while proc.poll() is None:
        services_up()
        assert time.monotonic() < deadline, f"{log.name}: the worker is still running"
        time.sleep(1)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("tracking", ["file", "server"])
def test_workers_on_postgresql_survive_a_sigkill(tmp_path, postgres, tracking):
    """Two workers, one killed in the middle of a trial and started again: exactly N_TRIALS complete trials, each
    run once, the killed one failed by its missing heartbeat and retried with its parameters, and one MLflow parent
    run with one child run per trial that agrees with the study."""
    import optuna

    data_dir = shared_datasets()
    if data_dir is None:
        missing("the real datasets (RECFORGE_DATA_DIR or ../shared/datasets): the documented sweep trains on ml-100k")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PGHOST": postgres.host, "PGPORT": str(postgres.port), "PGUSER": postgres.user,
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(free_port()), "ARTIFACTS": str(tmp_path / "artifacts"),
           "RECFORGE_DATA_DIR": str(data_dir), "RECFORGE_LOG_DIR": str(tmp_path / "logs"),
           "RECFORGE_CACHE_DIR": str(tmp_path / "cache"), "SLURM_ARRAY_TASK_ID": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for name in ("optuna", "mlflow"):   # the databases of the test before are not this one's
        postgres.drop_database(name)
    created = subprocess.run(["bash", "-c", the_block("createdb")], env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr

    export, by_hand = doc_commands(the_block("export MLFLOW_TRACKING_URI"))
    worker = " ".join([by_hand, *SMALL])
    slurm = tmp_path / "sweep_worker.sbatch"
    slurm.write_text(the_block("#!/bin/bash"))
    if tracking == "server":   # the second worker: the SLURM script, run as SLURM runs it (with the sizes)
        worker, second = f"{export}; {worker}", ["bash", str(slurm), *SMALL]
        uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    else:   # MLflow's default store: a SQLite file in the log folder the workers share on this machine
        second = ["bash", "-c", worker]
        uri = f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}"
    storage = postgres.url("optuna")
    study_of = lambda: optuna.load_study(study_name="bpr-ml100k", storage=open_storage(storage))  # noqa: E731
    procs = []

    def services_up() -> None:   # fail at once, not after the workers' retries, when the tracking server stopped
        if tracking == "server" and procs[0].poll() is not None:
            pytest.fail(f"the tracking server stopped: {(tmp_path / 'server.log').read_text()[-3000:]}")

    try:
        if tracking == "server":
            procs.append(start(["bash", "-c", "exec " + doc_commands(the_block("mlflow server"))[0]], env, tmp_path,
                               "server.log"))
            wait_for_health(procs[0], uri, tmp_path / "server.log")
        procs.append(first := start(["bash", "-c", worker], env, tmp_path, "first.log"))
        procs.append(start(second, env, tmp_path, "second.log"))
        killed = kill_mid_trial(study_of, first, time.monotonic() + 900, services_up)
        assert study_of().trials[killed].state.name == "RUNNING"   # the dead worker cannot say it died
        procs.append(start(["bash", "-c", worker], env, tmp_path, "restarted.log"))
        deadline = time.monotonic() + 1500
        wait_for(procs[-2], tmp_path / "second.log", deadline, services_up)
        wait_for(procs[-1], tmp_path / "restarted.log", deadline, services_up)
        check_study(study_of().get_trials(), killed, tmp_path)
        check_runs(uri, study_of().get_trials(), killed)
        if tracking == "server":   # artifacts went through the server into its store, not to a worker's disk
            assert len(list((tmp_path / "artifacts").rglob("config.yaml"))) >= N_TRIALS
    finally:
        for proc in procs:
            stop(proc)


def check_study(trials, killed: int, tmp_path: Path) -> None:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    dead = [t for t in trials if t.state.name == "FAIL" and SURPLUS not in t.user_attrs]
    assert len(complete) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    assert [t.number for t in dead] == [killed] and "fail_reason" not in dead[0].user_attrs
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)   # the rest: surplus asks, never run
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert retry.params == dead[0].params
    # each trial was run by one worker, in one folder: the completed ones and the killed one, nothing else
    folders = [p.name for p in [*tmp_path.glob("logs/multiruns/*/trial_*"), *tmp_path.glob("sweeps/*/*/trial_*")]]
    assert sorted(folders) == sorted(f"trial_{t.number}" for t in [*complete, *dead])
    assert len({t.user_attrs["worker"] for t in complete}) >= 2


def check_runs(uri: str, trials, killed: int) -> None:
    """One parent run, FINISHED, and one child run per trial that ran, with the trial's state, params and value."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("recforge").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("recforge.sweep") == "parent"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == N_TRIALS
    children = [r for r in runs if r.data.tags.get("recforge.sweep") == "trial"]
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    ran = [t for t in trials if SURPLUS not in t.user_attrs]
    assert len(by_number) == len(children) and sorted(by_number) == sorted(t.number for t in ran)
    for trial in ran:
        child = by_number[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.trial_state"] == trial.state.name
        assert child.data.params["optimizer.lr"] == str(trial.params["optimizer.lr"])
        if trial.number == killed:
            assert child.info.status == "KILLED"
        else:   # the objective: the best checkpoint's validation
            assert child.info.status == "FINISHED"
            assert child.data.metrics["val_best/ndcg_at_10"] == pytest.approx(trial.value)
