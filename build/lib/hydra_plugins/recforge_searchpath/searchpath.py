"""A user's own config folders, found by every RecForge command (docs/extending.md).

``RECFORGE_CONFIG_PATH`` lists folders (separated like ``PATH``) laid out like RecForge's ``conf/``: ``model/``,
``loss/``, ``data/``, ``split/``, ``experiment/``, ``hparams_search/``, ... Their options join RecForge's, and an
option of the same name replaces RecForge's. ``hydra.searchpath=[file:///path/to/conf]`` on the command line
does the same for one command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENV_VAR = "RECFORGE_CONFIG_PATH"


class RecForgeSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folders = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
        for folder in reversed(folders):   # prepended one by one: the first folder named ends up first
            if not folder.is_dir():
                print(f"error: {ENV_VAR} names {folder}, which is not a folder; give your config folder (the one "
                      "holding model/, data/, ...) or unset it", file=sys.stderr)
                sys.exit(2)
            search_path.prepend(provider="recforge-user", path=f"file://{folder.resolve()}")
