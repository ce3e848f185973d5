"""Data preparation gives exactly what it gave before it was made fast: every preprocessing step and every split on
a medium table (250k rows with duplicates, ties in time and gaps in the ids) against digests recorded with the
earlier pandas/lexsort code (commit 07a0f5d), and the same answers as plain lexsort references."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recforge.data.datamodule import csr
from recforge.data.interactions import prepare
from recforge.data.preprocess import (Deduplicate, DropMissing, KCore, NormalizeRatings, RatingThreshold,
                                      TimestampFeatures)
from recforge.data.sorting import isin, sort_keys
from recforge.data.sources.base import RawData
from recforge.data.split import (KFoldSplit, LeaveOneOutSplit, PerUserRatioSplit, PerUserTemporalSplit,
                                 PredefinedSplit, RandomSplit, StrongGeneralizationSplit, TemporalSplit, check_split)

N_ROWS = 250_000


def medium(text_ids: bool = False) -> RawData:
    """Zipf-like users and items with gaps in their ids, ratings 1-5, hourly timestamps (many ties within a user),
    a few percent duplicate pairs, and an official split column."""
    rng = np.random.default_rng(7)
    user_cdf = np.cumsum(1.0 / np.arange(1, 20_001) ** 0.6)
    item_cdf = np.cumsum(1.0 / np.arange(1, 8_001) ** 0.9)
    users = np.searchsorted(user_cdf, rng.random(N_ROWS) * user_cdf[-1]) * 7 + 3
    items = np.searchsorted(item_cdf, rng.random(N_ROWS) * item_cdf[-1]) * 3
    frame = pd.DataFrame({
        "user": users, "item": items, "rating": rng.integers(1, 6, N_ROWS).astype(np.float32),
        "timestamp": (rng.integers(0, 3000, N_ROWS) * 3600).astype(np.int64),
        "part_u1": rng.choice(np.array([0, 2], np.int8), N_ROWS, p=[0.8, 0.2]),
    })
    if text_ids:
        frame["user"] = "u" + frame["user"].astype(str)
        frame["item"] = "i" + frame["item"].astype(str)
    return RawData("medium", frame, rating_range=(1.0, 5.0))


def digest(*frames: pd.DataFrame | None, extra: object = None) -> str:
    out = hashlib.sha256(repr(extra).encode())
    for frame in frames:
        if frame is None:
            continue
        for name in frame.columns:
            values = frame[name].to_numpy()
            out.update(f"{name}:{values.dtype}:{len(values)}".encode())
            out.update(np.ascontiguousarray(values).tobytes() if values.dtype != object else repr(list(values)).encode())
    return out.hexdigest()[:16]


STEPS = {
    "default": (None, None),
    "first_kcore": ([DropMissing(), Deduplicate("first"), KCore(5, 5)], None),
    "mean_normalised_features": ([DropMissing(), Deduplicate("mean"), NormalizeRatings("symmetric"),
                                  TimestampFeatures(["hour", "weekday", "day", "user_rank"])], None),
    "threshold": ([DropMissing(), Deduplicate("last"), KCore(10, 3), RatingThreshold(3.5)], 4.0),
}
PREPARED = {  # recorded with commit 07a0f5d: digest of (frame, id maps, report) for int ids, for text ids
    "default": ("81a9c57c3f101223", "48a5cbfa1f293951"),
    "first_kcore": ("a54cc91f59a3f926", "575548e6d3350b44"),
    "mean_normalised_features": ("9032f25fad7faf41", "07c0b07c79a254bc"),
    "threshold": ("7482989aa455042b", "cb5efcc1b7d173e6"),  # re-recorded: implicit_threshold now before the KCore
}


@pytest.fixture(scope="module")
def prepared():
    return {(name, text): prepare(medium(text), "implicit", threshold, steps)
            for name, (steps, threshold) in STEPS.items() for text in (False, True)}


@pytest.mark.parametrize("name", list(STEPS))
def test_preprocessing_gives_the_recorded_frames(prepared, name):
    got = []
    for text in (False, True):
        frame, maps, state = prepared[name, text]
        ids = pd.DataFrame({"users": maps.users.astype(str)}), pd.DataFrame({"items": maps.items.astype(str)})
        got.append(digest(frame, *ids, extra=(sorted(state.report.items()), state.rating_scale, state.rating_offset)))
    assert tuple(got) == PREPARED[name]


SPLITS = {
    "random": RandomSplit(0.1, 0.2, seed=3),
    "leave_one_out": LeaveOneOutSplit(),
    "per_user_temporal": PerUserTemporalSplit(2, 3, 6, seed=5),
    "per_user_ratio_random": PerUserRatioSplit(0.1, 0.2, "random", seed=1),
    "per_user_ratio_time": PerUserRatioSplit(0.1, 0.2, "time", seed=1),
    "temporal": TemporalSplit(0.1, 0.2),
    "strong_generalization": StrongGeneralizationSplit(val_users_ratio=0.05, test_users_ratio=0.1, seed=2),
    "kfold": KFoldSplit(5, 3, seed=4),
    "predefined": PredefinedSplit("u1", val_ratio=0.1, seed=6),
}
SPLIT_DIGESTS = {  # recorded with commit 07a0f5d: (fingerprint, digest of every column, the check's report and meta)
    "random": ("7800a99568a560e6", "05a22c5961bc95d3"),
    "leave_one_out": ("32f56b1b8f4c30e0", "0b50e2fc68f2c0a9"),
    "per_user_temporal": ("307702b99c8dd302", "24f3c61c9f6042d2"),
    "per_user_ratio_random": ("00924e342042d087", "307cda6eb2d9e898"),
    "per_user_ratio_time": ("03b42ef135030ca4", "0f3606aa2b4a8339"),
    "temporal": ("f86ba5f1b06d9ded", "6ee8a63d7b9f0b9b"),
    "strong_generalization": ("7d412eea7ace0bd7", "fcb3bdfaa8a5da69"),  # re-recorded: targets rounded down
    "kfold": ("feaf43e8b158f2d4", "8cc230a23fad0ec1"),
    "predefined": ("ca999c11938cf8f6", "83d9d08c5b6bf288"),
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_every_split_gives_the_recorded_parts(prepared, name):
    frame, maps, _ = prepared["default", False]
    n_users, n_items = len(maps.users), len(maps.items)
    split = SPLITS[name](frame)
    checked, report = check_split(split, n_users, n_items, cold_users="drop", cold_items="drop")
    got = (split.fingerprint(n_users, n_items),
           digest(*checked.parts().values(), extra=(sorted(report.items()), sorted(split.meta.items()))))
    assert got == SPLIT_DIGESTS[name]


@pytest.mark.parametrize("high", [50, 2**40, 2**62])   # packed with positions in one word; too wide: lexsort
def test_sort_keys_is_sort_and_stable_order(high):
    rng = np.random.default_rng(high % 97)
    keys = rng.integers(0, high, 10_000)
    keys[::7] = keys[0]   # repeats, whose file order must survive
    sorted_keys, order = sort_keys(keys)
    assert np.array_equal(order, np.argsort(keys, kind="stable")) and np.array_equal(sorted_keys, np.sort(keys))
    values = np.concatenate([keys, -keys[:50]]).astype(np.int32 if high == 50 else np.int64)
    assert np.array_equal(isin(values, keys[::3]), np.isin(values, keys[::3]))


@pytest.mark.parametrize("repeats", [False, True])   # distinct pairs: one sort; repeated ones: SciPy sums them
def test_csr_is_scipys_canonical_matrix(repeats):
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 300, 5_000), rng.integers(0, 200, 5_000)
    if not repeats:
        rows, cols = np.divmod(np.unique(rows * 200 + cols), 200)
        rows, cols = rows[::-1].copy(), cols[::-1].copy()
    values = rng.random(len(rows)).astype(np.float32)
    got, want = csr(rows, cols, values, (300, 200)), sp.csr_matrix((values, (rows, cols)), shape=(300, 200))
    want.sum_duplicates()
    assert got.has_canonical_format and got.nnz == want.nnz and (got != want).nnz == 0
