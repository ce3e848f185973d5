"""Sampled evaluation protocols: each user's relevant items ranked against N sampled negatives.

Full ranking (every unseen item is a candidate) is RecForge's default and the only protocol whose numbers
are comparable across papers and models. Krichene & Rendle ("On Sampled Metrics for Item Recommendation",
KDD 2020) show that metrics computed on a sample of negatives are inconsistent with their full-ranking
counterparts: they can reverse the order of two models, and the smaller the sample the more every metric
collapses towards AUC. Sampled protocols are provided only to reproduce papers that use them, e.g. the NCF
protocol (He et al., WWW 2017): leave-one-out split, the held-out item ranked against 99 uniformly sampled
negatives, HR@10 and NDCG@10. Their metric names say so: ``test/sampled99_hr_at_10`` (uniform) and
``test/popsampled99_hr_at_10`` (negatives sampled proportionally to training popularity).

The negatives of a user are a pure function of ``(seed, user index, the user's excluded and relevant items,
item popularity)``: they do not depend on the model, the chunk size, the batch composition or the order of
evaluation, so every model evaluated on the same split sees the same negatives. They are drawn without
replacement from the items the user has neither seen (the evaluation batch's excluded items) nor holds out
(its relevant items), with the weighted-sampling-without-replacement keys of Efraimidis & Spirakis (2006):
item i gets the key ``log(u_i) / w_i`` with ``u_i`` a counter-based hash of ``(seed, user, item)`` mapped to
(0, 1) and ``w_i`` = 1 (uniform) or the item's training popularity (popularity; items nobody trained on are
never drawn); the N largest keys are the negatives. Uniform keys are exact integers, so the uniform
negatives are identical on every device. A user with fewer than N eligible items gets all of them.

This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recforge.errors import RecForgeError
from recforge.metrics.ranking import topk_items

__all__ = ["STRATEGIES", "check_protocol", "protocol_prefix", "hash_uniform_keys", "sample_negatives"]

STRATEGIES = ("uniform", "popularity")
_M32 = 0xFFFFFFFF
_BLOCK = 1 << 22  # key-matrix elements per block (bounds the extra memory of sampling)


def check_protocol(n_negatives: int | None, strategy: str) -> None:
    """Raise :class:`RecForgeError` naming the ``eval.sampled`` key for an invalid protocol (``n_negatives=None``:
    full ranking only)."""
    if strategy not in STRATEGIES:
        raise RecForgeError(f"eval.sampled.strategy={strategy!r} is not one of {list(STRATEGIES)}")
    if n_negatives is not None and (type(n_negatives) is not int or n_negatives < 1):
        raise RecForgeError(f"eval.sampled.n_negatives={n_negatives!r} must be a positive integer "
                            "(e.g. 99), or set eval.sampled=null for full ranking only")


def protocol_prefix(n_negatives: int, strategy: str) -> str:
    """The metric-name prefix of a protocol: ``sampled99`` (uniform) or ``popsampled99`` (popularity)."""
    check_protocol(n_negatives, strategy)
    return f"{'pop' if strategy == 'popularity' else ''}sampled{int(n_negatives)}"


def _mix32(x: Tensor) -> Tensor:
    """A bijection of [0, 2**32) (xorshift-multiply rounds); int64 in, int64 out, no overflow."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def hash_uniform_keys(users: Tensor, n_items: int, seed: int) -> Tensor:
    """(B, n_items) int64 hash values in [0, 2**32), a pure function of (seed, user, item).

    For a fixed user the map item -> value is injective (a composition of bijections of [0, 2**32)),
    so a row has no ties.
    """
    users = users.to(torch.long) & _M32
    h = _mix32(_mix32(torch.full_like(users, int(seed) & _M32)) ^ users)
    g = _mix32((h + 0x9E3779B9) & _M32)
    items = torch.arange(n_items, device=users.device, dtype=torch.long)
    return _mix32((_mix32(h.unsqueeze(1) ^ items) + g.unsqueeze(1)) & _M32)


def sample_negatives(
    users: Tensor,
    n_items: int,
    n_negatives: int,
    blocked_rows: Tensor,
    blocked_cols: Tensor,
    seed: int = 0,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fixed negatives for a chunk of users: ``(items, valid)``, both ``(B, n_negatives')``.

    Args:
        users: (B,) global user indices (they seed each row).
        n_items: catalogue size.
        n_negatives: N, the number of negatives per user.
        blocked_rows, blocked_cols: (row in [0, B), item) pairs that must not be drawn (seen and relevant items).
        seed: the sampling seed; the same seed gives the same negatives for every model.
        weights: None for uniform sampling, else (n_items,) non-negative sampling weights (popularity).

    Returns ``items`` int64 with ``n_negatives' = min(N, n_items)`` columns in key order, and ``valid``
    (False where a user had fewer than N eligible items; those entries hold ``n_items``).
    """
    check_protocol(n_negatives, "uniform" if weights is None else "popularity")
    device = users.device
    n_rows = users.numel()
    width = min(int(n_negatives), n_items)
    items = torch.full((n_rows, width), n_items, dtype=torch.long, device=device)
    valid = torch.zeros((n_rows, width), dtype=torch.bool, device=device)
    if n_rows == 0 or width == 0:
        return items, valid
    rows = blocked_rows.to(device, torch.long)
    cols = blocked_cols.to(device, torch.long)
    w = None if weights is None else weights.to(device, torch.float64)
    step = max(1, _BLOCK // max(n_items, 1))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        h = hash_uniform_keys(users[start:stop], n_items, seed)
        if w is None:
            keys = (-h).to(torch.float64)  # exact: the smallest hash values win
        else:
            u = (h.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)
            keys = torch.log(u) / w  # log(u) < 0, so weight 0 gives -inf: never drawn
        in_block = (rows >= start) & (rows < stop)
        keys[rows[in_block] - start, cols[in_block]] = float("-inf")
        values, top = topk_items(keys, width)
        ok = torch.isfinite(values)
        items[start:stop] = torch.where(ok, top, torch.full_like(top, n_items))
        valid[start:stop] = ok
    return items, valid
