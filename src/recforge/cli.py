"""What every command-line entry point shares: a check of the command line before Hydra runs (an unknown option or
key is one line with the nearest valid one), user mistakes and refused writes as one line and exit code 2, the
Hydra callback that checks the run folder first, and quiet library output."""

from __future__ import annotations

import difflib
import errno
import inspect
import logging
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recforge import CONFIG_DIR
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
        if in_multirun():  # a sweep records the failed job and goes on; exiting would end the whole sweep
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


def in_multirun() -> bool:
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
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's banners and tips ("GPU available", "💡 Tip", "Restoring states ...") and MLflow's bookkeeping
    ("Creating initial MLflow database tables", "Validating input example") say nothing about the run."""
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")   # MLflow sets its logger's level when imported
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning.loggers.mlflow").setLevel(logging.ERROR)   # "Experiment ... Creating it."


def command(main: Callable[[], object], config_name: str) -> Callable[[], object]:
    """The console-script entry of a Hydra command: :func:`preflight` the command line, then run ``main``."""

    def entry() -> object:
        quiet_warnings()
        preflight(config_name, sys.argv[1:])
        return main()

    entry.__doc__ = main.__doc__
    return entry


HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "--info", "--resolve", "--shell-completion", "-p",
               "--package", "--version", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def preflight(config_name: str, argv: Sequence[str]) -> None:
    """Compose the config the command line asks for before Hydra does, so that a mistake is one line naming the
    nearest valid option or key (exit code 2) instead of Hydra's report. A sweep's values are checked by their first
    value; Hydra's own flags and ``hydra.*`` settings are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    if any(arg in HYDRA_FLAGS for arg in argv):
        return
    lines = [arg for arg in argv if not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as exc:
        fail(f"cannot read the command line: {first_line(exc)}; write overrides as key=value or group=option")
    overrides, variants = [], []   # the first value of every sweep, then each other value of each sweep
    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") and key != "hydra.searchpath":
            continue
        prefix = f"{'+' if override.is_add() else ''}{key}="
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except HydraException:  # an interval: a number any key of that type takes
                continue
            variants += [(len(overrides), prefix + value) for value in values[1:]]
            overrides.append(prefix + values[0])
        else:
            overrides.append(override.input_line)
    for position, line in [(None, None), *variants[:20]]:
        attempt = list(overrides)
        if position is not None:
            attempt[position] = line
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=attempt)
        except MissingConfigException as exc:
            fail(unknown_option(exc, attempt))
        except HydraException as exc:
            fail(unknown_key(exc, config_name) or f"the command line does not compose: {first_line(exc)}")
        if position is None:
            check_added_keys(cfg, [o for o in parsed if o.is_add()])


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def unknown_option(exc, overrides: Sequence[str]) -> str:
    """``model=nosuchmodel`` -> the options of ``model`` nearest to it."""
    missing = getattr(exc, "missing_cfg_file", None) or ""
    group, _, option = missing.rpartition("/")
    options = list(getattr(exc, "options", None) or [])
    if not group or not options:
        return f"the command line names a config that does not exist: {first_line(exc)}"
    near = difflib.get_close_matches(option, options, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(f'{group}={o}' for o in near)}? " if near else ""
    return f"{group}={option} is not an option of '{group}'; {hint}(recforge list {group} shows all {len(options)})"


def unknown_key(exc, config_name: str) -> str | None:
    """``trainer.max_epoch=3`` -> the keys of ``trainer`` (and arguments of its class) nearest to ``max_epoch``."""
    cause = exc.__cause__ or exc.__context__
    full_key = getattr(cause, "full_key", None)
    if not full_key or "not in struct" not in str(cause):
        return None
    parent, _, name = str(full_key).rpartition(".")
    candidates = set(known_keys(default_node(config_name, parent)))
    near = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    where = f"of {parent}" if parent else "at the top level"
    hint = f"did you mean {' or '.join(f'{parent}.{n}' if parent else n for n in near)}? " if near else ""
    return (f"{full_key} is not a key {where}; {hint}(to add a key the config does not have, write "
            f"+{full_key}=...)")


def default_node(config_name: str, parent: str):
    """The node at ``parent`` of the command's config with no overrides (for listing its keys), or None."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name)
    return OmegaConf.select(cfg, parent) if parent else cfg


def known_keys(node) -> list[str]:
    """A config node's keys, plus its target class's arguments when it names one."""
    if not OmegaConf.is_dict(node):
        return []
    keys = [str(k) for k in node.keys()]
    if "_target_" in node:
        keys += target_arguments(node._target_)
    return keys


def target_arguments(target: str) -> list[str]:
    from recforge.config import resolve_target

    cls = resolve_target(str(target))
    if cls is None:
        return []
    return [p for p in inspect.signature(cls).parameters if p != "self"]


def check_added_keys(cfg, added) -> None:
    """``+trainer.max_epoch=3`` adds a key the target class does not take: refuse it, naming the nearest argument."""
    for override in added:
        parent, _, name = override.key_or_group.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else None
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            continue
        arguments = target_arguments(node._target_)
        if not arguments or name in arguments:
            continue
        from recforge.config import resolve_target

        params = inspect.signature(resolve_target(str(node._target_))).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        near = difflib.get_close_matches(name, arguments, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(f'{parent}.{n}' for n in near)}?" if near else \
            f"its arguments are {', '.join(arguments[:12])}{', ...' if len(arguments) > 12 else ''}"
        fail(f"+{override.key_or_group}: {node._target_} takes no argument '{name}'; {hint}")
