"""Splits of an encoded interactions table into train / validation / test, seeded and leak-checked.

Every splitter is called with the encoded frame (contiguous ``user``/``item`` indices, ``rating``,
``timestamp``, and the dataset's ``part_<name>`` columns) and returns a :class:`Split`. Everything is
vectorised (permutations, :func:`recforge.data.sorting.lexsort`, ``bincount``); nothing loops over users. :func:`check_split` runs
after every split: it stops on leaks and counts (and optionally drops) cold users and items.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recforge.data.sorting import count_in, isin, lexsort  # noqa: F401 (isin: recforge.data.split.isin, as before)
from recforge.errors import RecForgeError

log = logging.getLogger("recforge")

PART_PREFIX = "part_"
COLD = ("keep", "drop")


@dataclass
class Split:
    """``train`` / ``val`` / ``test`` interaction frames. ``fold_in`` (strong generalisation only) holds the
    held-out users' input histories: seen at evaluation, never trained on, never a target. ``meta`` records
    what the checks need (``kind``, cut times)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    fold_in: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        out = {"train": self.train, "val": self.val, "test": self.test}
        if self.fold_in is not None:
            out["fold_in"] = self.fold_in
        return out

    def fingerprint(self, n_users: int, n_items: int) -> str:
        """A short hash of exactly which (user, item) pairs are in which part."""
        digest = hashlib.sha256(f"{n_users},{n_items}".encode())
        for part in self.parts().values():
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(np.ascontiguousarray(part["user"].to_numpy(np.int64)).tobytes())
            digest.update(np.ascontiguousarray(part["item"].to_numpy(np.int64)).tobytes())
        return digest.hexdigest()[:16]


def _take(frame: pd.DataFrame, idx: np.ndarray) -> pd.DataFrame:
    return frame.iloc[np.sort(idx)].reset_index(drop=True)


def n_distinct(values: np.ndarray, size: int) -> int:
    """How many distinct indices in ``0..size-1`` ``values`` holds."""
    return int(np.count_nonzero(np.bincount(values, minlength=size))) if len(values) else 0


def _keys(part: pd.DataFrame, n_items: int) -> np.ndarray:
    return part["user"].to_numpy(np.int64) * n_items + part["item"].to_numpy(np.int64)


class Splitter:
    """Base: ``spec()`` (for cache keys) lists the constructor's settings."""

    def spec(self) -> dict:
        return {"split": type(self).__name__, **{k: v for k, v in sorted(vars(self).items())}}

    def __call__(self, frame: pd.DataFrame) -> Split:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    if not (0 <= val_ratio < 1 and 0 < test_ratio < 1 and val_ratio + test_ratio < 1):
        raise RecForgeError(
            f"split: need 0 <= split.val_ratio, 0 < split.test_ratio and their sum < 1; got {val_ratio}, {test_ratio}"
        )


class RandomSplit(Splitter):
    """Interactions shuffled once under ``seed``; ``val_ratio`` and ``test_ratio`` of them held out."""

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 42) -> None:
        _check_ratios(val_ratio, test_ratio)
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        n = len(frame)
        order = np.random.default_rng(self.seed).permutation(n)
        n_test = int(round(n * self.test_ratio))
        n_val = int(round(n * self.val_ratio))
        test, val, train = np.split(order, [n_test, n_test + n_val])
        return Split(*(_take(frame, idx) for idx in (train, val, test)), meta={"kind": "random"})


def _user_positions(frame: pd.DataFrame, seed: int, by_time: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ordered per user (by time, ties random; or random); returns (order, position from end, count)."""
    users = frame["user"].to_numpy()
    tiebreak = np.random.default_rng(seed).random(len(frame))
    keys = (tiebreak, frame["timestamp"].to_numpy(), users) if by_time else (tiebreak, users)
    order = lexsort(keys)
    sorted_users = users[order]
    counts = np.bincount(sorted_users) if len(users) else np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    from_end = ends[sorted_users] - np.arange(len(order))  # 1 = last
    return order, from_end, counts[sorted_users]


class PerUserTemporalSplit(Splitter):
    """Each user's latest ``n_test`` interactions are test, the ``n_val`` before them validation.

    Users with fewer than ``min_interactions`` interactions stay entirely in train. Equal timestamps are
    ordered by a random key drawn under ``seed``, so held-out items are never older than training ones.
    """

    def __init__(self, n_val: int = 1, n_test: int = 1, min_interactions: int = 3, seed: int = 42) -> None:
        if n_val < 0 or n_test < 1:
            raise RecForgeError("split.n_test must be >= 1 and split.n_val >= 0")
        if min_interactions < n_val + n_test + 1:
            raise RecForgeError(f"split.min_interactions must be >= n_val + n_test + 1 = {n_val + n_test + 1} "
                                "(at least one training interaction per user)")
        self.n_val, self.n_test, self.min_interactions, self.seed = n_val, n_test, min_interactions, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        if len(frame) > 1 and (frame["timestamp"].to_numpy() == frame["timestamp"].iat[0]).all():
            log.warning("this split holds out each user's latest interactions, but the data has no timestamps (all "
                        "equal): the held-out items are random ones (drawn under split.seed), and the order a "
                        "sequential model reads a history in is not a time order")
        order, from_end, counts = _user_positions(frame, self.seed, by_time=True)
        eligible = counts >= self.min_interactions
        test = order[eligible & (from_end <= self.n_test)]
        val = order[eligible & (from_end > self.n_test) & (from_end <= self.n_test + self.n_val)]
        train = order[~(eligible & (from_end <= self.n_test + self.n_val))]
        return Split(*(_take(frame, idx) for idx in (train, val, test)), meta={"kind": "per_user_temporal"})


class LeaveOneOutSplit(PerUserTemporalSplit):
    """Each user's latest interaction is the test item, the one before it the validation item.

    Users with fewer than ``min_interactions`` interactions stay entirely in train. Interactions with the
    same timestamp are ordered by a random key drawn under ``seed``, so the held-out item is still latest.
    """

    def __init__(self, min_interactions: int = 3, seed: int = 42) -> None:
        if min_interactions < 3:
            raise RecForgeError("split.min_interactions must be >= 3 (one train, one val, one test item)")
        super().__init__(1, 1, min_interactions, seed)


class PerUserRatioSplit(Splitter):
    """Per user, ``test_ratio`` and ``val_ratio`` of the interactions (rounded, at least one each for users
    with ``min_interactions`` or more) are held out: the latest ones with ``order: time``, random ones with
    ``order: random``. Every user keeps at least one training interaction."""

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.2, order: str = "random",
                 min_interactions: int = 3, seed: int = 42) -> None:
        _check_ratios(val_ratio, test_ratio)
        if order not in ("random", "time"):
            raise RecForgeError(f"split.order must be 'random' or 'time', got {order!r}")
        self.val_ratio, self.test_ratio, self.order = val_ratio, test_ratio, order
        self.min_interactions, self.seed = max(int(min_interactions), 1), seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        order, from_end, counts = _user_positions(frame, self.seed, by_time=self.order == "time")
        eligible = counts >= self.min_interactions
        n_test = np.maximum(np.round(counts * self.test_ratio), 1)
        n_val = np.where(self.val_ratio > 0, np.maximum(np.round(counts * self.val_ratio), 1), 0)
        n_test = np.minimum(n_test, counts - 1)
        n_val = np.minimum(n_val, counts - 1 - n_test)
        test_mask = eligible & (from_end <= n_test)
        val_mask = eligible & ~test_mask & (from_end <= n_test + n_val)
        return Split(_take(frame, order[~(test_mask | val_mask)]), _take(frame, order[val_mask]),
                     _take(frame, order[test_mask]),
                     meta={"kind": "per_user_temporal" if self.order == "time" else "per_user_ratio"})


class TemporalSplit(Splitter):
    """One cut time for everyone: interactions at or after ``test_start`` are test, those in
    ``[val_start, test_start)`` validation. Unset cut times are the timestamp quantiles that hold out
    ``test_ratio`` / ``val_ratio`` of the interactions. Users and items first seen after a cut are cold
    (see ``datamodule.cold_users`` / ``cold_items``)."""

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.1, val_start: int | None = None,
                 test_start: int | None = None) -> None:
        _check_ratios(val_ratio, test_ratio)
        if val_start is not None and test_start is not None and val_start > test_start:
            raise RecForgeError("split.val_start must not be after split.test_start")
        self.val_ratio, self.test_ratio, self.val_start, self.test_start = val_ratio, test_ratio, val_start, test_start

    def __call__(self, frame: pd.DataFrame) -> Split:
        ts = frame["timestamp"].to_numpy(np.int64)
        if len(ts) and ts.min() == ts.max():
            raise RecForgeError("split=temporal needs timestamps, but every interaction has the same time; "
                                "use split=random or split=per_user_ratio")
        test_cut = int(self.test_start if self.test_start is not None
                       else np.quantile(ts, 1 - self.test_ratio, method="higher"))
        val_cut = int(self.val_start if self.val_start is not None
                      else min(np.quantile(ts, 1 - self.test_ratio - self.val_ratio, method="higher"), test_cut))
        if val_cut > test_cut:  # split.val_start given, the test cut a quantile (both given: checked above)
            raise RecForgeError(f"split.val_start={val_cut} is after the test cut {test_cut} (the time that holds out "
                                f"split.test_ratio={self.test_ratio}); set split.test_start after it or lower "
                                "split.val_start")
        test = np.flatnonzero(ts >= test_cut)
        val = np.flatnonzero((ts >= val_cut) & (ts < test_cut))
        train = np.flatnonzero(ts < val_cut)
        return Split(*(_take(frame, idx) for idx in (train, val, test)),
                     meta={"kind": "temporal", "val_cut": val_cut, "test_cut": test_cut})


class StrongGeneralizationSplit(Splitter):
    """Held-out users, as Mult-VAE (Liang et al., WWW 2018) evaluates: ``n_val_users`` and ``n_test_users``
    (or ``val_users_ratio``/``test_users_ratio`` of the users when the counts are null) are removed from
    training; each held-out user's history is split at random into a fold-in part (``split.fold_in``, the
    model's input at evaluation) and ``heldout_ratio`` of targets, rounded down (the reference code's
    ``int(0.2 n)``) but at least one. Users with fewer than ``min_interactions`` interactions are never held
    out. ``train_items_only``: first drop the held-out users' interactions with items no training user has, as
    Liang et al.'s code does (they are in no part; ``n`` counts the rest)."""

    def __init__(self, n_val_users: int | None = None, n_test_users: int | None = None,
                 val_users_ratio: float = 0.1, test_users_ratio: float = 0.1, heldout_ratio: float = 0.2,
                 min_interactions: int = 2, seed: int = 42, train_items_only: bool = False) -> None:
        if not 0 < heldout_ratio < 1:
            raise RecForgeError("split.heldout_ratio must be in (0, 1)")
        _check_ratios(val_users_ratio, test_users_ratio)
        self.n_val_users, self.n_test_users = n_val_users, n_test_users
        self.val_users_ratio, self.test_users_ratio = val_users_ratio, test_users_ratio
        self.heldout_ratio, self.min_interactions, self.seed = heldout_ratio, max(int(min_interactions), 2), seed
        self.train_items_only = train_items_only

    def __call__(self, frame: pd.DataFrame) -> Split:
        rng = np.random.default_rng(self.seed)
        users = frame["user"].to_numpy()
        counts = np.bincount(users)
        candidates = rng.permutation(np.flatnonzero(counts >= self.min_interactions))
        n_users = int((counts > 0).sum())
        n_test = self.n_test_users if self.n_test_users is not None else int(round(n_users * self.test_users_ratio))
        n_val = self.n_val_users if self.n_val_users is not None else int(round(n_users * self.val_users_ratio))
        if n_test < 1 or n_val + n_test > len(candidates) - 1:
            raise RecForgeError(f"split: cannot hold out {n_val} validation and {n_test} test users from "
                                f"{len(candidates)} users with >= {self.min_interactions} interactions; lower the counts")
        role = np.zeros(len(counts), np.int8)  # 0 train, 1 val, 2 test
        role[candidates[:n_test]] = 2
        role[candidates[n_test:n_test + n_val]] = 1
        if self.train_items_only:  # the frame holds the training users, so it is not empty
            items, train_rows = frame["item"].to_numpy(), role[users] == 0
            known = np.bincount(items[train_rows], minlength=items.max() + 1) > 0
            frame = frame[train_rows | known[items]].reset_index(drop=True)
            users = frame["user"].to_numpy()
        row_role = role[users]
        order, from_end, n = _user_positions(frame, int(rng.integers(1 << 31)), by_time=False)
        n_heldout = np.maximum(np.floor(n * self.heldout_ratio), 1)
        target = np.zeros(len(frame), bool)
        target[order] = from_end <= n_heldout
        held = row_role > 0
        return Split(
            train=_take(frame, np.flatnonzero(~held)),
            val=_take(frame, np.flatnonzero((row_role == 1) & target)),
            test=_take(frame, np.flatnonzero((row_role == 2) & target)),
            fold_in=_take(frame, np.flatnonzero(held & ~target)),
            meta={"kind": "strong_generalization"},
        )


class PredefinedSplit(Splitter):
    """A dataset's official split (its ``part_<name>`` column: ml-100k ``u1``-``u5``, ``ua``, ``ub``; the
    LightGCN files ``lightgcn``), used as given.

    Most official splits have no validation part. ``validation: carve`` (default) moves a seeded
    ``val_ratio`` of the training interactions into validation (test stays exactly as published;
    train shrinks); ``validation: test`` validates on the test set, as the LightGCN code does (train and test
    stay exactly as published, but model selection then sees the test set: report it as such).
    """

    def __init__(self, name: str = "u1", validation: str = "carve", val_ratio: float = 0.1, seed: int = 42) -> None:
        if validation not in ("carve", "test"):
            raise RecForgeError(f"split.validation must be 'carve' or 'test', got {validation!r}")
        if validation == "carve" and not 0 < val_ratio < 1:
            raise RecForgeError("split.val_ratio must be in (0, 1) with split.validation=carve")
        self.name, self.validation, self.val_ratio, self.seed = str(name), validation, val_ratio, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        column = PART_PREFIX + self.name
        if column not in frame:
            available = [c[len(PART_PREFIX):] for c in frame.columns if c.startswith(PART_PREFIX)]
            raise RecForgeError(f"split.name={self.name!r}: this dataset has no such official split; available: "
                                f"{available or 'none (use another split)'}")
        label = frame[column].to_numpy()
        train, val, test = (np.flatnonzero(label == v) for v in (0, 1, 2))
        if len(val) == 0:
            if self.validation == "test":
                val = test
            else:
                shuffled = np.random.default_rng(self.seed).permutation(train)
                n_val = int(round(len(train) * self.val_ratio))
                val, train = shuffled[:n_val], shuffled[n_val:]
        return Split(*(_take(frame, idx) for idx in (train, val, test)),
                     meta={"kind": "predefined", "name": self.name, "validation": self.validation})


class KFoldSplit(Splitter):
    """K-fold cross-validation over interactions: a seeded permutation cut into ``n_folds`` parts, part
    ``fold`` is the test set, and ``val_ratio`` of the rest is validation. Same seed, same folds: the
    ``n_folds`` test sets partition the data."""

    def __init__(self, n_folds: int = 5, fold: int = 0, val_ratio: float = 0.1, seed: int = 42) -> None:
        if n_folds < 2:
            raise RecForgeError("split.n_folds must be >= 2")
        if not 0 <= fold < n_folds:
            raise RecForgeError(f"split.fold must be in 0..{n_folds - 1}, got {fold}")
        if not 0 <= val_ratio < 1:
            raise RecForgeError("split.val_ratio must be in [0, 1)")
        self.n_folds, self.fold, self.val_ratio, self.seed = n_folds, fold, val_ratio, seed

    def __call__(self, frame: pd.DataFrame) -> Split:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(frame))
        folds = np.array_split(order, self.n_folds)
        test = folds[self.fold]
        rest = rng.permutation(np.concatenate([f for i, f in enumerate(folds) if i != self.fold]))
        n_val = int(round(len(rest) * self.val_ratio))
        return Split(_take(frame, rest[n_val:]), _take(frame, rest[:n_val]), _take(frame, test),
                     meta={"kind": "kfold", "fold": self.fold})


class _HeldOutIds(Splitter):
    """Whole users or items held out: ``val_ratio`` / ``test_ratio`` of the ids (those with interactions; rounded,
    at least one test id) drawn under ``seed``, with every interaction of theirs, go to validation / test."""

    key = "item"
    kind = "cold_items"

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.1, seed: int = 42) -> None:
        _check_ratios(val_ratio, test_ratio)
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed

    def roles(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's part: 0 train, 1 validation, 2 test."""
        ids = frame[self.key].to_numpy()
        present = np.flatnonzero(np.bincount(ids)) if len(ids) else np.zeros(0, np.int64)
        order = np.random.default_rng(self.seed).permutation(present)
        n_test = max(1, int(round(len(present) * self.test_ratio)))
        n_val = int(round(len(present) * self.val_ratio))
        if n_test + n_val >= len(present):
            raise RecForgeError(f"split={self.kind}: holding out {n_val} validation and {n_test} test {self.key}s of "
                                f"{len(present)} leaves none for training; lower split.val_ratio / split.test_ratio")
        role = np.zeros(int(ids.max()) + 1 if len(ids) else 0, np.int8)
        role[order[:n_test]] = 2
        role[order[n_test:n_test + n_val]] = 1
        return role[ids]

    def __call__(self, frame: pd.DataFrame) -> Split:
        role = self.roles(frame)
        return Split(*(_take(frame, np.flatnonzero(role == r)) for r in (0, 1, 2)), meta=self.meta())

    def meta(self) -> dict:
        return {"kind": self.kind}


class ColdItemSplit(_HeldOutIds):
    """Item cold start: ``val_ratio`` / ``test_ratio`` of the items are held out whole (every interaction with
    them is validation / test; none is in training, which the split check verifies), drawn under ``seed``.

    ``rank_among``: ``held_out`` (default) ranks each user's held-out items among the part's held-out items only,
    as item cold-start studies evaluate (DropoutNet, Volkovs et al. 2017; LightFM's cold-start experiments, Kula
    2015, score only the test items): ranking them among all items would mostly measure that a model puts
    items it never trained on below the warm ones. ``all`` ranks them among every item the user has not seen.
    Only models that score unseen items from their features can be evaluated (the feature models, FM to the
    two-tower model, with item features; popularity as the chance-level reference); the others are refused before
    training."""

    key, kind = "item", "cold_items"

    def __init__(self, val_ratio: float = 0.1, test_ratio: float = 0.1, rank_among: str = "held_out",
                 seed: int = 42) -> None:
        super().__init__(val_ratio, test_ratio, seed)
        if rank_among not in ("held_out", "all"):
            raise RecForgeError(f"split.rank_among must be 'held_out' or 'all', got {rank_among!r}")
        self.rank_among = rank_among

    def meta(self) -> dict:
        return {"kind": self.kind, "rank_among": self.rank_among}


class ColdUserSplit(_HeldOutIds):
    """User cold start: ``val_ratio`` / ``test_ratio`` of the users are held out whole (all their interactions
    are validation / test targets, with no history to fold in; none is in training, which the split check
    verifies), drawn under ``seed``. Their items are ranked among every item (they have seen none). Only models
    that score unseen users from their features can be evaluated (the feature models with user features; popularity,
    which recommends the same popular items to everyone, as the reference)."""

    key, kind = "user", "cold_users"


# ------------------------------------------------------------------------------------------------ checks
def check_no_leak(split: Split, n_items: int, leaks: dict[str, int] | None = None) -> None:
    """Stop when a (user, item) pair is in train and in validation or test (or in validation and test)."""
    leaks = count_leaks(split, n_items) if leaks is None else leaks
    for name, leaked in leaks.items():
        if leaked:
            raise RecForgeError(f"split leak: {leaked} (user, item) pairs are both in {name.replace('_', ' and ')}; "
                                "deduplicate the data (a Deduplicate step) or fix the split")


def count_leaks(split: Split, n_items: int) -> dict[str, int]:
    train_keys = _keys(split.train, n_items)
    test_keys = _keys(split.test, n_items)
    out = {name: count_in(_keys(part, n_items), train_keys)
           for name, part in (("train_val", split.val), ("train_test", split.test))}
    out["val_test"] = count_in(test_keys, _keys(split.val, n_items)) if split.meta.get("validation") != "test" \
        else 0  # a predefined split validated on its test set repeats the test pairs on purpose
    if split.fold_in is not None:
        fold_keys = _keys(split.fold_in, n_items)
        out["fold_in_test"] = count_in(test_keys, fold_keys)
        out["fold_in_val"] = count_in(_keys(split.val, n_items), fold_keys)
    return out


def check_split(split: Split, n_users: int, n_items: int, cold_users: str = "keep",
                cold_items: str = "keep") -> tuple[Split, dict[str, float]]:
    """Leak checks on every split, then cold-start handling. Returns the (possibly filtered) split and counts.

    Stops (``RecForgeError``) on: a (user, item) pair in train and in val/test (or fold-in and a target);
    a temporal split whose test or validation holds an interaction before its cut (or train one after);
    a per-user temporal split where a held-out interaction is older than one of the user's training ones;
    a strong-generalisation split whose held-out users appear in train.
    Cold users (no training or fold-in interaction) and cold items (no training interaction) in val/test
    are counted and, with ``drop``, removed.
    """
    for name, value in (("cold_users", cold_users), ("cold_items", cold_items)):
        if value not in COLD:
            raise RecForgeError(f"datamodule.{name} must be one of {COLD}, got {value!r}")
    report: dict[str, float] = {}
    leaks = count_leaks(split, n_items)
    report["data/leak_pairs"] = float(sum(leaks.values()))
    check_no_leak(split, n_items, leaks)

    meta, violations = split.meta, 0
    if meta.get("kind") == "temporal":
        test_cut, val_cut = meta["test_cut"], meta["val_cut"]
        violations = int((split.test["timestamp"].to_numpy() < test_cut).sum()
                         + (split.val["timestamp"].to_numpy() < val_cut).sum()
                         + (split.val["timestamp"].to_numpy() >= test_cut).sum()
                         + (split.train["timestamp"].to_numpy() >= val_cut).sum())
        report["data/test_cut"], report["data/val_cut"] = float(test_cut), float(val_cut)
    elif meta.get("kind") == "per_user_temporal":
        latest_train = np.full(n_users, np.iinfo(np.int64).min)
        np.maximum.at(latest_train, split.train["user"].to_numpy(), split.train["timestamp"].to_numpy(np.int64))
        for part in (split.val, split.test):
            violations += int((part["timestamp"].to_numpy(np.int64) < latest_train[part["user"].to_numpy()]).sum())
    report["data/temporal_violations"] = float(violations)
    if violations:
        raise RecForgeError(f"split leak: {violations} interactions are on the wrong side of the split's time cut "
                            "(held-out interactions older than training ones); this is a bug in the splitter")
    if meta.get("kind") in ("cold_items", "cold_users"):
        key = "item" if meta["kind"] == "cold_items" else "user"
        if (cold_items if key == "item" else cold_users) == "drop":
            raise RecForgeError(f"split={meta['kind']} holds out whole {key}s, which datamodule.cold_{key}s=drop would "
                                f"remove from validation and test; keep datamodule.cold_{key}s=keep")
        held = np.concatenate([split.val[key].to_numpy(), split.test[key].to_numpy()])
        in_train = count_in(held, split.train[key].to_numpy())
        in_both = count_in(split.test[key].to_numpy(), split.val[key].to_numpy())
        report[f"data/heldout_{key}s_in_train"] = float(in_train)
        if in_train or in_both:
            raise RecForgeError(f"split leak: {in_train} validation/test interactions whose {key} was seen in "
                                f"training and {in_both} test interactions whose {key} is a validation {key}; "
                                f"split={meta['kind']} must hold out whole {key}s (a bug in the splitter)")
    if split.fold_in is not None:
        held_users = np.concatenate([split.val["user"].to_numpy(), split.test["user"].to_numpy()])
        in_train = count_in(held_users, split.train["user"].to_numpy())
        report["data/heldout_users_in_train"] = float(in_train)
        if in_train:
            raise RecForgeError(f"split leak: {in_train} held-out users also have training interactions")

    known_users = np.zeros(n_users, bool)
    known_users[split.train["user"].to_numpy()] = True
    if split.fold_in is not None:
        known_users[split.fold_in["user"].to_numpy()] = True
    known_items = np.zeros(n_items, bool)
    known_items[split.train["item"].to_numpy()] = True
    parts = {}
    for name, part in (("val", split.val), ("test", split.test)):
        users, items = part["user"].to_numpy(), part["item"].to_numpy()
        cold_u, cold_i = ~known_users[users], ~known_items[items]
        report[f"data/n_cold_users_{name}"] = float(n_distinct(users[cold_u], n_users))
        report[f"data/n_cold_items_{name}"] = float(n_distinct(items[cold_i], n_items))
        drop = np.zeros(len(part), bool)
        if cold_users == "drop":
            drop |= cold_u
        if cold_items == "drop":
            drop |= cold_i
        report[f"data/n_cold_dropped_{name}"] = float(drop.sum())
        parts[name] = part[~drop].reset_index(drop=True) if drop.any() else part
    split = Split(split.train, parts["val"], parts["test"], split.fold_in, split.meta)
    return split, report
