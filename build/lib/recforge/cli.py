"""What every command-line entry point shares: user mistakes and refused writes as one line and exit code 2,
the Hydra callback that checks the run folder first, and quiet library warnings."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recforge.errors import RecForgeError
from recforge.utils.io import DISK_FULL, writable_folder
from recforge.utils.trust import trust


def run_cli(task, cfg: DictConfig):
    """Run ``task(cfg)``; a user mistake, or a write the file system refused, prints one line and exits 2 instead of
    a traceback."""
    try:
        trust(*(cfg.get("trusted_targets") or []))
        return task(cfg)
    except (RecForgeError, OSError) as exc:
        message = str(exc) if isinstance(exc, RecForgeError) else failed_write(exc, cfg)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        if _in_multirun():  # a sweep records the failed job and goes on; exiting would end the whole sweep
            raise
        sys.exit(2)


NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
FOLDERS = ("paths.output_dir", "paths.cache_dir", "tracking.log_dir", "paths.log_dir")   # the innermost first


def failed_write(exc: OSError, cfg: DictConfig) -> str | None:
    """One line naming the file, the config key of its folder and the fix when the file system refused a write (a
    full disk, a file size limit; a read-only folder of the run); None for any other error."""
    file = Path(exc.filename).resolve() if isinstance(exc.filename, (str, Path)) else None
    key = next((k for k in FOLDERS if file and _holds(OmegaConf.select(cfg, k, throw_on_resolution_failure=False),
                                                          file)), None)
    if exc.errno in DISK_FULL:
        elsewhere = f"set {key} to a folder on another disk" if key else "write to another disk"
        return (f"cannot write {file or 'a file'}: {exc.strerror} (the disk is full or a file size limit was reached): "
                f"free space, or {elsewhere}; the files written before are intact")
    if exc.errno in NOT_WRITABLE and key:
        folder = OmegaConf.select(cfg, key)
        return (f"cannot write {file}: {exc.strerror}: fix the permissions of {key}={folder} or set {key} to a folder "
                "you can write")
    return None


def _holds(folder: str | None, file: Path) -> bool:
    return bool(folder) and file.is_relative_to(Path(folder).resolve())


class CheckRunFolder(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): a run or sweep folder that cannot be written stops the command
    with one line and exit 2 before Hydra writes into it (Hydra would print a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def check(folder: str, key: str) -> None:
        try:
            writable_folder(folder, key)
        except RecForgeError as exc:
            print(f"error: {exc} (by default it is under paths.log_dir)", file=sys.stderr)
            sys.exit(2)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def quiet_warnings() -> None:
    """Silence library chatter that says nothing about the user's experiment."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded artifact
    for message in (".*IterableDataset.*has `__len__` defined.*", ".*isinstance.treespec, LeafSpec.*",
                    ".*Inferred schema contains integer column.*", ".*smaller than the logging interval.*",
                    ".*when logging on epoch level in distributed setting.*"):
        warnings.filterwarnings("ignore", message=message)
