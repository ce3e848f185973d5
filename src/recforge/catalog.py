"""``recforge list``: every config group and its options, each with the first line of its file's header comment.

    recforge list                      # every group: model, data, split, loss, sampler, optimizer, ...
    recforge list model hparams_search # some groups

An option is chosen on the command line as ``<group>=<option>`` (``recforge-train model=neumf split=temporal``;
overlays too: ``experiment=ml100k_bpr``, ``hparams_search=bpr`` with ``-m``). The listing reads the YAML files
of RecForge's ``conf/`` and of the folders in ``RECFORGE_CONFIG_PATH`` (a user's options, marked ``*``), so an
option added there is listed without any code change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from recforge import CONFIG_DIR
from recforge.utils.options import description, option_files


def format_groups(groups: Mapping[str, Mapping[str, Path]]) -> str:
    blocks = []
    for group, options in groups.items():
        width = max(map(len, options))
        lines = [f"{group}  (recforge-train {group}=<option>)"]
        for name, path in options.items():
            mark = " " if path.is_relative_to(CONFIG_DIR) else "*"
            lines.append(f" {mark}{name:<{width}}  {description(path)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recforge", description="RecForge's configs and tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every config group and its options, with a one-line description",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("groups", nargs="*", metavar="group", help="only these groups (default: all)")
    args = parser.parse_args(argv)
    groups = option_files()
    unknown = [g for g in args.groups if g not in groups]
    if unknown:
        print(f"error: unknown config group {', '.join(map(repr, unknown))}; groups: {', '.join(groups)}",
              file=sys.stderr)
        return 2
    try:
        print(format_groups({g: groups[g] for g in args.groups} if args.groups else groups))
    except BrokenPipeError:  # `recforge list | head`: the reader has what it wanted
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
