"""From a raw interactions table to contiguous indices: the preprocessing steps, the implicit view, id maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recforge.data.preprocess import (Deduplicate, DropMissing, KCore, NormalizeRatings, PreprocessState,
                                      RatingThreshold, ValidateRatings, run_steps)
from recforge.data.sorting import dense_codes
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


def default_steps() -> list:
    """What runs when ``datamodule.preprocess`` is null: drop missing ids, keep each pair's latest row."""
    return [DropMissing(), Deduplicate(keep="last")]


def threshold_position(steps: list) -> int:
    """Where ``implicit_threshold``'s step goes in ``steps``: after every :class:`Deduplicate` (it judges each pair
    by the rating the deduplication keeps) and before the first :class:`KCore` or :class:`NormalizeRatings` after
    them (a k-core then holds on the kept ratings, and the threshold reads the file's rating scale)."""
    start = max((i + 1 for i, step in enumerate(steps) if isinstance(step, Deduplicate)), default=0)
    return next((i for i in range(start, len(steps)) if isinstance(steps[i], (KCore, NormalizeRatings))), len(steps))


def prepare(raw: RawData, feedback: str, implicit_threshold: float | None, steps: list | None = None
            ) -> tuple[pd.DataFrame, IdMaps, PreprocessState]:
    """Run the preprocessing ``steps`` on ``raw`` and map ids to ``0..n-1``.

    Ratings are checked first (finite, within ``raw.rating_range``) by a :class:`ValidateRatings` step unless
    ``steps`` has its own. ``implicit_threshold`` (for implicit feedback) adds a :class:`RatingThreshold`
    step where :func:`threshold_position` puts it; the rating stays in the table as a graded relevance. Users and
    items are indexed in the order of their sorted raw ids, so the same data gives the same indices. Returns the
    encoded frame (``user``, ``item``, ``rating``, ``timestamp`` plus any ``part_*``/``ts_*`` columns), the id maps
    and the preprocessing state.
    """
    if feedback not in FEEDBACK:
        raise RecForgeError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
    steps = list(default_steps() if steps is None else steps)
    if not any(isinstance(step, ValidateRatings) for step in steps):
        steps.insert(0, ValidateRatings())
    if implicit_threshold is not None:
        steps.insert(threshold_position(steps), RatingThreshold(implicit_threshold, implicit_only=True))
    state = PreprocessState(rating_range=raw.rating_range, feedback=feedback, origin=raw.origin or raw.name)
    frame = raw.interactions
    for column in ("user", "item"):
        if len(frame) and frame[column].isna().all():
            raise RecForgeError(f"{raw.name}: column {column!r} is entirely empty; check the column mapping "
                                f"(data.columns.{column})")
    frame = run_steps(frame, steps, state)
    if frame["user"].isna().any() or frame["item"].isna().any():
        raise RecForgeError(f"{raw.name}: some user or item ids are missing; add a DropMissing step to "
                            "datamodule.preprocess")
    if frame.empty:
        raise RecForgeError(
            f"{raw.name}: no interactions left after preprocessing (datamodule.implicit_threshold={implicit_threshold}, "
            "datamodule.preprocess); relax the steps"
        )
    user_codes, users = dense_codes(frame["user"])
    item_codes, items = dense_codes(frame["item"])
    encoded = pd.DataFrame({
        "user": user_codes,
        "item": item_codes,
        "rating": frame["rating"].to_numpy(np.float32),
        "timestamp": frame["timestamp"].to_numpy(np.int64),
    })
    for column in frame.columns:
        if column not in encoded:
            encoded[column] = frame[column].to_numpy()
    return encoded, IdMaps(np.asarray(users), np.asarray(items)), state
