"""Warm starts: initialise a model for new data from a trained model bundle, growing its user and item tables.

Users and items are matched by raw id. A known user's (item's) rows are copied into its new index; new users and
items keep the fresh model's initialisation; users and items that left the data are dropped. A tensor axis is
a user axis when its length is the old number of users (an item axis: items); where the two counts are equal
the parameter's name decides (``user_*`` / ``item_*``). Every other tensor (MLP layers, global biases) must
keep its shape and is copied as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recforge.errors import RecForgeError


def index_map(old_ids: np.ndarray, new_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_positions, old_positions)`` of the ids present in both (by value; ints and strings compare as text
    when the dtypes differ)."""
    old, new = pd.Index(old_ids), pd.Index(new_ids)
    if old.dtype != new.dtype:
        old, new = old.astype(str), new.astype(str)
    where = old.get_indexer(new)
    keep = np.flatnonzero(where >= 0)
    return torch.as_tensor(keep, dtype=torch.long), torch.as_tensor(where[keep], dtype=torch.long)


def _axis_kind(name: str, size: int, n_users: int, n_items: int) -> str | None:
    lowered = name.lower()
    if size == n_users and size == n_items:
        if "user" in lowered and "item" not in lowered:
            return "user"
        if "item" in lowered and "user" not in lowered:
            return "item"
        raise RecForgeError(f"warm start: cannot tell whether {name} is indexed by users or items "
                            f"({n_users} of each); rename the parameter user_* or item_*")
    return "user" if size == n_users else "item" if size == n_items else None


def grow_state(old_state: dict[str, torch.Tensor], new_state: dict[str, torch.Tensor], old_n_users: int,
               old_n_items: int, users: tuple[torch.Tensor, torch.Tensor],
               items: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``new_state`` (a freshly built model's) with the rows of matched users/items copied from ``old_state``."""
    out = {}
    for name, fresh in new_state.items():
        if name not in old_state:
            raise RecForgeError(f"warm start: the trained model has no {name}; was it another architecture?")
        old = old_state[name].to(fresh.dtype)
        kinds = [_axis_kind(name, size, old_n_users, old_n_items) for size in old.shape]
        if any(kinds) and not torch.is_floating_point(old):
            # e.g. ItemKNN's neighbour lists: their values are item indices, which moving rows does not remap
            raise RecForgeError(f"warm start: {name} holds indices, not weights, and cannot be grown; refit "
                                "the model on the data instead")
        fixed_axes_differ = any(k is None and o != f for k, o, f in zip(kinds, old.shape, fresh.shape))
        if not any(kinds) or fixed_axes_differ or old.dim() != fresh.dim():
            if old.shape != fresh.shape:
                raise RecForgeError(f"warm start: {name} has shape {tuple(old.shape)} in the trained model but "
                                    f"{tuple(fresh.shape)} now; change only data-dependent sizes")
            out[name] = old.clone()
            continue
        grown = fresh.clone()
        index_new, index_old = [], []
        for axis, kind in enumerate(kinds):
            if kind is None:
                new_pos, old_pos = torch.arange(fresh.shape[axis]), torch.arange(old.shape[axis])
            else:
                new_pos, old_pos = users if kind == "user" else items
            shape = [1] * old.dim()
            shape[axis] = -1  # broadcast index vectors: no full index grid is built
            index_new.append(new_pos.view(shape))
            index_old.append(old_pos.view(shape))
        grown[tuple(index_new)] = old[tuple(index_old)]
        out[name] = grown
    return out


def warm_start(model: torch.nn.Module, bundle_dir: str | Path, user_ids: np.ndarray, item_ids: np.ndarray) -> dict:
    """Load a bundle's weights into ``model`` (built for ``user_ids`` x ``item_ids``); returns match counts."""
    bundle_dir = Path(bundle_dir)
    if model.train_view == "sequences":
        # their item tables carry padding/mask rows past n_items, which the row matching below cannot tell apart
        raise RecForgeError(f"init_from={bundle_dir}: warm start does not support sequential models "
                            f"({type(model).__name__}) yet; train from scratch (init_from=null, or recforge-retrain mode=scratch)")
    files = [bundle_dir / name for name in ("model.pt", "users.parquet", "items.parquet")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RecForgeError(f"init_from={bundle_dir}: not a model bundle (missing {', '.join(missing)}); give a "
                            "run's bundle folder, e.g. <output_dir>/model")
    old_state = torch.load(files[0], map_location="cpu", weights_only=True)
    old_users = pd.read_parquet(files[1])["user"].to_numpy()
    old_items = pd.read_parquet(files[2])["item"].to_numpy()
    users, items = index_map(old_users, user_ids), index_map(old_items, item_ids)
    state = grow_state(old_state, model.state_dict(), len(old_users), len(old_items), users, items)
    model.load_state_dict(state)
    return {"warm_start/known_users": len(users[0]), "warm_start/new_users": len(user_ids) - len(users[0]),
            "warm_start/known_items": len(items[0]), "warm_start/new_items": len(item_ids) - len(items[0])}
