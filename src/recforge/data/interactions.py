"""From a raw interactions table to contiguous indices: cleaning, the implicit view, id maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recforge.data.sources.base import RawData
from recforge.errors import RecForgeError

FEEDBACK = ("explicit", "implicit")


@dataclass
class IdMaps:
    """``users[idx]`` / ``items[idx]`` give the raw id of a contiguous index."""

    users: np.ndarray
    items: np.ndarray

    def user_index(self, raw: np.ndarray) -> np.ndarray:
        """Contiguous indices of raw user ids; -1 for unknown users."""
        return pd.Index(self.users).get_indexer(raw)

    def item_index(self, raw: np.ndarray) -> np.ndarray:
        return pd.Index(self.items).get_indexer(raw)

    def to_frame(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return (pd.DataFrame({"index": np.arange(len(self.users)), "user": self.users}),
                pd.DataFrame({"index": np.arange(len(self.items)), "item": self.items}))


def prepare(raw: RawData, feedback: str, implicit_threshold: float | None) -> tuple[pd.DataFrame, IdMaps]:
    """Clean ``raw`` and map ids to ``0..n-1``.

    Duplicated (user, item) pairs keep their latest interaction. For ``implicit`` feedback, interactions
    with a rating below ``implicit_threshold`` are dropped (all are kept when it is ``None``); the rating
    stays in the table as a graded relevance. Users and items are indexed in the order of their sorted
    raw ids, so the same data gives the same indices.
    """
    if feedback not in FEEDBACK:
        raise RecForgeError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
    frame = raw.interactions
    for column in ("user", "item"):
        if frame[column].isna().all():
            raise RecForgeError(f"{raw.name}: column {column!r} is entirely empty; check the column mapping")
    frame = frame.dropna(subset=["user", "item"])
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="last")
    if feedback == "implicit" and implicit_threshold is not None:
        frame = frame[frame["rating"] >= implicit_threshold]
    if frame.empty:
        raise RecForgeError(
            f"{raw.name}: no interactions left after cleaning (datamodule.implicit_threshold={implicit_threshold})"
        )
    user_codes, users = pd.factorize(frame["user"], sort=True)
    item_codes, items = pd.factorize(frame["item"], sort=True)
    encoded = pd.DataFrame({
        "user": user_codes.astype(np.int64),
        "item": item_codes.astype(np.int64),
        "rating": frame["rating"].to_numpy(np.float32),
        "timestamp": frame["timestamp"].to_numpy(np.int64),
    })
    return encoded, IdMaps(np.asarray(users), np.asarray(items))
