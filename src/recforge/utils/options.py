"""The option files of the config groups: where they are, what their header comment says, and which option a
tracked run used.

The folders are a user's own (``RECFORGE_CONFIG_PATH``, read by the search-path plugin
``hydra_plugins.recforge_searchpath``; an option there replaces RecForge's of the same name) and RecForge's
``conf/``. :func:`matching_option` goes from a run's logged params back to its option file
(``model.use_bias=False`` and ``model.init_std=0.1``: ``bpr``, not ``mf``), which ``recforge-compare`` shows as
the run's model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge import CONFIG_DIR

USER_CONFIG_ENV = "RECFORGE_CONFIG_PATH"


def config_dirs() -> list[Path]:
    """The user's config folders (``RECFORGE_CONFIG_PATH``, first named first), then RecForge's own."""
    users = [Path(p).expanduser() for p in os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep) if p]
    return [*(p for p in users if p.is_dir()), CONFIG_DIR]


def option_files(dirs: Sequence[Path] | None = None) -> dict[str, dict[str, Path]]:
    """``{group: {option: file}}`` for every folder of YAML files in ``dirs`` (default :func:`config_dirs`), sorted
    by name; an option of an earlier folder replaces one of the same name in a later folder."""
    groups: dict[str, dict[str, Path]] = {}
    for root in reversed(list(dirs if dirs is not None else config_dirs())):
        for folder in (p for p in Path(root).iterdir() if p.is_dir()):
            for path in folder.glob("*.yaml"):
                groups.setdefault(folder.name, {})[path.stem] = path
    return {group: dict(sorted(groups[group].items())) for group in sorted(groups)}


def description(path: Path) -> str:
    """The first line of the file's header comment (the comments before its first key), ``# @package`` aside;
    `` ...`` marks a sentence that goes on in the file."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text or header:
                break
            continue
        if not text.startswith("# @package"):
            header.append(text.lstrip("#").strip())
    if not header:
        return ""
    goes_on = len(header) > 1 and header[1] and not header[0].endswith((".", ":"))
    return header[0] + (" ..." if goes_on else "")


@functools.lru_cache(maxsize=None)
def _option_nodes(group: str, dirs: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    """``{option: the group's node in its file}``: the whole file, or its ``<group>:`` key in a global overlay."""
    import yaml

    nodes = {}
    for option, path in option_files(dirs).get(group, {}).items():
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        node = data.get(group) if "# @package _global_" in text else data
        if isinstance(node, dict):
            nodes[option] = {k: v for k, v in node.items() if k != "defaults"}
    return nodes


def _same(logged: str, declared: Any) -> bool:
    """A logged param (``str`` of the resolved value) equals a value written in a YAML file; ``1e-4`` equals
    ``0.0001`` (PyYAML reads the former as text)."""
    if logged == str(declared):
        return True
    try:
        return float(logged) == float(declared)
    except (TypeError, ValueError):
        return False


def matching_option(group: str, params: Mapping[str, str]) -> str | None:
    """The option of ``group`` a run's flattened params (``model._target_``, ``model.embedding_dim``, ...) came
    from: among the files with the run's ``_target_``, the one whose values the run has most of. None when no
    file has that target, or when two fit equally well (a command-line override can make them alike)."""
    target = params.get(f"{group}._target_")
    scores: dict[str, int] = {}
    for option, node in _option_nodes(group, tuple(config_dirs())).items():
        if target is None or node.get("_target_") != target:
            continue
        scores[option] = sum(_same(params[f"{group}.{k}"], v) for k, v in node.items()
                             if f"{group}.{k}" in params and not (isinstance(v, str) and "${" in v))
    best = sorted(scores.items(), key=lambda kv: -kv[1])
    if not best or (len(best) > 1 and best[0][1] == best[1][1]):
        return None
    return best[0][0]
