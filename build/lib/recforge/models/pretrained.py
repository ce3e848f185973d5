"""Starting a model from a trained run's model bundle (NeuMF from GMF and MLP runs, ConvNCF from an MF-BPR run).

The model files are read by :func:`recforge.models.files.load_model` (allow-listed classes, weights only).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from recforge.errors import RecForgeError
from recforge.models.files import load_model

BUNDLE_FILES = ("spec.pt", "model.pt", "users.parquet", "items.parquet", "seen.npz", "meta.json")


def read_bundle_model(path: str, key: str, expected: type) -> nn.Module:
    """The model of the bundle folder ``path`` (``model.<key>``), checked to be an ``expected``."""
    folder = Path(path)
    missing = [name for name in BUNDLE_FILES if not (folder / name).is_file()]
    if missing:
        raise RecForgeError(f"model.{key}={path} is not a model bundle (missing {', '.join(missing)}); give the "
                            f"bundle folder of a trained {expected.__name__} run, e.g. <output_dir>/model")
    model = load_model(folder)
    if not isinstance(model, expected):
        raise RecForgeError(f"model.{key}={path} holds a {type(model).__name__}, not a {expected.__name__}; give "
                            f"the bundle of a model={expected.__name__.lower()} run")
    return model


def pretrained_source(path: str | None, key: str, expected: type, owner: nn.Module) -> nn.Module | None:
    """The ``expected`` model to start ``owner`` from (``model.<key>=path``), trained on the same users and items.

    ``None`` when ``path`` is None, or (with a warning) when it does not exist: a trained model's bundle or
    checkpoint keeps the argument, and reloading it where the source run is gone must still work (its own weights
    replace the start anyway)."""
    if path is None:
        return None
    name = type(owner).__name__
    if not Path(path).exists():
        warnings.warn(f"model.{key}={path} does not exist: {name} keeps its fresh initialisation there (fine when "
                      f"reloading a trained {name}, whose weights replace it; otherwise fix the path or set "
                      f"model.{key}=null)", stacklevel=3)
        return None
    source = read_bundle_model(str(path), key, expected)
    if (source.n_users, source.n_items) != (owner.n_users, owner.n_items):
        raise RecForgeError(f"model.{key}={path} was trained on {source.n_users} users x {source.n_items} items "
                            f"but {name} has {owner.n_users} x {owner.n_items}; pre-train on the same data and split")
    return source
