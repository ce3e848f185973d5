"""Preprocessing as ordered, configurable steps (``datamodule.preprocess``, a list of ``_target_`` entries).

Each step is a small class with explicit arguments; calling it with ``(frame, state)`` returns the new frame
and records what it removed in ``state.report``. All steps are vectorised (:func:`recforge.data.sorting.lexsort`,
``bincount``, ``factorize``); none loops over rows. ``spec()`` describes a step for cache keys.

Rating normalisation records ``state.rating_scale`` / ``state.rating_offset`` so that
``original = normalised * scale + offset``; the datamodule exposes that inverse so RMSE is reported on the
original scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recforge.data.sorting import dense_codes, lexsort, sort_keys
from recforge.errors import RecForgeError

log = logging.getLogger("recforge")


@dataclass
class PreprocessState:
    """What the steps share: the data's rating range, the feedback kind, the rating transform, counts."""

    rating_range: tuple[float, float] | None
    feedback: str = "implicit"
    rating_scale: float = 1.0
    rating_offset: float = 0.0
    report: dict[str, float] = field(default_factory=dict)
    origin: str = ""          # the file (or dataset) the rows came from, named in messages
    file_order: bool = True   # rows are still the file's rows in its order (no step reorders; some remove)

    def removed(self, step: str, before: int, after: int) -> None:
        self.report[f"data/pre_{step}_removed"] = self.report.get(f"data/pre_{step}_removed", 0.0) + before - after
        self.file_order = self.file_order and before == after


class Step:
    key = "step"

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> dict:
        return {"step": type(self).__name__, **{k: v for k, v in sorted(vars(self).items())}}


class DropMissing(Step):
    """Drop rows whose user or item is missing; stop if a whole column is missing."""

    key = "drop_missing"

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        for column in ("user", "item"):
            if len(frame) and frame[column].isna().all():
                raise RecForgeError(f"column {column!r} is missing in every row; map the right column "
                                    f"(data.columns.{column}) or fix the file")
        keep = frame["user"].notna().to_numpy() & frame["item"].notna().to_numpy()
        out = frame[keep] if not keep.all() else frame
        for column in ("user", "item"):  # nullable integer ids become plain int64 once the gaps are gone
            if isinstance(out[column].dtype, pd.Int64Dtype):
                out = out.assign(**{column: out[column].to_numpy(np.int64)})
        state.removed(self.key, len(frame), len(out))
        return out.reset_index(drop=True)


class ValidateRatings(Step):
    """Check ratings are finite and in range (``low``/``high``, default: the dataset's rating range).

    ``on_invalid``: ``error`` stops with the count, the first bad row and the fix; ``drop`` removes the rows.
    :func:`recforge.data.interactions.prepare` runs ``ValidateRatings()`` first unless the steps have their own.
    """

    key = "validate_ratings"

    def __init__(self, low: float | None = None, high: float | None = None, on_invalid: str = "error") -> None:
        if on_invalid not in ("error", "drop"):
            raise RecForgeError(f"ValidateRatings.on_invalid must be 'error' or 'drop', got {on_invalid!r}")
        self.low, self.high, self.on_invalid = low, high, on_invalid

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        low, high = self.low, self.high
        if state.rating_range is not None:
            low = state.rating_range[0] if low is None else low
            high = state.rating_range[1] if high is None else high
        rating = frame["rating"].to_numpy(np.float64)
        not_finite = ~np.isfinite(rating)
        outside = np.zeros(len(rating), bool)
        if low is not None:
            outside |= rating < low
        if high is not None:
            outside |= rating > high
        bad = not_finite | outside
        if not bad.any():
            return frame
        if self.on_invalid == "error" and not_finite.any():
            self._refuse(frame, state, not_finite, "not a finite number (missing, NaN or infinite)",
                         "fix or remove those rows")
        if self.on_invalid == "error":
            key = "ValidateRatings low/high" if (self.low, self.high) != (None, None) else "data.rating_range"
            self._refuse(frame, state, outside, f"outside the rating range [{low}, {high}]",
                         f"fix those rows, or set {key} to the data's scale")
        out = frame[~bad].reset_index(drop=True)
        state.removed(self.key, len(frame), len(out))
        return out

    @staticmethod
    def _refuse(frame: pd.DataFrame, state: PreprocessState, mask: np.ndarray, what: str, fix: str) -> None:
        first, count = int(np.flatnonzero(mask)[0]), int(mask.sum())
        row = f"data row {first + 1}, " if state.file_order else ""
        user, item, rating = (frame[c].iloc[first] for c in ("user", "item", "rating"))
        user, item = (v.item() if isinstance(v, np.generic) else v for v in (user, item))
        raise RecForgeError(
            f"{state.origin or 'the data'}: {count} {'rating is' if count == 1 else 'ratings are'} {what}, the first "
            f"at {row}user {user!r}, item {item!r}, rating {rating}; {fix}, or drop them with "
            "{_target_: recforge.data.preprocess.ValidateRatings, on_invalid: drop} in datamodule.preprocess"
        )


class Deduplicate(Step):
    """One row per (user, item): ``keep`` the ``first`` or ``last`` by timestamp, or the ``mean`` rating
    (with the latest timestamp). Ties in time keep file order."""

    key = "deduplicate"

    def __init__(self, keep: str = "last") -> None:
        if keep not in ("first", "last", "mean"):
            raise RecForgeError(f"Deduplicate.keep must be 'first', 'last' or 'mean', got {keep!r}")
        self.keep = keep

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        if len(frame) == 0:
            return frame
        keys = pair_keys(frame)
        sorted_keys, by_key = sort_keys(keys)  # equal keys together, in file order
        repeated = np.zeros(len(keys), bool)
        repeated[1:] = sorted_keys[1:] == sorted_keys[:-1]
        repeated[:-1] |= repeated[1:]
        if not repeated.any():
            return frame
        rows = np.sort(by_key[repeated])  # only the rows of repeated pairs need ordering by time
        order = rows[lexsort((frame["timestamp"].to_numpy()[rows], keys[rows]))]  # equal times keep file order
        sorted_keys = keys[order]
        boundary = np.ones(len(order), bool)
        boundary[1:] = sorted_keys[1:] != sorted_keys[:-1]
        if self.keep == "first":
            chosen_mask = boundary
        else:
            chosen_mask = np.ones(len(order), bool)
            chosen_mask[:-1] = boundary[1:]
        keep = np.ones(len(keys), bool)
        keep[rows] = False
        keep[order[chosen_mask]] = True
        out = frame[keep].reset_index(drop=True)
        if self.keep == "mean":
            group = np.cumsum(boundary) - 1
            sums = np.bincount(group, weights=frame["rating"].to_numpy(np.float64)[order])
            rating = frame["rating"].to_numpy(np.float64).copy()
            rating[order[chosen_mask]] = sums / np.bincount(group)
            out["rating"] = rating[keep].astype(np.float32)
        state.removed(self.key, len(frame), len(out))
        return out


def pair_keys(frame: pd.DataFrame) -> np.ndarray:
    """One int64 per row, equal exactly for rows of the same (user, item) pair."""
    users, _ = dense_codes(frame["user"])
    items, item_values = dense_codes(frame["item"])
    return users * len(item_values) + items


class RatingThreshold(Step):
    """Keep interactions with ``rating >= threshold`` (the implicit view). With ``implicit_only`` the step
    does nothing when the model learns from explicit ratings."""

    key = "rating_threshold"

    def __init__(self, threshold: float, implicit_only: bool = True) -> None:
        self.threshold, self.implicit_only = float(threshold), implicit_only

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        if self.implicit_only and state.feedback != "implicit":
            return frame
        out = frame[frame["rating"].to_numpy() >= self.threshold].reset_index(drop=True)
        state.removed(self.key, len(frame), len(out))
        return out


class KCore(Step):
    """Iteratively drop users with fewer than ``user_k`` and items with fewer than ``item_k`` interactions
    until both hold (or ``max_iterations`` passes, with a warning that the core does not hold); 0 disables a side."""

    key = "kcore"

    def __init__(self, user_k: int = 5, item_k: int = 5, max_iterations: int = 100) -> None:
        if user_k < 0 or item_k < 0:
            raise RecForgeError("KCore.user_k and KCore.item_k must be >= 0")
        self.user_k, self.item_k, self.max_iterations = int(user_k), int(item_k), int(max_iterations)

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        users, _ = dense_codes(frame["user"])
        items, _ = dense_codes(frame["item"])
        keep = np.ones(len(frame), bool)
        for passes in range(self.max_iterations + 1):  # the last pass only checks that the core holds
            u, i = users[keep], items[keep]
            bad_users = np.bincount(u, minlength=users.max(initial=-1) + 1) < self.user_k
            bad_items = np.bincount(i, minlength=items.max(initial=-1) + 1) < self.item_k
            drop = bad_users[users] | bad_items[items]
            drop &= keep
            if not drop.any():
                break
            if passes == self.max_iterations:
                log.warning("KCore(user_k=%d, item_k=%d) stopped after max_iterations=%d passes with %d interactions "
                            "still below its thresholds: the data is not a k-core; raise KCore.max_iterations",
                            self.user_k, self.item_k, self.max_iterations, int(drop.sum()))
                break
            keep &= ~drop
        out = frame[keep].reset_index(drop=True) if not keep.all() else frame
        state.removed(self.key, len(frame), len(out))
        if len(out) == 0:
            raise RecForgeError(f"KCore(user_k={self.user_k}, item_k={self.item_k}) removed every interaction; "
                                "lower user_k / item_k")
        return out


class NormalizeRatings(Step):
    """Scale ratings linearly to ``[0, 1]`` (``target: unit``) or ``[-1, 1]`` (``target: symmetric``).

    The range is the dataset's rating range (else the observed min and max). The inverse is recorded in the
    state (``original = value * scale + offset``) and exposed by ``RecDataModule.rating_inverse``.
    """

    key = "normalize_ratings"

    def __init__(self, target: str = "unit") -> None:
        if target not in ("unit", "symmetric"):
            raise RecForgeError(f"NormalizeRatings.target must be 'unit' or 'symmetric', got {target!r}")
        self.target = target

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        rating = frame["rating"].to_numpy(np.float64)
        low, high = state.rating_range if state.rating_range is not None else (rating.min(), rating.max())
        if high <= low:
            raise RecForgeError(f"NormalizeRatings: rating range [{low}, {high}] is empty; nothing to scale")
        lo_t, hi_t = (0.0, 1.0) if self.target == "unit" else (-1.0, 1.0)
        scale = (high - low) / (hi_t - lo_t)  # original = t * scale + offset
        offset = low - lo_t * scale
        # compose with any earlier transform
        state.rating_offset = state.rating_offset + state.rating_scale * offset
        state.rating_scale = state.rating_scale * scale
        state.rating_range = (lo_t, hi_t)
        return frame.assign(rating=((rating - offset) / scale).astype(np.float32))


class TimestampFeatures(Step):
    """Add per-interaction time features from ``timestamp`` (seconds, UTC): any of ``hour``, ``weekday``,
    ``day`` (days since the first interaction), ``user_rank`` (0-based position in the user's history)."""

    key = "timestamp_features"
    FEATURES = ("hour", "weekday", "day", "user_rank")

    def __init__(self, features: list[str] | tuple[str, ...] = ("hour", "weekday", "day")) -> None:
        unknown = sorted(set(features) - set(self.FEATURES))
        if unknown:
            raise RecForgeError(f"TimestampFeatures.features: unknown {unknown}; valid: {list(self.FEATURES)}")
        self.features = list(features)

    def __call__(self, frame: pd.DataFrame, state: PreprocessState) -> pd.DataFrame:
        ts = frame["timestamp"].to_numpy(np.int64)
        new = {}
        if "hour" in self.features:
            new["ts_hour"] = ((ts // 3600) % 24).astype(np.int8)
        if "weekday" in self.features:
            new["ts_weekday"] = ((ts // 86400 + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday; Monday = 0
        if "day" in self.features:
            new["ts_day"] = ((ts - ts.min(initial=0)) // 86400).astype(np.int32)
        if "user_rank" in self.features:
            codes, _ = dense_codes(frame["user"])
            order = lexsort((ts, codes))
            starts = np.searchsorted(codes[order], codes[order], side="left")
            rank = np.empty(len(ts), np.int32)
            rank[order] = np.arange(len(ts)) - starts
            new["ts_user_rank"] = rank
        return frame.assign(**new)


def run_steps(frame: pd.DataFrame, steps: list, state: PreprocessState) -> pd.DataFrame:
    for step in steps:
        if step is None:
            continue
        if not callable(step):
            raise RecForgeError(f"datamodule.preprocess: {step!r} is not a step; each entry needs a _target_, e.g. "
                                "{_target_: recforge.data.preprocess.KCore, user_k: 5, item_k: 5}")
        frame = step(frame, state)
    return frame
