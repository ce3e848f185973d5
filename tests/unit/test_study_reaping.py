"""A worker killed after asking for a trial and before its first heartbeat leaves a RUNNING trial that no heartbeat
check ever finds stale; ``reap_dead_trials`` fails and retries it when its worker was on this host and has ended.
And the objective's check: a test metric is allowed, with a warning."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from recforge.tuning.study import check_objective, reap_dead_trials


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def study_with_heartbeats(tmp_path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1,
                                         grace_period=2)
    return optuna.create_study(study_name="s", storage=storage)


def test_a_trial_that_never_beat_is_reaped_when_its_local_worker_is_gone(tmp_path):
    study = study_with_heartbeats(tmp_path)
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    alive = study.ask()
    alive.set_user_attr("worker", f"{socket.gethostname()}:1")  # pid 1 runs for as long as the machine does
    remote = study.ask()
    remote.set_user_attr("worker", f"another-host:{dead_pid()}")  # another host's process: its heartbeat decides

    reaped = reap_dead_trials(study, max_retry=1)

    assert [t.number for t in reaped] == [orphan.number]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == TrialState.FAIL
    assert states[alive.number] == states[remote.number] == TrialState.RUNNING
    retry = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    assert len(retry) == 1 and retry[0].system_attrs.get("failed_trial") == orphan.number
    assert reap_dead_trials(study, max_retry=1) == []  # reaped once only


def test_a_test_objective_is_allowed_with_a_warning_and_a_validation_one_without(caplog):
    names = ["val/ndcg_at_10", "test/ndcg_at_10"]
    with caplog.at_level("WARNING", logger="recforge.tuning"):
        check_objective(["val/ndcg_at_10"], names)
        assert not caplog.records
        check_objective(["test/ndcg_at_10"], names)
    assert "optimized_metric=test/ndcg_at_10 chooses on the test part" in caplog.text
    assert "choose on val/ndcg_at_10" in caplog.text
