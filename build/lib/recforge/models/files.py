"""A trained model on disk: ``spec.pt`` (the class and its constructor arguments) and ``model.pt`` (the weights),
the model part of a run's bundle folder (:mod:`recforge.tracking.bundle` adds id maps and seen items).

Both are read with ``torch.load(weights_only=True)``, so no pickled code runs, and the class ``spec.pt`` names must
be on RecForge's allow-list (:mod:`recforge.utils.trust`), checked before anything is imported, so a model file
cannot name a function to call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from recforge.errors import RecForgeError
from recforge.utils.trust import import_trusted


def load_model(directory: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The model of a bundle folder, with its weights, on ``device`` and in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecForgeError(f"{directory}: no such model bundle folder; give the 'model' folder of a run")
    spec = read_bundle_file(directory / "spec.pt", lambda p: torch.load(p, weights_only=True))
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise RecForgeError(f"{directory / 'spec.pt'}: not a RecForge model spec (no target and kwargs)")
    model_cls = import_trusted(spec.get("target"), str(directory / "spec.pt"))
    try:
        model = model_cls(**spec["kwargs"])
    except (TypeError, ValueError) as exc:
        raise RecForgeError(f"{directory / 'spec.pt'}: cannot build {spec['target']} from its stored arguments "
                            f"({exc})") from None
    state = read_bundle_file(directory / "model.pt", lambda p: torch.load(p, weights_only=True, map_location=device))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise RecForgeError(f"{directory / 'model.pt'}: the weights do not fit the model spec.pt describes "
                            f"({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def read_bundle_file(path: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, with a missing or unreadable bundle file turned into one line naming it."""
    if not path.is_file():
        raise RecForgeError(f"{path}: missing from the model bundle; copy the whole 'model' folder of the run")
    try:
        return reader(path)
    except RecForgeError:
        raise
    except Exception as exc:  # truncated, corrupt or foreign: every reader fails in its own way
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise RecForgeError(f"{path}: cannot be read ({type(exc).__name__}: {reason}); the file is corrupt or "
                            "incomplete: copy it again from the run") from None
