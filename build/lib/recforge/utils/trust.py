"""Which classes a model file may name: the allow-list checked before anything is imported.

A model bundle (``spec.pt``), a checkpoint's stored config, an ensemble's member list and a study's stored
pruner name the classes that rebuild them, with their arguments. Those files travel (a colleague's run, a model
registry, a download), so a name in them is data, not code: importing and calling whatever it says would let a
file run any function (``subprocess.getoutput`` with a ``cmd`` argument, say). Every such name is checked here
first, and anything not on the list is refused with one line, before its module is imported.

On the list:

* every ``_target_`` in RecForge's own config folder (its models, losses, optimizers, schedulers, data sources,
  preprocessing steps, splits, callbacks, trainer, tracker) and the classes RecForge builds in code
  (:data:`BUILT_IN_CODE`);
* every class of the modules in :data:`SAFE_MODULES` (torch's optimizers and schedulers, Optuna's pruners and
  samplers), which only store their arguments;
* what the user trusts explicitly, each an exact class path or a package prefix ending in ``.*``:
  ``trusted_targets=[mypkg.MyModel]`` in a config (train, eval, ensemble, retrain), ``--trust mypkg.*`` on
  ``recforge-serve`` and ``recforge-recommend``, the environment variable ``RECFORGE_TRUSTED_TARGETS``
  (comma-separated), and the entry-point group ``recforge.trusted_targets`` of an installed package (installing
  a package is already a decision to run its code).
"""

from __future__ import annotations

import inspect
import os
import re
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any

from recforge.errors import RecForgeError

ENV_VAR = "RECFORGE_TRUSTED_TARGETS"
ENTRY_POINT_GROUP = "recforge.trusted_targets"
SAFE_MODULES = frozenset({"torch.optim", "torch.optim.lr_scheduler", "optuna.pruners", "optuna.samplers"})
BUILT_IN_CODE = frozenset({"recforge.models.ensemble.EnsembleRecommender"})  # recforge-ensemble's model
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?")
_registered: set[str] = set()


class UntrustedTarget(RecForgeError):
    """A file names a class that is not on the allow-list."""


def trust(*patterns: str) -> None:
    """Trust these class paths (``pkg.mod.Class``) or packages (``pkg.*``) for the rest of the process."""
    for pattern in patterns:
        pattern = str(pattern).strip()
        if not _NAME.fullmatch(pattern):
            raise RecForgeError(f"trusted_targets: {pattern!r} is not a class path or a package prefix; give e.g. "
                                "mypkg.models.MyModel or mypkg.*")
        _registered.add(pattern)


@cache
def shipped_targets(config_dir: str) -> frozenset[str]:
    """Every ``_target_`` named anywhere in the YAML files under ``config_dir``."""
    import yaml

    found: set[str] = set()
    for path in Path(config_dir).rglob("*.yaml"):
        _collect(yaml.safe_load(path.read_text(encoding="utf-8")), found)
    return frozenset(found)


def _collect(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str):
            found.add(target)
        for value in node.values():
            _collect(value, found)
    elif isinstance(node, list):
        for value in node:
            _collect(value, found)


def _user_patterns() -> set[str]:
    from importlib.metadata import entry_points

    patterns = set(_registered)
    patterns.update(p.strip() for p in os.environ.get(ENV_VAR, "").split(",") if p.strip())
    patterns.update(ep.value.replace(":", ".") for ep in entry_points(group=ENTRY_POINT_GROUP))
    return patterns


def is_trusted(target: str) -> bool:
    from recforge import CONFIG_DIR

    if not isinstance(target, str) or not _NAME.fullmatch(target) or target.endswith(".*"):
        return False
    module = target.rpartition(".")[0]
    if target in BUILT_IN_CODE or module in SAFE_MODULES or target in shipped_targets(str(CONFIG_DIR)):
        return True
    return any(target == p or (p.endswith(".*") and target.startswith(p[:-1])) for p in _user_patterns())


def require_trusted(target: Any, where: str) -> str:
    """``target`` if it is on the allow-list, else :class:`UntrustedTarget` naming ``where`` and the fix."""
    if not is_trusted(target):
        raise UntrustedTarget(
            f"{where} names {str(target)[:200]!r}, which is not a RecForge class or one you trust, so it was not "
            f"imported; if you know this file and its class, trust it with trusted_targets=[{str(target)[:200]}] "
            f"(or {ENV_VAR}=...)")
    return target


def import_trusted(target: Any, where: str) -> type:
    """The class ``target`` names, imported only after :func:`require_trusted` passed."""
    module, _, name = require_trusted(target, where).rpartition(".")
    try:
        obj = getattr(import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RecForgeError(f"{where} names {target!r}, which cannot be imported here ({exc}); install the package "
                            "that defines it") from None
    if not inspect.isclass(obj):
        raise UntrustedTarget(f"{where} names {target!r}, which is not a class; a model file names classes only")
    return obj


def require_trusted_config(node: Any, where: str, path: str = "") -> None:
    """Check every ``_target_`` in a (resolved) config container, recursively, before it is instantiated."""
    if isinstance(node, dict):
        if "_target_" in node:
            require_trusted(node["_target_"], f"{where}: {path + '.' if path else ''}_target_")
        for key, value in node.items():
            require_trusted_config(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            require_trusted_config(value, where, f"{path}[{i}]")
