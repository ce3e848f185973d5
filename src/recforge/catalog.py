"""``recforge list``: every config group and its options, each with the first line of its file's header comment.

    recforge list                      # every group: model, data, split, loss, sampler, optimizer, ...
    recforge list model hparams_search # some groups

An option is chosen on the command line as ``<group>=<option>`` (``recforge-train model=neumf split=temporal``;
overlays too: ``experiment=ml100k_bpr``, ``hparams_search=bpr`` with ``-m``). The listing reads the YAML files
under ``conf/``, so an option added there is listed without any code change.

:func:`matching_option` goes the other way, from a tracked run's flattened config back to the option file it
came from (``model.use_bias=False`` and ``model.init_std=0.1``: ``bpr``, not ``mf``); ``recforge-compare``
names models by it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge import CONFIG_DIR


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


def config_groups(config_dir: Path = CONFIG_DIR) -> dict[str, dict[str, str]]:
    """``{group: {option: description}}`` for every folder of YAML files under ``config_dir``, sorted by name."""
    groups = {}
    for folder in sorted(p for p in Path(config_dir).iterdir() if p.is_dir()):
        options = {f.stem: description(f) for f in sorted(folder.glob("*.yaml"))}
        if options:
            groups[folder.name] = options
    return groups


def format_groups(groups: Mapping[str, Mapping[str, str]]) -> str:
    blocks = []
    for group, options in groups.items():
        width = max(map(len, options))
        lines = [f"{group}  (recforge-train {group}=<option>)"]
        lines += [f"  {name:<{width}}  {text}" for name, text in options.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@functools.lru_cache(maxsize=None)
def _option_nodes(group: str, config_dir: str = str(CONFIG_DIR)) -> dict[str, dict[str, Any]]:
    """``{option: the group's node in its file}``: the whole file, or its ``<group>:`` key in a global overlay."""
    import yaml

    nodes = {}
    for path in sorted((Path(config_dir) / group).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        node = data.get(group) if "# @package _global_" in text else data
        if isinstance(node, dict):
            nodes[path.stem] = {k: v for k, v in node.items() if k != "defaults"}
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


def matching_option(group: str, params: Mapping[str, str], config_dir: Path = CONFIG_DIR) -> str | None:
    """The option of ``group`` a run's flattened params (``model._target_``, ``model.embedding_dim``, ...) came
    from: among the files with the run's ``_target_``, the one whose values the run has most of. None when no
    file has that target, or when two fit equally well (a command-line override can make them alike)."""
    target = params.get(f"{group}._target_")
    scores: dict[str, int] = {}
    for option, node in _option_nodes(group, str(config_dir)).items():
        if target is None or node.get("_target_") != target:
            continue
        scores[option] = sum(_same(params[f"{group}.{k}"], v) for k, v in node.items()
                             if f"{group}.{k}" in params and not (isinstance(v, str) and "${" in v))
    best = sorted(scores.items(), key=lambda kv: -kv[1])
    if not best or (len(best) > 1 and best[0][1] == best[1][1]):
        return None
    return best[0][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recforge", description="RecForge's configs and tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every config group and its options, with a one-line description",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("groups", nargs="*", metavar="group", help="only these groups (default: all)")
    args = parser.parse_args(argv)
    groups = config_groups()
    unknown = [g for g in args.groups if g not in groups]
    if unknown:
        print(f"error: unknown config group {', '.join(map(repr, unknown))}; groups: {', '.join(groups)}",
              file=sys.stderr)
        return 2
    print(format_groups({g: groups[g] for g in args.groups} if args.groups else groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
