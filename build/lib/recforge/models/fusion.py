"""Score and rank fusion: every method is a weighted sum of per-member, per-user transformed scores.

For one user row of member ``m``'s scores over the items that may be recommended (excluded items, e.g. seen
in training, are ``-inf`` and take no part), ``transform`` gives:

========  =================  ==================================================================
method    normalization      per-item value
========  =================  ==================================================================
score     ``minmax``         ``(s - min) / (max - min)`` (0 when the row is constant)
score     ``zscore``         ``(s - mean) / std`` (population std; 0 when the row is constant)
score     ``rank``           ``1 - (r - 1) / (n - 1)``: 1 for the best item, 0 for the worst
rrf       -                  ``1 / (rrf_k + r)`` (reciprocal rank fusion, Cormack et al., SIGIR 2009)
borda     -                  ``n - r`` (Borda count: points for each item ranked below)
vote      -                  ``1[r <= vote_depth]`` plus ``1e-3 / (rrf_k + r)``: weighted votes of each
                             member's top ``vote_depth``, ties between vote totals broken by fused
                             reciprocal rank (the tie-break never outweighs a vote)
========  =================  ==================================================================

where ``r`` is the item's 1-based rank in the row (score descending, equal scores by lower item index: the
evaluator's tie policy) and ``n`` the number of items that may be recommended. The fused score is
``sum_m w_m * t_m``, excluded items ``-inf``. Every method is invariant to a positive rescaling of the weights,
so weights are reported normalised to sum 1.

This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

METHODS = ("score", "rrf", "borda", "vote")
NORMALIZATIONS = ("minmax", "zscore", "rank")
VOTE_TIE_BREAK = 1e-3


def check_method(method: str, normalization: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
    if method == "score" and normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {list(NORMALIZATIONS)}")


def ranks(scores: Tensor) -> Tensor:
    """1-based rank of every entry of each row (score descending, ties by lower column index), as float."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float32)
    return torch.empty_like(scores, dtype=torch.float32).scatter_(1, order, positions.expand_as(scores).contiguous())


def transform(scores: Tensor, method: str = "score", normalization: str = "minmax", rrf_k: float = 60.0,
              vote_depth: int = 50) -> Tensor:
    """Per-row transformed scores (see the module table); ``-inf`` entries are excluded and become 0."""
    check_method(method, normalization)
    s = scores.float()
    valid = torch.isfinite(s)
    n = valid.sum(dim=1, keepdim=True).clamp(min=1).float()
    if method == "score" and normalization in ("minmax", "zscore"):
        filled = torch.where(valid, s, torch.zeros_like(s))
        if normalization == "minmax":
            low = torch.where(valid, s, torch.full_like(s, float("inf"))).amin(dim=1, keepdim=True)
            high = torch.where(valid, s, torch.full_like(s, float("-inf"))).amax(dim=1, keepdim=True)
            span = high - low
            out = torch.where(span > 0, (filled - low) / torch.where(span > 0, span, torch.ones_like(span)),
                              torch.zeros_like(s))
        else:
            mean = filled.sum(dim=1, keepdim=True) / n
            centred = torch.where(valid, s - mean, torch.zeros_like(s))
            std = (centred.pow(2).sum(dim=1, keepdim=True) / n).sqrt()
            out = torch.where(std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(s))
    else:
        r = ranks(s)  # excluded items (-inf) rank after every valid item
        if method == "score":  # rank normalisation
            out = torch.where(n > 1, 1 - (r - 1) / (n - 1).clamp(min=1), torch.ones_like(r))
        elif method == "rrf":
            out = 1.0 / (rrf_k + r)
        elif method == "borda":
            out = n - r
        else:
            out = (r <= vote_depth).float() + VOTE_TIE_BREAK / (rrf_k + r)
    return torch.where(valid, out, torch.zeros_like(out))


def fuse(transformed: Tensor | Sequence[Tensor], weights: Tensor | Sequence[float],
         excluded: Tensor | None = None) -> Tensor:
    """``sum_m w_m * transformed[m]`` for (M, B, I) transformed scores; ``excluded`` (B, I) bool -> ``-inf``."""
    stack = transformed if isinstance(transformed, Tensor) else torch.stack(list(transformed))
    w = torch.as_tensor(weights, dtype=stack.dtype, device=stack.device)
    if w.dim() != 1 or w.numel() != stack.shape[0]:
        raise ValueError(f"need one weight per member ({stack.shape[0]}), got {w.numel()}")
    fused = torch.tensordot(w, stack, dims=1)
    if excluded is not None:
        fused = fused.masked_fill(excluded, float("-inf"))
    return fused


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Non-negative weights rescaled to sum 1 (the fused ranking does not change)."""
    w = [float(x) for x in weights]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
    total = sum(w)
    return [x / total for x in w]


def simplex_grid(n_members: int, step: float) -> list[list[float]]:
    """Every weight vector on the simplex with coordinates in multiples of ``step`` (e.g. 0.1)."""
    if not 0 < step <= 1:
        raise ValueError(f"grid step {step} must lie in (0, 1], e.g. 0.1")
    parts = round(1 / step)

    def compositions(total: int, slots: int):
        if slots == 1:
            yield [total]
            return
        for first in range(total, -1, -1):
            for rest in compositions(total - first, slots - 1):
                yield [first, *rest]

    return [[c / parts for c in combo] for combo in compositions(parts, n_members) if any(combo)]
