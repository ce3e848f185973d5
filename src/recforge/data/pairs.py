"""Labelled (user, item) pairs for point-wise evaluation (AUC, GAUC, log loss), built once per split and seed.

:func:`labelled_pairs` takes a validation or test part and returns its positives plus, per user, ``negatives``
times as many sampled items the user never interacted with in any part (``blocked_keys``), or, given a
``threshold``, the part's rated pairs labelled ``rating >= threshold``. Sampling is vectorised rejection: all
negatives are drawn at once (uniformly from ``allowed`` items), and the draws that hit a blocked or an already
drawn pair are drawn again, all of them together, round after round. A user is never asked for more negatives
than it has unblocked allowed items; a user with almost every item blocked can still end a round short, after
``max_rounds`` rounds, and then keeps fewer negatives (counted as ``short``).
"""

from __future__ import annotations

import numpy as np

from recforge.data.sorting import isin, sort_keys
from recforge.errors import RecForgeError


def labelled_pairs(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_items: int,
                   blocked_keys: np.ndarray, negatives: int = 1, seed: int = 0, threshold: float | None = None,
                   allowed: np.ndarray | None = None, max_rounds: int = 64
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(users, items, labels, short)`` sorted by user then item; labels are float32 0/1.

    Args:
        users, items, ratings: the part's interactions (contiguous indices; repeated pairs count once).
        n_items: the catalogue size.
        blocked_keys: ``user * n_items + item`` of every interaction in every part (never a negative).
        negatives: sampled negatives per positive (``eval.pointwise_negatives``).
        seed: the sampling seed (``eval.pointwise_seed``): the same seed gives the same pairs for every model.
        threshold: label the part's own pairs ``rating >= threshold`` instead of sampling negatives.
        allowed: optional (n_items,) bool mask of the items negatives may be (the ranked candidates).
    """
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    keys, first = np.unique(users * n_items + items, return_index=True)
    if threshold is not None:
        labels = (np.asarray(ratings, np.float64)[first] >= threshold).astype(np.float32)
        return keys // n_items, keys % n_items, labels, 0
    if type(negatives) is not int or negatives < 1:
        raise RecForgeError(f"eval.pointwise_negatives={negatives!r} must be a positive integer (negatives per "
                            "positive, e.g. 1), or set eval.pointwise_threshold to label rated pairs instead")
    pos_users, pos_items = keys // n_items, keys % n_items
    pool = np.arange(n_items, dtype=np.int64) if allowed is None else np.flatnonzero(allowed).astype(np.int64)
    blocked = np.unique(np.asarray(blocked_keys, np.int64))
    if len(pool) == 0:
        return pos_users, pos_items, np.ones(len(keys), np.float32), 0
    # at most as many negatives as the user has unblocked pool items
    in_pool = np.zeros(n_items, bool)
    in_pool[pool] = True
    owner, blocked_item = blocked // n_items, blocked % n_items
    n_users = int(max(pos_users.max(initial=-1), owner.max(initial=-1))) + 1
    taken = np.bincount(owner[in_pool[blocked_item]], minlength=n_users)
    wanted = np.bincount(pos_users, minlength=n_users) * negatives
    counts = np.minimum(wanted, len(pool) - taken)
    neg_users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    rng = np.random.default_rng(seed)
    neg_items = pool[rng.integers(len(pool), size=len(neg_users))]
    redo = np.arange(len(neg_users))
    for _ in range(max_rounds):
        drawn = neg_users * n_items + neg_items
        bad = isin(drawn, blocked)
        _, first_of = np.unique(drawn, return_index=True)  # a pair drawn twice: the later copies are redrawn
        repeated = np.ones(len(drawn), bool)
        repeated[first_of] = False
        redo = np.flatnonzero(bad | repeated)
        if not len(redo):
            break
        neg_items[redo] = pool[rng.integers(len(pool), size=len(redo))]
    else:
        drawn = neg_users * n_items + neg_items
        _, first_of = np.unique(drawn, return_index=True)
        keep = np.zeros(len(drawn), bool)
        keep[first_of] = True
        keep &= ~isin(drawn, blocked)
        redo = np.flatnonzero(~keep)
    ok = np.ones(len(neg_users), bool)
    ok[redo] = False
    all_users = np.concatenate([pos_users, neg_users[ok]])
    all_items = np.concatenate([pos_items, neg_items[ok]])
    labels = np.concatenate([np.ones(len(pos_users), np.float32), np.zeros(int(ok.sum()), np.float32)])
    _, order = sort_keys(all_users * n_items + all_items)
    return all_users[order], all_items[order], labels[order], int(len(redo) + (wanted - counts).sum())
