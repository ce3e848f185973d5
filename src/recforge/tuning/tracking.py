"""MLflow for sweeps: one parent run per study, one nested child run per trial.

The sweeper creates the child run before it launches a trial and passes its id to the job
(``tracking.run_id``), so the training run logs into it; afterwards the sweeper records the trial's
state (``optuna.trial_state``: COMPLETE, PRUNED or FAIL, run status FINISHED, KILLED or FAILED), and logs the
trial's params itself when the job failed before it could. The parent run id is kept in the study's user
attributes, so resumed sweeps and other workers log under the same parent.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from recforge.tracking.tracker import MLflowTracker, mlflow_client
from recforge.tuning.study import PARENT_RUN_ATTR, despite_racers

log = logging.getLogger("recforge.tuning")

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class StudyRuns:
    """Parent and child MLflow runs of one study, in the same store the training runs use."""

    def __init__(self, uri: str | None = None, experiment_name: str = "recforge", log_dir: str = "logs") -> None:
        tracker = MLflowTracker(uri=uri, experiment_name=experiment_name, log_dir=log_dir, log_model=False)
        self.uri = tracker.uri
        self.client = despite_racers(lambda: mlflow_client(tracker.uri))   # workers sharing one new store
        self.experiment_id = self._experiment(experiment_name, tracker.artifact_location)
        self.parent_id: str | None = None

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(5):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:   # another worker created it meanwhile
                time.sleep(0.2)
        raise RuntimeError(f"cannot create MLflow experiment {name!r}")

    def start_parent(self, study, params: dict[str, Any], wait: float = 0.0) -> str:
        """The study's parent run: reused when the study already has one (resume, other workers).

        Only the worker that created the study creates it; the others (``wait`` > 0) wait up to ``wait`` seconds
        for it to appear before they make one themselves (its creator died, or ran without MLflow)."""
        from mlflow.entities import Param

        deadline = time.monotonic() + wait
        existing = study.user_attrs.get(PARENT_RUN_ATTR)
        while existing is None and time.monotonic() < deadline:
            time.sleep(0.5)
            existing = study.user_attrs.get(PARENT_RUN_ATTR)
        if existing and self._exists(existing):
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{study.study_name}",
                                     tags={"optuna.study_name": study.study_name, "recforge.sweep": "parent"})
        run_id = run.info.run_id
        if study.user_attrs.get(PARENT_RUN_ATTR) in (None, existing):
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
        time.sleep(0.1)
        winner = study.user_attrs.get(PARENT_RUN_ATTR)   # two workers started together: one parent wins
        if winner != run_id and winner and self._exists(winner):
            self.client.delete_run(run_id)
            self.parent_id = winner
            return winner
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])
        self.parent_id = run_id
        return run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def start_child(self, study_name: str, number: int) -> str:
        tags = {"mlflow.parentRunId": self.parent_id or "", "optuna.study_name": study_name,
                "optuna.trial_number": str(number), "recforge.sweep": "trial"}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags=tags)
        return run.info.run_id

    def finish_child(self, run_id: str, state: str, params: dict[str, Any], values: dict[str, float] | None,
                     reason: str | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.get_run(run_id)
        tags = [RunTag("optuna.trial_state", state)]
        if reason:
            tags.append(RunTag("optuna.fail_reason", reason[:5000]))
        missing = [Param(k, str(v)[:250]) for k, v in params.items() if k not in run.data.params]
        now = int(time.time() * 1000)
        metrics = [Metric(f"objective/{k}", v, now, 0) for k, v in (values or {}).items()]
        self.client.log_batch(run_id, metrics=metrics, params=missing, tags=tags)
        self.client.set_terminated(run_id, RUN_STATUS[state])

    def kill_child(self, run_id: str) -> None:
        """The child run of a trial whose worker died (the trial is FAIL and run again): KILLED, unless its training
        run's next start on this host has closed it already."""
        from mlflow.entities import RunTag

        if not self._exists(run_id):
            return
        self.client.log_batch(run_id, tags=[RunTag("optuna.trial_state", "FAIL"),
                                            RunTag("optuna.fail_reason", "its worker died; the trial is run again")])
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")

    def finish_parent(self, info: dict[str, Any], files: list[Path]) -> None:
        from mlflow.entities import Metric, RunTag

        if self.parent_id is None:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(info[k]), now, 0) for k in ("n_complete", "n_pruned", "n_failed")]
        tags = []
        if "best_value" in info:
            metrics.append(Metric(f"best/{info['metrics'][0]}", float(info["best_value"]), now, 0))
            tags.append(RunTag("optuna.best_trial", str(info["best_trial"])))
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        for path in files:
            self.client.log_artifact(self.parent_id, str(path), "sweep")
        self.client.set_terminated(self.parent_id, "FINISHED")

    def fail_parent(self) -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, "FAILED")
