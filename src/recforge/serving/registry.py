"""Where a served model comes from: the MLflow Model Registry (``models:/<name>@<alias>``), a run
(``runs:/<run id>/model``) or a bundle directory; and registering a run's model under a name and alias.

``python -m recforge.serving.registry --run-id <id> --name recforge --alias champion`` registers from the shell.
MLflow is imported only here and only when a registry or run source is used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from recforge.errors import RecForgeError
from recforge.utils.trust import trust

MODEL_ARTIFACT = "model"  # the pyfunc model's name in a run (tracker.log_pyfunc)


@dataclass(frozen=True)
class ModelRef:
    """What is (to be) served. ``uri`` is the source as given (``models:/...``, ``runs:/...`` or a directory);
    ``run_id``/``name``/``version`` are filled in by :func:`resolve`."""

    uri: str
    run_id: str | None = None
    name: str | None = None
    version: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.uri.startswith("models:/")

    @property
    def is_bundle(self) -> bool:
        return not self.uri.startswith(("models:/", "runs:/"))

    @property
    def model_id(self) -> str:
        """A short id of the served model: ``name/version``, else the run id, else ``bundle:<dir>``."""
        if self.name and self.version:
            return f"{self.name}/{self.version}"
        return self.run_id or f"bundle:{self.uri}"

    def to_dict(self) -> dict[str, str | None]:
        return {"uri": self.uri, "model_id": self.model_id, "run_id": self.run_id, "name": self.name,
                "model_version": self.version}


def add_model_source_args(parser: argparse.ArgumentParser) -> None:
    """``--model`` / ``--run-id`` / ``--bundle`` (exactly one; see :func:`source_uri`) and ``--tracking-uri``."""
    source = parser.add_argument_group("model (exactly one)")
    source.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<id>/model")
    source.add_argument("--run-id", help="an MLflow run id (uses runs:/<id>/model)")
    source.add_argument("--bundle", help="a model bundle directory (a run's <output_dir>/model)")
    source.add_argument("--ckpt", help="a recforge-train checkpoint (.ckpt); its data is rebuilt from the stored "
                                       "config, so the raw files must be reachable (RECFORGE_DATA_DIR)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--trust", action="append", type=_trusted, metavar="CLASS",
                        help="a class besides RecForge's own that the model may name (pkg.mod.Class or pkg.*; "
                             "repeatable; also RECFORGE_TRUSTED_TARGETS)")


def _trusted(pattern: str) -> str:
    """argparse type of ``--trust``: trusts the pattern as it is parsed."""
    try:
        trust(pattern)
    except RecForgeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return pattern


def source_uri(model: str | None = None, run_id: str | None = None, bundle: str | None = None,
               ckpt: str | None = None) -> str:
    """The one model source of ``--model`` / ``--run-id`` / ``--bundle`` / ``--ckpt`` (exactly one)."""
    given = [(flag, v) for flag, v in (("--model", model), ("--run-id", run_id), ("--bundle", bundle),
                                       ("--ckpt", ckpt)) if v]
    if len(given) != 1:
        names = ", ".join(flag for flag, _ in given) or "none"
        raise RecForgeError(f"give exactly one of --model models:/<name>@<alias>, --run-id <id>, --bundle <dir> or "
                            f"--ckpt <file.ckpt> (got {names})")
    flag, value = given[0]
    if flag == "--run-id":
        return f"runs:/{value}/{MODEL_ARTIFACT}"
    if flag == "--model" and not value.startswith(("models:/", "runs:/")):
        raise RecForgeError(f"--model {value}: expected models:/<name>@<alias>, models:/<name>/<version> or "
                            f"runs:/<run id>/model (use --bundle for a directory)")
    return value


def _client(tracking_uri: str | None):
    """A client of ``tracking_uri``, else of the store recforge-train logs to (MLFLOW_TRACKING_URI, else
    logs/mlflow.db), not MLflow's own default (./mlflow.db)."""
    from mlflow.tracking import MlflowClient

    from recforge.tracking.client import default_tracking_uri

    return MlflowClient(tracking_uri or default_tracking_uri())


def register(run_id: str, name: str, alias: str | None = "champion", tracking_uri: str | None = None) -> ModelRef:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` and point ``alias`` at it."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
        version = client.create_model_version(name, source, run_id=run_id)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise RecForgeError(f"cannot register run {run_id} as {name!r}: {exc.message}") from None
    return ModelRef(f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}", run_id, name,
                    str(version.version))


def set_alias(name: str, alias: str, version: str | int, tracking_uri: str | None = None) -> None:
    """Point ``models:/<name>@<alias>`` at ``version`` (a served model polling the alias picks it up)."""
    from mlflow.exceptions import MlflowException

    try:
        _client(tracking_uri).set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise RecForgeError(f"cannot set alias {name}@{alias} -> {version}: {exc.message}") from None


def resolve(uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Fill in run id (and registry name/version) of ``uri``; a bundle directory resolves to itself."""
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        if not run_id:
            raise RecForgeError(f"{uri}: expected runs:/<run id>/model")
        return ModelRef(uri, run_id=run_id)
    if not uri.startswith("models:/"):
        if uri.endswith(".ckpt"):
            if not Path(uri).is_file():
                raise RecForgeError(f"--ckpt {uri}: file not found")
            return ModelRef(str(Path(uri).resolve()))
        if not (Path(uri) / "spec.pt").is_file():
            raise RecForgeError(f"--bundle {uri}: not a model bundle (no spec.pt); give a run's <output_dir>/model "
                                f"folder")
        return ModelRef(str(Path(uri).resolve()))
    from mlflow.exceptions import MlflowException

    spec = uri[len("models:/"):]
    client = _client(tracking_uri)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in spec:
            name, number = spec.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            raise RecForgeError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    except MlflowException as exc:
        raise RecForgeError(f"{uri}: {exc.message.rstrip('.')}; register a run with `python -m "
                            f"recforge.serving.registry --run-id <id> --name <name> --alias <alias>` "
                            f"(tracking URI: {tracking_uri or 'MLFLOW_TRACKING_URI / default'})") from None
    if not version.run_id:
        raise RecForgeError(f"{uri}: version {version.version} has no run; register a RecForge run's model")
    return ModelRef(uri, run_id=version.run_id, name=name, version=str(version.version))


def load_bundle(ref: ModelRef, tracking_uri: str | None = None):
    """Load the :class:`~recforge.tracking.bundle.Bundle` of a resolved ``ref`` (downloading run artifacts
    into a temporary folder that is removed once the bundle is in memory). Returns ``(bundle, ref)``."""
    from recforge.tracking.bundle import Bundle

    if ref.is_bundle:
        return (Bundle.from_checkpoint(ref.uri) if ref.uri.endswith(".ckpt") else Bundle.load(ref.uri)), ref
    with tempfile.TemporaryDirectory(prefix="recforge-model-") as tmp:
        return Bundle.load(download_bundle(ref, Path(tmp), tracking_uri)), ref


def download_bundle(ref: ModelRef, into: Path, tracking_uri: str | None = None) -> Path:
    """Download the bundle folder of a resolved run/registry ``ref`` under ``into``; returns its path."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    into.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_model_location(ref.run_id, tracking_uri),
                                                         dst_path=str(into),
                                                         tracking_uri=_client(tracking_uri).tracking_uri))
    except MlflowException as exc:
        raise RecForgeError(f"{ref.uri}: cannot download the model of run {ref.run_id}: {exc.message}") from None
    artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts", {})
    if "bundle" not in artifacts:
        raise RecForgeError(f"{ref.uri}: run {ref.run_id}'s model is not a RecForge bundle model "
                            f"(no 'bundle' artifact)")
    return local / artifacts["bundle"]["path"]


def _model_location(run_id: str, tracking_uri: str | None) -> str:
    """Artifact URI of the run's pyfunc model: the MLflow 3 logged model named ``model`` that the run output
    (its own artifact location, so no global tracking URI is needed), else ``runs:/<id>/model``."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    for output in reversed(getattr(outputs, "model_outputs", None) or []):
        logged = client.get_logged_model(output.model_id)
        if logged.name == MODEL_ARTIFACT:
            return logged.artifact_location
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def load(uri: str, tracking_uri: str | None = None):
    """Resolve and load ``uri`` (``models:/``, ``runs:/`` or a bundle directory): ``(bundle, ref)``. Every
    failure is a RecForgeError (see :func:`loading`)."""
    with loading(uri):
        return load_bundle(resolve(uri, tracking_uri), tracking_uri)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``exc``'s message on one line, cut to ``limit`` characters (torch's load errors span many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@contextmanager
def loading(uri: str):
    """Any exception while loading ``uri`` as a RecForgeError naming it: a corrupt, partial or foreign model
    fails in torch, pandas or the model's own code, and callers (the CLIs, a reload) must report it as one
    line and carry on. A RecForgeError keeps its message (prefixed with ``uri`` unless it names it); the
    original exception is chained (``__cause__``)."""
    try:
        yield
    except RecForgeError as exc:
        if uri in str(exc):
            raise
        raise RecForgeError(f"{uri}: {exc}") from exc
    except Exception as exc:
        raise RecForgeError(f"{uri}: cannot load the model ({type(exc).__name__}: {one_line(exc)}); check that "
                            f"the bundle is complete, or train and register the model again") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.registry",
                                     description="Register a run's model in the MLflow Model Registry.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", default="champion", help="alias to point at the new version (default champion)")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    try:
        ref = register(args.run_id, args.name, args.alias, args.tracking_uri)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"registered {ref.name} version {ref.version} (run {ref.run_id}); serve it with "
          f"recforge-serve --model {ref.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
