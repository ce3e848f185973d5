"""Runs that die or cannot write: SIGKILL during training and during a sweep trial, Ctrl-C and SIGTERM, a full disk,
read-only folders, and a one-user dataset. Tiny synthetic data; tracking to a SQLite store in ``tmp_path``."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from recforge.cli import run_cli
from recforge.train import train
from recforge.utils.io import atomic_dir, atomic_path, atomic_write_text
from tests.conftest import REPO, TINY, compose_train

KEEP_TRAINING = ["trainer.max_epochs=100000", "callbacks.early_stopping.patience=100000"]  # until it is killed


@pytest.fixture(autouse=True)
def no_tracking_uri(monkeypatch):
    """Every test logs into its own store under ``tmp_path`` (the tracking config reads MLFLOW_TRACKING_URI)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'logs'}/mlflow.db")


def all_runs(tmp_path: Path) -> list:
    mlflow = client(tmp_path)
    return mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()])


def cli(tmp_path: Path, *overrides: str, multirun: bool = False) -> list[str]:
    """``recforge-train`` on the tiny data, its store and cache under ``tmp_path``."""
    return [sys.executable, "-m", "recforge.train", *(["-m"] if multirun else []), *TINY, "tracking.log_model=false",
            f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    # output to a file: a pipe nobody reads would fill up and stall the run
    with open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


def kill_when(path: Path, proc: subprocess.Popen, tmp_path: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` (and its process group) as soon as ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkilled_run_is_marked_killed_at_the_next_start_and_its_resumed_run_links_to_it(tmp_path):
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    proc = start(cli(tmp_path, *KEEP_TRAINING, f"hydra.run.dir={tmp_path / 'out'}"), tmp_path)
    kill_when(last, proc, tmp_path)
    (killed,) = all_runs(tmp_path)
    assert killed.info.status == "RUNNING"   # a SIGKILL cannot close the run
    assert killed.data.tags["recforge.pid"] == str(proc.pid)
    epoch = torch.load(last, weights_only=True)["epoch"]   # the checkpoint is whole: written atomically

    cfg = compose_train([*TINY, "tracking.log_model=false", "callbacks.early_stopping.patience=100000",
                         f"trainer.max_epochs={epoch + 3}", f"resume_from={last}"], tmp_path)
    metrics = train(cfg)
    assert torch.load(last, weights_only=True)["epoch"] == epoch + 2   # it trained the two epochs left
    runs = {r.info.run_id: r for r in all_runs(tmp_path)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert f"pid {proc.pid}" in runs[killed.info.run_id].data.tags["recforge.end_reason"]
    resumed = runs[metrics["run_id"]]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["recforge.resumed_from"] == killed.info.run_id


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupted_run_is_marked_killed(tmp_path, monkeypatch, stop):
    from recforge.training.module import RecommenderModule

    def interrupted(self, batch, batch_idx):
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)   # e.g. a job scheduler's stop
        time.sleep(5)   # the handler runs before this ends

    monkeypatch.setattr(RecommenderModule, "training_step", interrupted)
    handler, ctrl_c = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            train(compose_train([*TINY, "tracking.log_model=false"], tmp_path))
    finally:
        signal.signal(signal.SIGINT, ctrl_c)   # Lightning ignores Ctrl-C once it has had one
    assert [r.info.status for r in all_runs(tmp_path)] == ["KILLED"]
    assert signal.getsignal(signal.SIGTERM) == handler   # the run's SIGTERM handler is gone with it


@contextmanager
def full_disk(limit: int):
    """As if the disk were full: no file of this process may grow past ``limit`` bytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_full_disk_keeps_the_last_checkpoint_and_ends_in_one_line(tmp_path, capsys):
    big = [*TINY, "model.embedding_dim=2048", "tracking.log_model=false", "callbacks.early_stopping.patience=100000"]
    first = train(compose_train([*big, "trainer.max_epochs=1"], tmp_path))   # checkpoints of ~4 MB
    checkpoints = tmp_path / "out" / "checkpoints"
    last = checkpoints / "last.ckpt"
    before = sha256(last)
    limit = last.stat().st_size // 2
    assert (tmp_path / "logs" / "mlflow.db").stat().st_size < limit   # the store can still be written
    capsys.readouterr()

    with full_disk(limit), pytest.raises(SystemExit) as exc:
        run_cli(train, compose_train([*big, "trainer.max_epochs=3", f"resume_from={last}"], tmp_path))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot write {checkpoints}/")
    assert "File too large" in err and "set paths.output_dir to a folder on another disk" in err
    assert sha256(last) == before and torch.load(last, weights_only=True)["epoch"] == 0   # the resume point is intact
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]   # no partial file left
    (failed,) = [r for r in all_runs(tmp_path) if r.info.run_id != first["run_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags["recforge.resumed_from"] == first["run_id"]


def test_write_that_fails_halfway_leaves_the_previous_file_and_names_it(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_write_text(path, "the previous checkpoint")
    with pytest.raises(OSError) as exc, atomic_path(path) as tmp:
        tmp.write_text("half of the ne")
        raise OSError(errno.ENOSPC, "No space left on device")   # as a write() on a full disk: no file named
    assert exc.value.filename == str(path)
    assert path.read_text() == "the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_folder_written_atomically_replaces_the_previous_one_whole_or_not_at_all(tmp_path):
    model = tmp_path / "model"
    with atomic_dir(model) as folder:
        (folder / "model.pt").write_text("first")
        (folder / "meta.json").write_text("{}")
        assert not model.exists()   # readers see nothing until the folder is complete
    with pytest.raises(OSError), atomic_dir(model) as folder:
        (folder / "model.pt").write_text("second")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in model.iterdir()) == ["meta.json", "model.pt"]
    assert (model / "model.pt").read_text() == "first"
    with atomic_dir(model) as folder:
        (folder / "model.pt").write_text("third")
    assert [p.name for p in model.iterdir()] == ["model.pt"] and (model / "model.pt").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]   # no temporary or old folder left


def test_a_process_has_ended_only_when_this_host_can_tell(tmp_path):
    from dataclasses import replace

    from recforge.utils.process import ProcessId

    me = ProcessId.current()
    assert not me.has_ended()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert replace(me, pid=int(done.stdout), start="").has_ended()   # exited and reaped
    if me.start:   # Linux: the pid is another process's now, or the host has rebooted since
        assert replace(me, start=str(int(me.start) - 1)).has_ended()
        assert replace(me, boot="another-boot").has_ended()
        assert not replace(me, pid=int(done.stdout), namespace="pid:[1]").has_ended()   # another container's
    assert not replace(me, host="another-host", pid=int(done.stdout)).has_ended()


@pytest.fixture
def unwritable(tmp_path):
    """A folder path this process cannot write into: a read-only folder, or, as root (whom folder modes do not
    stop), a path under a regular file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        yield blocker / "folder"
        return
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("key", ["paths.output_dir", "tracking.log_dir"])
def test_unwritable_folder_is_one_line_before_anything_runs(tmp_path, unwritable, capsys, key):
    cfg = compose_train([*TINY], tmp_path)
    if key == "paths.output_dir":
        cfg.paths.output_dir = str(unwritable / "out")
    else:
        cfg.tracking.log_dir = str(unwritable / "logs")
    with pytest.raises(SystemExit) as exc:
        run_cli(train, cfg)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {key}={unwritable}/") and f"or set {key} to a folder you can write" in line
    assert not (tmp_path / "cache").exists()   # stopped before the data was read


def test_unwritable_run_folder_is_one_line_before_hydra_writes_into_it(tmp_path, unwritable, capsys):
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from recforge.config import CONFIG_DIR

    def task(cfg):
        raise AssertionError("the run started")

    GlobalHydra.instance().clear()
    hydra_ = Hydra.create_main_hydra2(task_name="train", config_search_path=create_config_search_path(CONFIG_DIR))
    try:
        with pytest.raises(SystemExit) as exc:
            hydra_.run(config_name="train", task_function=task, overrides=[f"paths.log_dir={unwritable}"],
                       with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: hydra.run.dir={unwritable}/runs/") and "paths.log_dir" in line


def test_one_user_dataset_trains_and_ships_its_model(tmp_path):
    rows = "".join(f"u1,i{i},{1 + i % 5},{i}\n" for i in range(40))
    (tmp_path / "one_user.csv").write_text("user,item,rating,timestamp\n" + rows)
    cfg = compose_train(["data=custom", f"data.path={tmp_path / 'one_user.csv'}", "trainer.max_epochs=1"], tmp_path)
    metrics = train(cfg)
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and metrics["test/hr_at_10"] == 1.0
    assert "model/MLmodel" in {a.path for a in client(tmp_path).list_artifacts(run.info.run_id, "model")}
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "model" / "model.pt").exists()


@pytest.mark.slow
def test_sigkilled_sweep_trial_is_retried_and_its_child_run_killed(tmp_path):
    import optuna

    from tests.integration.test_sweep_optuna import multirun

    sweep = ["hparams_search=bpr", "hydra/sweeper/pruner=none", "hydra.sweeper.study_name=killed",
             "hydra.sweeper.n_trials=1", "hydra.sweeper.heartbeat_interval=null"]   # the dead worker: by its pid
    proc = start(cli(tmp_path, *sweep, *KEEP_TRAINING, f"hydra.sweep.dir={tmp_path / 'sweep1'}", multirun=True),
                 tmp_path)
    kill_when(tmp_path / "sweep1" / "trial_0" / "checkpoints" / "last.ckpt", proc, tmp_path)
    (killed,) = [r for r in all_runs(tmp_path) if r.data.tags.get("optuna.trial_number") == "0"]
    assert killed.info.status == "RUNNING"

    multirun([*sweep, *TINY, "tracking.log_model=false", f"paths.log_dir={tmp_path / 'logs'}",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep2'}"])
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]   # the killed trial, then its retry
    children = {r.data.tags["optuna.trial_number"]: r for r in all_runs(tmp_path)
                if "optuna.trial_number" in r.data.tags}
    assert children["0"].info.status == "KILLED" and children["0"].data.tags["optuna.trial_state"] == "FAIL"
    assert children["1"].info.status == "FINISHED"
