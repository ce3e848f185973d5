"""The Optuna sweeper under ``hydra -m``: trials in storage, MLflow parent/child runs, pruning, failures as
data, the best experiment file, resume after SIGKILL and concurrent workers on one storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from hydra._internal.hydra import Hydra  # noqa: E402
from hydra._internal.utils import create_config_search_path  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

import sqlalchemy.exc  # noqa: E402

from recforge.config import CONFIG_DIR  # noqa: E402
from recforge.tuning.study import SURPLUS, open_storage  # noqa: E402

TINY = ["data.n_users=200", "data.n_items=100", "data.mean_interactions=15", "trainer.max_epochs=3",
        "tracking.log_model=false", "callbacks.early_stopping.patience=50"]


@pytest.fixture(autouse=True)
def own_mlflow_store():
    """MLflow's set_tracking_uri (called by Lightning's logger) exports MLFLOW_TRACKING_URI, which the
    tracking config reads: without this, a later test in this process would log into this test's store."""
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def env_paths(tmp_path: Path) -> list[str]:
    return [f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]


def multirun(overrides: list[str], config_name: str = "train"):
    """``recforge-train -m <overrides>`` in this process (no Lightning import per trial)."""
    from recforge.train import main

    GlobalHydra.instance().clear()
    hydra_ = Hydra.create_main_hydra2(task_name="train", config_search_path=create_config_search_path(CONFIG_DIR))
    try:
        # `recforge-train -m` adds hydra.mode=MULTIRUN (jobs then re-raise user mistakes instead of exiting)
        return hydra_.multirun(config_name=config_name, task_function=main.__wrapped__,
                               overrides=[*overrides, "hydra.mode=MULTIRUN"],
                               with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()


def load(tmp_path: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}")


def states(study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]


def test_four_trial_sweep_stores_trials_child_runs_and_best_experiment(tmp_path, capsys):
    from mlflow import MlflowClient

    multirun(["hparams_search=bpr", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4",
              "hydra.sweeper.study_name=s4", "hydra.sweeper.sampler.n_startup_trials=2",
              "model.embedding_dim=choice(8,16)", *TINY, *env_paths(tmp_path)])
    study = load(tmp_path, "s4")
    assert states(study) == ["COMPLETE"] * 4
    assert {t.params["model.embedding_dim"] for t in study.trials} <= {8, 16}
    assert all(0.0 <= t.value <= 1.0 for t in study.trials)
    # every trial ran in its own output folder, named after the trial
    assert sorted(p.name for p in (tmp_path / "sweep").glob("trial_*")) == [f"trial_{i}" for i in range(4)]

    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("recforge")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("recforge.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("recforge.sweep") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.trial_state"] == "COMPLETE" and child.info.status == "FINISHED"
        number = int(child.data.tags["optuna.trial_number"])
        trial = study.trials[number]
        # the training run logged into the child run: its config params and the objective it returned
        assert child.data.params["model.embedding_dim"] == str(trial.params["model.embedding_dim"])
        # (the best checkpoint's validation; the val/ series ends at the last epoch)
        assert child.data.metrics["val_best/ndcg_at_10"] == pytest.approx(trial.value)
    assert "sweep/optimization_results.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")] \
        or any(a.path.endswith("optimization_results.yaml") for a in client.list_artifacts(parent.info.run_id, "sweep"))

    out = capsys.readouterr().out
    assert "4 complete, 0 pruned, 0 failed" in out and f"best trial {study.best_trial.number}" in out
    best = tmp_path / "sweep" / "experiment" / "best_s4.yaml"
    text = best.read_text()
    assert text.startswith("# @package _global_")
    # the experiment file composes and reproduces the best trial's parameters
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path / 'sweep'}]", "experiment=best_s4"])
    for key, value in study.best_trial.params.items():
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert got == pytest.approx(value)
    assert cfg.data.n_users == 200 and cfg.model._target_.endswith("MatrixFactorization") and not cfg.model.use_bias

    # rerunning the same command resumes: the study already has n_trials finished trials, nothing runs
    multirun(["hparams_search=bpr", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4",
              "hydra.sweeper.study_name=s4", "model.embedding_dim=choice(8,16)", *TINY, *env_paths(tmp_path)])
    assert len(load(tmp_path, "s4").trials) == 4


def test_median_pruner_prunes_the_bad_trial_and_failures_are_data(tmp_path):
    from mlflow import MlflowClient

    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}"
    (tmp_path / "logs").mkdir()
    study = optuna.create_study(storage=storage, study_name="prune", direction="maximize")
    # the order is fixed by queueing: a good trial, a hopeless one (lr ~ 0), an invalid one (negative lr)
    for lr in (0.05, 1e-9, -1.0):
        study.enqueue_trial({"optimizer.lr": lr})
    multirun(["hparams_search=bpr", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
              "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=prune",
              "hydra.sweeper.params={optimizer.lr:'interval(-1.0,0.1)'}", "hydra.sweeper.heartbeat_interval=null",
              "trainer.max_epochs=4", *TINY[:3], *TINY[4:], *env_paths(tmp_path)])
    study = optuna.load_study(study_name="prune", storage=storage)
    good, bad, invalid = sorted(study.get_trials(), key=lambda t: t.number)
    assert good.state.name == "COMPLETE" and len(good.intermediate_values) == 4
    assert bad.state.name == "PRUNED"
    last = max(bad.intermediate_values)   # stopped early, at an epoch where it was behind the good trial
    assert last < 3 and bad.intermediate_values[last] < good.intermediate_values[last]
    assert invalid.state.name == "FAIL" and "optimizer.lr=-1.0 must not be negative" in invalid.user_attrs["fail_reason"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("recforge").experiment_id])
    by_trial = {r.data.tags["optuna.trial_number"]: r for r in runs if "optuna.trial_number" in r.data.tags}
    assert by_trial["1"].data.tags["optuna.trial_state"] == "PRUNED" and by_trial["1"].info.status == "KILLED"
    assert by_trial["2"].data.tags["optuna.trial_state"] == "FAIL" and by_trial["2"].info.status == "FAILED"
    assert "must not be negative" in by_trial["2"].data.tags["optuna.fail_reason"]
    assert by_trial["2"].data.params["optimizer.lr"] == "-1.0"


def test_wrong_optimized_metric_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        multirun(["hparams_search=bpr", "optimized_metric=val/ndcg_at_100", *TINY, *env_paths(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "optimized_metric=val/ndcg_at_100 is not a metric this run produces" in err
    assert "val/ndcg_at_10" in err and "test/recall_at_20" in err
    assert not list(tmp_path.glob("sweep/trial_*"))             # nothing was trained
    assert not (tmp_path / "logs" / "optuna.db").exists()     # checked before the study was even created


@pytest.mark.slow
def test_grid_sampler_and_two_objectives(tmp_path):
    multirun(["hparams_search=bpr_multiobjective", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10",
              "hydra.sweeper.study_name=grid2", "model.embedding_dim=choice(8,16)",
              # a value on the command line fixes a parameter of the search file
              "optimizer.lr=0.01", "optimizer.weight_decay=0.0", "loss.num_negatives=1",
              "trainer.max_epochs=1", "tracking=none", *TINY[:3], *env_paths(tmp_path)])
    study = load(tmp_path, "grid2")
    assert len(study.trials) == 2 and [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert sorted(t.params["model.embedding_dim"] for t in study.trials) == [8, 16]
    assert all(len(t.values) == 2 for t in study.trials)
    files = list((tmp_path / "sweep" / "experiment").glob("pareto_grid2_trial*.yaml"))
    assert 1 <= len(files) <= 2


def test_search_space_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.recforge_optuna_sweeper.optuna_sweeper import distribution_from_override, grid_values

    parse = OverridesParser.create().parse_overrides
    cases = {
        "a=interval(0.1, 0.5)": FloatDistribution(0.1, 0.5),
        "a=int(interval(8, 256))": IntDistribution(8, 256),
        "a=tag(log, interval(1e-5, 1e-1))": FloatDistribution(1e-5, 1e-1, log=True),
        "a=tag(log, int(interval(8, 512)))": IntDistribution(8, 512, log=True),
        "a=range(16, 129, 16)": IntDistribution(16, 128, step=16),
        "a=range(0.0, 1.0, 0.25)": FloatDistribution(0.0, 0.75, step=0.25),
        "a=choice(1, 2, 4)": CategoricalDistribution([1, 2, 4]),
    }
    for line, expected in cases.items():
        assert distribution_from_override(parse([line])[0])[0] == expected, line
    dist, texts = distribution_from_override(parse(["a=choice([64,32],[128,64],sgd)"])[0])
    assert dist.choices == ("[64,32]", "[128,64]", "sgd") and texts["[64,32]"] == "[64,32]"
    assert grid_values("a", IntDistribution(16, 64, step=16)) == [16, 32, 48, 64]


def test_storage_strings(tmp_path, monkeypatch):
    from recforge.errors import RecForgeError
    from recforge.tuning.study import display_storage, normalize_storage, resolve_directions

    monkeypatch.chdir(tmp_path)
    assert normalize_storage("sqlite:///logs/optuna.db") == f"sqlite:///{tmp_path}/logs/optuna.db"
    assert normalize_storage("logs/optuna.log") == f"{tmp_path}/logs/optuna.log"
    assert normalize_storage(None) is None
    assert display_storage("postgresql://bob:secret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    with pytest.raises(RecForgeError, match="hydra.sweeper.storage"):
        normalize_storage("logs/optuna.db")
    assert resolve_directions(["val/ndcg_at_10", "val/rmse"], None) == ["maximize", "minimize"]
    with pytest.raises(RecForgeError, match="one direction per metric"):
        resolve_directions(["val/ndcg_at_10", "val/coverage_at_10"], "maximize")


def test_a_trial_asked_past_n_trials_is_surplus():
    """Two workers that see the last free slot at once both ask: the later trial finds n_trials before it and is
    surplus; a trial whose worker died (FAIL, no fail_reason) leaves its slot to its retry."""
    from optuna.trial import TrialState

    from recforge.tuning.study import FAIL_REASON, count_trials, is_surplus

    study = optuna.create_study()
    done, failed_as_data, died, running = (study.ask() for _ in range(4))
    study.tell(done, 1.0)
    failed_as_data.set_user_attr(FAIL_REASON, "ValueError: objective is not finite")
    study.tell(failed_as_data, state=TrialState.FAIL)
    study.tell(died, state=TrialState.FAIL)
    first, second = study.ask(), study.ask()   # the last slot of n_trials=4, asked twice at the same instant
    assert not is_surplus(study, first, 4) and is_surplus(study, second, 4)
    second.set_user_attr(SURPLUS, True)
    study.tell(second, state=TrialState.FAIL)
    counts = count_trials(study)
    assert (counts.done, counts.running, counts.failed, counts.surplus) == (2, 2, 2, 1)
    assert not is_surplus(study, first, 4)   # the surplus trial after it changes nothing


def test_workers_open_a_new_sqlite_tracking_store_one_at_a_time(tmp_path):
    """Sweep workers that start together share one new MLflow SQLite store: each opens it under the lock file beside
    it, so one creates the tables while the others wait (racing, the loser failed in MLflow's migrations)."""
    import fcntl
    import threading

    from recforge.tracking.tracker import mlflow_client, sqlite_store_uri

    clients = []
    with open(tmp_path / "mlflow.db.lock", "w") as lock:   # another worker is creating the store
        fcntl.flock(lock, fcntl.LOCK_EX)
        opener = threading.Thread(target=lambda: clients.append(mlflow_client(sqlite_store_uri(tmp_path))))
        opener.start()
        opener.join(timeout=3)
        assert opener.is_alive() and not (tmp_path / "mlflow.db").exists()
    opener.join(timeout=120)
    assert [e.name for e in clients[0].search_experiments()] == ["Default"]


def test_every_model_with_parameters_has_a_search_space():
    conf = Path(CONFIG_DIR)
    models = {p.stem for p in (conf / "model").glob("*.yaml")} - {"pop"}   # pop has nothing to tune
    searches = {p.stem for p in (conf / "hparams_search").glob("*.yaml")}
    assert models <= searches, f"add conf/hparams_search/ files for {sorted(models - searches)}"


# ---------------------------------------------------------------------------- several processes (slow)
def cli(tmp_path: Path, *overrides: str) -> list[str]:
    tiny = [a for a in TINY if not a.startswith("tracking.")]
    return [sys.executable, "-m", "recforge.train", "-m", "hparams_search=bpr", *tiny, "tracking=none",
            f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]


def count_states(storage: str, name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_resume_after_sigkill_reaches_n_trials(tmp_path, kind):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else str(tmp_path / "optuna.log")
    args = cli(tmp_path, f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resume",
               "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
               "trainer.max_epochs=40", "hydra/sweeper/pruner=none", f"hydra.sweep.dir={tmp_path / 'sweep1'}")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 500     # generous: a loaded 2-core machine imports Lightning slowly
    while time.time() < deadline:   # kill -9 in the middle of the second trial
        time.sleep(2)
        if (tmp_path / "optuna.db").exists() or (tmp_path / "optuna.log").exists():
            try:
                counts = count_states(storage, "resume")
            except (KeyError, sqlalchemy.exc.OperationalError):  # no study yet, or its tables are being created
                continue
            if counts.get("COMPLETE", 0) >= 1 and counts.get("RUNNING", 0) == 1:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = count_states(storage, "resume")
    assert before.get("RUNNING") == 1 and before.get("COMPLETE", 0) >= 1
    args[args.index("trainer.max_epochs=40")] = "trainer.max_epochs=2"
    args[-1] = f"hydra.sweep.dir={tmp_path / 'sweep2'}"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = count_states(storage, "resume")
    # the dead worker's trial was failed (heartbeat / dead pid), retried, and 4 trials finished in total
    assert after.get("COMPLETE") == 4 and after.get("FAIL") == 1 and "RUNNING" not in after, after
    study = optuna.load_study(study_name="resume", storage=open_storage(storage))
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert "4 complete, 0 pruned, 1 failed" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])   # PostgreSQL, with a fault: test_sweep_workers.py
def test_two_workers_share_one_study(tmp_path, kind):
    storage = {"sqlite": f"sqlite:///{tmp_path / 'optuna.db'}", "journal": str(tmp_path / "optuna.log")}[kind]
    common = [f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.study_name=shared", "hydra.sweeper.n_trials=6",
              "hydra/sweeper/pruner=none", "trainer.max_epochs=2"]
    procs = [subprocess.Popen(cli(tmp_path, *common, f"hydra.sweep.dir={tmp_path / f'w{i}'}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    # one study, each trial run by exactly one worker, exactly n_trials: a trial asked at the same instant as the
    # last one is surplus, told FAIL and never run
    assert len(complete) == 6 and all(t.state.name == "COMPLETE" or SURPLUS in t.user_attrs for t in trials)
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2
    dirs = [p.name for i in range(2) for p in (tmp_path / f"w{i}").glob("trial_*")]
    assert sorted(dirs) == sorted(f"trial_{t.number}" for t in complete)


@pytest.mark.slow
def test_basic_sweeper_still_runs_every_job_with_its_own_run(tmp_path, capsys):
    """``recforge-train -m model=...`` without Optuna: each job is its own MLflow run; a job's config mistake
    is printed on one line and does not stop the other jobs (it surfaces at the end of the sweep)."""
    from mlflow import MlflowClient

    from recforge.errors import RecForgeError

    with pytest.raises(RecForgeError, match="optimizer.lr=-1.0 must not be negative"):
        multirun(["model=pop", "optimizer.lr=-1.0,0.01,0.001", *TINY, *env_paths(tmp_path)])
    assert "error: optimizer.lr=-1.0 must not be negative" in capsys.readouterr().err
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json")) == ["1", "2"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("recforge").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and {r.data.params["optimizer.lr"] for r in finished} == {"0.01", "0.001"}
    assert all("mlflow.parentRunId" not in r.data.tags for r in runs)


def test_every_search_file_composes_and_names_existing_keys():
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.recforge_optuna_sweeper.optuna_sweeper import distribution_from_override

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for path in sorted((Path(CONFIG_DIR) / "hparams_search").glob("*.yaml")):
            cfg = compose("train", overrides=[f"hparams_search={path.stem}"], return_hydra_config=True)
            assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.optimized_metric
            for key, value in cfg.hydra.sweeper.params.items():
                distribution_from_override(OverridesParser.create().parse_overrides([f"{key}={value}"])[0])
                node = cfg
                for part in key.split("."):
                    assert part in node, f"{path.name}: {key} is not a key of the composed config"
                    node = node[part]
