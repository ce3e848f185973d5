"""One MLflow run per training run: config, tags, metrics (through Lightning's logger), artifacts, model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from recforge.utils.io import writable_folder
from recforge.utils.process import ProcessId

log = logging.getLogger("recforge")

# the process a run belongs to (recforge.utils.process says how its end is known): ProcessId field -> run tag
PROCESS_TAGS = {"host": "recforge.host", "pid": "recforge.pid", "boot": "recforge.boot_id",
                "namespace": "recforge.pid_namespace", "start": "recforge.process_start"}

def sqlite_store_uri(log_dir: str | os.PathLike) -> str:
    """The SQLite tracking store ``recforge-train`` writes under ``log_dir`` when no server is given."""
    return f"sqlite:///{Path(log_dir).expanduser().resolve()}/mlflow.db"


def mlflow_client(uri: str):
    """``MlflowClient(uri)``. A SQLite store is opened under a lock file beside it: processes that start together
    (sweep workers) would otherwise race to create its tables, and the loser fails in MLflow's migrations."""
    import fcntl

    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    with open(f"{uri[len('sqlite:///'):]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        return MlflowClient(uri)


class MLflowTracker:
    """Owns the MLflow run of one training run.

    ``uri`` (the config fills it from ``MLFLOW_TRACKING_URI``) selects a tracking server; without one the store is the
    SQLite file ``<log_dir>/mlflow.db`` with artifacts under ``<log_dir>/mlartifacts``. Lightning's ``MLFlowLogger``
    logs the per-epoch metrics into the same run.

    A run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM: :meth:`finish`). A run whose process was
    killed with SIGKILL, or whose machine went down, cannot close itself: it carries its process's identity as tags
    (``recforge.host``, ``recforge.pid``, ...), and the next run started on that host with the same store marks it
    KILLED (:meth:`close_dead_runs`).
    """

    def __init__(self, uri: str | None = None, experiment_name: str = "recforge", run_name: str | None = None,
                 log_dir: str = "logs", log_model: bool = True, run_id: str | None = None) -> None:
        log_path = Path(log_dir).expanduser().resolve()
        self.uri = uri or sqlite_store_uri(log_path)
        self.artifact_location = None if uri else (log_path / "mlartifacts").as_uri()
        if self.uri.startswith("sqlite:"):
            writable_folder(log_path, "tracking.log_dir")
        self.experiment_name, self.run_name, self.log_model = experiment_name, run_name, log_model
        self.existing_run_id = run_id   # log into this run (a sweep's child run) instead of starting one
        self._logger = None
        # Lightning's MLFlowLogger and mlflow.set_tracking_uri export MLFLOW_TRACKING_URI; restore it when the
        # run ends so a later run in the same process (a notebook, a sweep, tests) is not sent to this store
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")

    @property
    def logger(self):
        """The Lightning logger writing into this run (created on first use)."""
        if self._logger is None:
            from recforge.tracking.run_logger import RunLogger

            self._logger = RunLogger(experiment_name=self.experiment_name, run_name=self.run_name,
                                        tracking_uri=self.uri, artifact_location=self.artifact_location,
                                        log_model=False, run_id=self.existing_run_id)
        return self._logger

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    @property
    def client(self):
        return self.logger.experiment

    def start(self, params: dict[str, str], tags: dict[str, str], config_yaml: str) -> None:
        from mlflow.entities import RunTag
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank == 0:   # under DDP the other processes log nothing
            self.close_dead_runs()
        process = ProcessId.current()
        tags = {**tags, **{tag: getattr(process, field) for field, tag in PROCESS_TAGS.items()}}
        self.log_params(params)
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def close_dead_runs(self) -> list[str]:
        """Mark KILLED the runs of this store left RUNNING by a process of this host that has ended (a SIGKILL, a
        crash); return their ids. Runs of other hosts, and runs without the process tags, are left alone."""
        from mlflow.exceptions import MlflowException

        host = ProcessId.current().host
        query = f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAGS['host']}` = '{host}'"
        try:
            experiments = [e.experiment_id for e in self.client.search_experiments()]
            running = self.client.search_runs(experiments, query, max_results=1000)
        except MlflowException as exc:   # e.g. a server that lets this user search only some experiments
            log.warning("MLflow: cannot look for runs left RUNNING by ended processes (%s)", exc)
            return []
        closed = []
        for run in running:
            tags = run.data.tags
            if not tags.get(PROCESS_TAGS["pid"], "").isdigit():
                continue
            process = ProcessId(**{field: tags.get(tag, "") for field, tag in PROCESS_TAGS.items() if field != "pid"},
                                pid=int(tags[PROCESS_TAGS["pid"]]))
            if run.info.run_id == self.run_id or not process.has_ended():
                continue
            reason = (f"its process (pid {process.pid} on {host}) ended without closing the run (SIGKILL or a crash); "
                      f"marked KILLED by run {self.run_id}")
            self.client.set_tag(run.info.run_id, "recforge.end_reason", reason)
            self.client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow run %s: %s", run.info.run_id, reason)
            closed.append(run.info.run_id)
        return closed

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = list(params.items())
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[start : start + 100]])

    def log_dataset(self, name: str, digest: str, source: str | None, frame, counts: dict[str, int]) -> None:
        """The run's data as an MLflow dataset input (the UI's Datasets panel): ``name`` (dataset/split), ``digest``
        (the split fingerprint), where the raw files came from (``None``: generated in code), the training part's
        schema, and the part sizes as the input's tags."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
        tags = [InputTag("mlflow.data.context", "training"), *(InputTag(k, str(v)) for k, v in counts.items())]
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=tags)]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException:   # another run (a sweep worker) stored the same dataset at the same instant
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_artifacts(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def log_pyfunc(self, bundle_dir: Path, input_example: Any) -> None:
        """Log the model bundle as an MLflow pyfunc model (models-from-code), loadable by ``runs:/<id>/model``,
        with its signature (:func:`recforge.tracking.pyfunc_model.model_signature`) and ``input_example``."""
        if not self.log_model:
            return
        import mlflow

        from recforge.tracking import pyfunc_model

        import pandas as pd

        if isinstance(input_example, pd.DataFrame) and "exclude_seen" not in input_example:
            input_example = input_example.assign(exclude_seen=True)  # show every input the signature names
        previous = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri also sets this variable
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=pyfunc_model.__file__,
                    artifacts={"bundle": str(bundle_dir)},
                    input_example=input_example,
                    signature=pyfunc_model.model_signature(bundle_dir),
                    pip_requirements=["recforge", "torch", "pandas", "numpy", "scipy", "pyarrow"],
                )
        finally:
            mlflow.set_tracking_uri(previous)

    def finish(self, status: str) -> None:
        """``FINISHED``, ``FAILED`` or ``KILLED``; a run that raised is never left RUNNING."""
        try:
            if self._logger is not None and self._logger._run_id is not None:
                self.client.set_terminated(self.run_id, status)
        finally:
            if self._env_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = self._env_uri
