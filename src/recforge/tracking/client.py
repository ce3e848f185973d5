"""Reading from an MLflow tracking store: the store to read, a run, its logged checkpoint and metrics."""

from __future__ import annotations

import os
from pathlib import Path

from recforge.errors import RecForgeError
from recforge.tracking.tracker import sqlite_store_uri


def fetch_checkpoint(run_id: str, tracking_uri: str | None, log_dir: str, into: Path) -> Path:
    """Download the checkpoint run ``run_id`` logged (``checkpoints/*.ckpt``) into ``into``; its path."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or sqlite_store_uri(log_dir)
    try:
        local = MlflowClient(uri).download_artifacts(run_id, "checkpoints", str(into))
    except MlflowException as exc:
        raise RecForgeError(f"run_id={run_id}: no checkpoint artifact in {uri} ({exc.message})") from None
    found = sorted(Path(local).glob("*.ckpt"))
    if not found:
        raise RecForgeError(f"run_id={run_id}: the run logged no checkpoint")
    return found[0]


def final_metrics(logged: dict[str, float]) -> dict[str, float]:
    """A run's results from the last values it logged: a trained model's ``val/*`` series ends at its last epoch,
    and the best checkpoint's re-validation, ``val_best/*``, is its validation result (as ``val/*``)."""
    best = {"val/" + k[len("val_best/"):]: v for k, v in logged.items()
            if k.startswith("val_best/") and k != "val_best/epoch"}
    return {**logged, **best}


def logged_metrics(run_id: str, tracking_uri: str | None, log_dir: str) -> dict[str, float]:
    """The results run ``run_id`` logged (:func:`final_metrics` of the last values)."""
    from mlflow.tracking import MlflowClient

    return final_metrics(MlflowClient(tracking_uri or sqlite_store_uri(log_dir)).get_run(run_id).data.metrics)


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the store ``recforge-train`` writes by default (``logs/mlflow.db``)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return sqlite_store_uri(os.environ.get("RECFORGE_LOG_DIR", Path(os.environ.get("RECFORGE_ROOT", ".")) / "logs"))


def tracking_client(uri: str | None = None):
    """An ``MlflowClient`` for ``uri`` (default: :func:`default_tracking_uri`); a missing SQLite file is an error."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise RecForgeError(f"no tracking store at {uri}: pass --tracking-uri (e.g. sqlite:///logs/mlflow.db, where "
                            "recforge-train logs by default, or http://host:5000) or set MLFLOW_TRACKING_URI")
    return MlflowClient(uri)


def get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise RecForgeError(f"run {run_id} not found in tracking store {client.tracking_uri} "
                            f"({exc.message.splitlines()[0] if exc.message else exc}); "
                            "pass --tracking-uri or set MLFLOW_TRACKING_URI") from None
