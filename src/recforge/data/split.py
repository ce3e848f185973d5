"""Splits of an encoded interactions table into train / validation / test, seeded and leak-checked."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError


@dataclass
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def fingerprint(self, n_users: int, n_items: int) -> str:
        """A short hash of exactly which (user, item) pairs are in which part."""
        digest = hashlib.sha256(f"{n_users},{n_items}".encode())
        for part in (self.train, self.val, self.test):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(np.ascontiguousarray(part["user"].to_numpy(np.int64)).tobytes())
            digest.update(np.ascontiguousarray(part["item"].to_numpy(np.int64)).tobytes())
        return digest.hexdigest()[:16]


def check_no_leak(split: Split, n_items: int) -> None:
    """Stop when a (user, item) pair is in train and in validation or test."""
    train_keys = split.train["user"].to_numpy() * n_items + split.train["item"].to_numpy()
    for name, part in (("val", split.val), ("test", split.test)):
        keys = part["user"].to_numpy() * n_items + part["item"].to_numpy()
        leaked = int(np.isin(keys, train_keys).sum())
        if leaked:
            raise RecForgeError(f"split leak: {leaked} (user, item) pairs are both in train and {name}")


class RandomSplit:
    """Interactions shuffled once under ``seed``; ``val_ratio`` and ``test_ratio`` of them held out."""

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 42) -> None:
        if not (0 <= val_ratio < 1 and 0 < test_ratio < 1 and val_ratio + test_ratio < 1):
            raise RecForgeError(
                f"split: need 0 <= split.val_ratio, 0 < split.test_ratio and their sum < 1; got {val_ratio}, {test_ratio}"
            )
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        n = len(frame)
        order = np.random.default_rng(self.seed).permutation(n)
        n_test = int(round(n * self.test_ratio))
        n_val = int(round(n * self.val_ratio))
        test, val, train = np.split(order, [n_test, n_test + n_val])
        return Split(*(frame.iloc[np.sort(idx)].reset_index(drop=True) for idx in (train, val, test)))


class LeaveOneOutSplit:
    """Each user's latest interaction is the test item, the one before it the validation item.

    Users with fewer than ``min_interactions`` interactions stay entirely in train. Interactions with the
    same timestamp are ordered by a random key drawn under ``seed``, so the held-out item is still latest.
    """

    def __init__(self, min_interactions: int = 3, seed: int = 42) -> None:
        if min_interactions < 3:
            raise RecForgeError("split.min_interactions must be >= 3 (one train, one val, one test item)")
        self.min_interactions, self.seed = min_interactions, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        users = frame["user"].to_numpy()
        tiebreak = np.random.default_rng(self.seed).random(len(frame))
        order = np.lexsort((tiebreak, frame["timestamp"].to_numpy(), users))
        sorted_users = users[order]
        counts = np.bincount(sorted_users)
        ends = np.cumsum(counts)  # one past each user's last position
        position_from_end = ends[sorted_users] - np.arange(len(order))  # 1 = latest
        eligible = counts[sorted_users] >= self.min_interactions
        test = order[eligible & (position_from_end == 1)]
        val = order[eligible & (position_from_end == 2)]
        train = order[~(eligible & (position_from_end <= 2))]
        return Split(*(frame.iloc[np.sort(idx)].reset_index(drop=True) for idx in (train, val, test)))
