"""Top-K ranking metrics on tensors: masking, exact top-K, hit matrices, per-user and aggregate metrics.

The evaluator's pipeline for one chunk of users is::

    scores = model.score(users)                                  # (B, n_items)
    mask_scores_(scores, seen_rows, seen_cols)                   # training items -> -inf
    values, indices = topk_items(scores, max(ks))
    valid = torch.isfinite(values)                               # -inf positions are not recommendations
    hits, n_rel, ideal = relevance_matrix(B, indices, test_rows, test_cols, test_gain, valid)
    per_user = ranking_metrics(hits, n_rel, ks, ideal)           # (B,) tensors; NaN for users without test items

Tie policy (everywhere): items are ranked by score descending, and equal scores by item index ascending.
``-0.0`` and ``0.0`` are equal scores. Scores must not contain NaN.

NaN policy: a user with no relevant items gets NaN for every per-user metric; the caller drops those users
(e.g. ``torch.nanmean`` or ``values[~values.isnan()]``) before averaging.

This module imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["mask_scores_", "topk_items", "relevance_matrix", "ranking_metrics", "beyond_accuracy"]


def mask_scores_(scores: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """In place: ``scores[rows, cols] = -inf`` (items a user must not be recommended, e.g. seen in training).

    ``rows`` index the rows of this chunk (in ``[0, B)``), ``cols`` the items. Returns ``scores``.
    """
    scores[rows.to(scores.device, torch.long), cols.to(scores.device, torch.long)] = float("-inf")
    return scores


def _sort_by_score_then_index(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Reorder each row of a (values, indices) pair by (value desc, index asc)."""
    indices, perm = indices.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, perm)


def topk_items(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact, deterministic top-k per row: ``(values, indices)``, both ``(B, k')`` with ``k' = min(k, n_items)``.

    Tie policy: higher score first; equal scores are ordered by LOWER item index first. This also decides
    which of several items tied with the k-th score get into the list (the lowest indices do).

    Fast path: ``torch.topk`` with ``k' + 1`` columns; the k' results are re-sorted by (score desc, index asc).
    Only rows whose k-th and (k+1)-th values are equal (a boundary tie, including rows with fewer than k'
    finite scores) are recomputed with a stable descending sort of the whole row. Long rows
    (``n_items >= 8 * k * group``) first narrow the row to the columns of its k best blocks of ``group``
    columns (see ``_topk_by_blocks``; exact, same ties), which reads the scores once instead of copying and
    partially sorting every row.

    ``-inf`` entries appear in the result when a row has fewer than k finite scores; callers treat them as
    'no recommendation' (``valid = torch.isfinite(values)``). Values keep the dtype of ``scores``; indices
    are int64. Scores must not contain NaN.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, n_items), got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_items = scores.shape[1]
    kk = min(k, n_items)
    if kk == n_items:  # the whole row is returned: a stable sort is exact and as cheap as anything else
        values, indices = torch.sort(scores, dim=1, descending=True, stable=True)
        return values, indices
    group = _group_size(n_items, kk)
    if group:
        return _topk_by_blocks(scores, kk, group)
    return _topk_exact(scores, kk)


_MIN_GROUP, _MAX_GROUP = 16, 256


def _group_size(n_items: int, k: int) -> int:
    """Block width for :func:`_topk_by_blocks`, or 0 when the catalogue is too small for it to pay off.

    The k best blocks hold ``k * group`` candidates out of ``n_items``; blocks of ~sqrt(n_items / k) columns
    balance the block-maximum top-k against the candidate top-k.
    """
    group = 1 << max(0, round(math.log2(max(1.0, math.sqrt(n_items / k)))))
    group = min(_MAX_GROUP, max(_MIN_GROUP, group))
    return group if n_items >= 8 * k * group else 0


def _topk_by_blocks(scores: Tensor, k: int, group: int) -> tuple[Tensor, Tensor]:
    """Exact top-k of long rows through block maxima; same result (values, indices, ties) as :func:`_topk_exact`.

    Under the total order (score desc, index asc) the best element of a block is its maximum at its lowest
    index, and blocks of contiguous columns rank by (block max desc, block index asc). Each of a row's top-k
    items lies in one of the k best blocks: the blocks ranked above its own block have distinct best elements
    that all rank above it, so there are fewer than k of them. The candidates (the k best blocks, in column
    order, plus the ragged tail of the row) are therefore a superset of the top-k, and keeping them in column
    order makes the candidate top-k's tie-break the item-index tie-break. Reading the row once for the block
    maxima is several times cheaper than a full ``torch.topk``, which copies and partially sorts each row.
    """
    n_rows, n_items = scores.shape
    n_blocks = n_items // group
    body = n_blocks * group
    block_max = scores[:, :body].reshape(n_rows, n_blocks, group).amax(dim=2)
    _, best_blocks = _topk_exact(block_max, k)
    best_blocks = best_blocks.sort(dim=1).values
    columns = (best_blocks.unsqueeze(2) * group + torch.arange(group, device=scores.device)).reshape(n_rows, -1)
    if body < n_items:
        tail = torch.arange(body, n_items, device=scores.device).expand(n_rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, position = _topk_exact(scores.gather(1, columns), k)
    return values, columns.gather(1, position)


def _topk_exact(scores: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    """``torch.topk`` plus the tie fix-up described in :func:`topk_items` (requires ``kk < n_items``)."""
    if kk >= scores.shape[1]:
        return torch.sort(scores, dim=1, descending=True, stable=True)
    top_values, top_indices = torch.topk(scores, kk + 1, dim=1, sorted=True)
    tied = (top_values[:, kk - 1] == top_values[:, kk]).nonzero().squeeze(1)
    values, indices = _sort_by_score_then_index(top_values[:, :kk], top_indices[:, :kk])
    if tied.numel():
        exact_values, exact_indices = torch.sort(scores[tied], dim=1, descending=True, stable=True)
        values[tied] = exact_values[:, :kk]
        indices[tied] = exact_indices[:, :kk]
    return values, indices


def relevance_matrix(
    n_rows: int,
    topk_indices: Tensor,
    rel_rows: Tensor,
    rel_cols: Tensor,
    rel_gain: Tensor | None = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Look up which recommended items are relevant, without a Python loop over users.

    Args:
        n_rows: B, the number of rows of ``topk_indices``.
        topk_indices: (B, K) recommended item indices, best first.
        rel_rows, rel_cols: the relevant (row, item) pairs of this chunk, row in ``[0, B)``.
        rel_gain: optional non-zero gain per pair (graded relevance; a rating, negative ones included); None
            means binary (gain 1). Duplicate pairs count once, with their largest gain. A zero gain is refused:
            the binary metrics read a hit as a non-zero entry of ``hits``.
        valid: optional (B, K) bool, False where the position is not a real recommendation
            (``torch.isfinite(values)``); such positions are never hits.

    Returns:
        hits: (B, K) gain at each rank (1.0 binary / gain graded; 0 where not relevant or not valid).
            dtype is ``rel_gain.dtype`` if that is floating point, else float32.
        n_relevant: (B,) int64 number of distinct relevant items per row.
        ideal_gains: (B, K) the row's relevant gains sorted descending, zero-padded (for graded IDCG@k, k <= K).
    """
    device = topk_indices.device
    if topk_indices.dim() != 2 or topk_indices.shape[0] != n_rows:
        raise ValueError(f"topk_indices must have shape ({n_rows}, K), got {tuple(topk_indices.shape)}")
    width = topk_indices.shape[1]
    floating_gain = rel_gain is not None and rel_gain.is_floating_point()
    dtype = rel_gain.dtype if floating_gain else torch.float32  # type: ignore[union-attr]
    rows = rel_rows.to(device, torch.long)
    cols = rel_cols.to(device, torch.long)
    gains = torch.ones(rows.shape, dtype=dtype, device=device) if rel_gain is None else rel_gain.to(device, dtype)
    if rows.numel() and bool(((rows < 0) | (rows >= n_rows)).any()):
        raise ValueError(f"rel_rows must lie in [0, {n_rows}) (rows of this chunk, not global user ids)")
    if rel_gain is not None and bool((gains == 0).any()):
        raise ValueError("rel_gain has a zero gain: a relevant pair needs a non-zero one (store a held-out rating "
                         "of 0 as a small positive number, as the data module does)")

    # Sort pairs by key = row * n_cols + col; within a key the largest gain comes first, and only it is kept.
    n_cols = 1 + max((int(t.max()) for t in (topk_indices, cols) if t.numel()), default=0)
    by_gain = torch.argsort(gains, descending=True, stable=True)
    keys = rows[by_gain] * n_cols + cols[by_gain]
    keys, by_key = torch.sort(keys, stable=True)
    gains = gains[by_gain][by_key]
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, gains = keys[first], gains[first]
    rows = torch.div(keys, n_cols, rounding_mode="floor")

    hits = torch.zeros(n_rows, width, dtype=dtype, device=device)
    if keys.numel():
        query = torch.arange(n_rows, device=device).unsqueeze(1) * n_cols + topk_indices
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        found = keys[pos] == query
        if valid is not None:
            found &= valid.to(device, torch.bool)
        hits = torch.where(found, gains[pos], hits)

    n_relevant = torch.bincount(rows, minlength=n_rows)

    # Ideal gains: order pairs by (row asc, gain desc), rank within the row, keep ranks < K.
    by_gain = torch.argsort(gains, descending=True, stable=True)
    by_row = torch.argsort(rows[by_gain], stable=True)
    order = by_gain[by_row]
    rows, gains = rows[order], gains[order]
    start = torch.cumsum(n_relevant, 0) - n_relevant
    rank = torch.arange(rows.numel(), device=device) - start[rows]
    keep = rank < width
    ideal_gains = torch.zeros(n_rows, width, dtype=dtype, device=device)
    ideal_gains[rows[keep], rank[keep]] = gains[keep]
    return hits, n_relevant, ideal_gains


def _pad_columns(x: Tensor, width: int) -> Tensor:
    """Right-pad (B, K) with zero columns to (B, width) if K < width, else cut to width."""
    if x.shape[1] >= width:
        return x[:, :width]
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def ranking_metrics(
    hits: Tensor, n_relevant: Tensor, ks: Sequence[int], ideal_gains: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-user top-k metrics, each a (B,) tensor, for every k in ``ks``, computed from the hit matrix.

    Args:
        hits: (B, K) gain at each rank, best rank first; ``hits != 0`` means relevant. Columns beyond K
            (a k larger than the list, e.g. more than the catalogue) count as misses.
        n_relevant: (B,) number of relevant items per user.
        ks: cut-offs, each >= 1.
        ideal_gains: (B, K') relevant gains sorted descending (see ``relevance_matrix``); enables ``gndcg``.

    Names and definitions (rank i starts at 1, ``c`` = number of hits in the top k, ``R`` = n_relevant):
        ``precision_at_k`` c / k; ``recall_at_k`` c / R; ``trecall_at_k`` c / min(k, R) (the truncated recall
        of the Mult-VAE / LightGCN papers); ``ndcg_at_k`` binary DCG with discount 1/log2(i + 1) over IDCG of
        min(k, R) relevant items; ``gndcg_at_k`` the same with the gains in ``hits`` and ``ideal_gains``
        (linear gains: pass ``2**r - 1`` yourself if you want exponential ones); ``hr_at_k`` 1 if c > 0;
        ``mrr_at_k`` 1 / rank of the first hit, 0 if none; ``map_at_k`` sum of precision@i over hit ranks
        i <= k, divided by min(k, R); ``f1_at_k`` 2PR / (P + R), 0 when there is no hit.

    NaN policy: users with ``n_relevant == 0`` get NaN for every metric; drop them before averaging.
    Output dtype is ``hits.dtype`` if float32/float64, else float32.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of cut-offs >= 1, got {list(ks)}")
    device = hits.device
    dtype = hits.dtype if hits.dtype in (torch.float32, torch.float64) else torch.float32
    kmax = max(ks)
    gains = _pad_columns(hits.to(dtype), kmax)
    rel = (gains != 0).to(dtype)   # a hit, whatever its gain's sign (a negative rating is still held out)
    rank = torch.arange(1, kmax + 1, device=device, dtype=dtype)
    disc = 1.0 / torch.log2(rank + 1)

    n_hits = rel.cumsum(1)  # c at every cut-off
    dcg = (rel * disc).cumsum(1)
    idcg_of = torch.cat([disc.new_zeros(1), disc.cumsum(0)])  # idcg_of[m] = IDCG of m relevant items
    first_rr = torch.cummax(rel / rank, dim=1).values  # max of 1/i over hit ranks = 1 / first hit rank
    ap_sum = (rel * n_hits / rank).cumsum(1)
    if ideal_gains is not None:
        gdcg = (gains * disc).cumsum(1)
        gidcg = (_pad_columns(ideal_gains.to(device, dtype), kmax) * disc).cumsum(1)

    n_rel = n_relevant.to(device)
    has_rel = n_rel > 0
    nan = torch.full((), float("nan"), dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    out: dict[str, Tensor] = {}
    for k in ks:
        c = n_hits[:, k - 1]
        m = n_rel.clamp(max=k)  # min(k, R)
        precision = c / k
        recall = c / n_rel.to(dtype)
        values = {
            "precision": precision,
            "recall": recall,
            "trecall": c / m.to(dtype),
            "ndcg": dcg[:, k - 1] / idcg_of[m],
            "hr": (c > 0).to(dtype),
            "mrr": first_rr[:, k - 1],
            "map": ap_sum[:, k - 1] / m.to(dtype),
            "f1": torch.where(c > 0, 2 * precision * recall / (precision + recall), zero),
        }
        if ideal_gains is not None:
            values["gndcg"] = gdcg[:, k - 1] / gidcg[:, k - 1]
        for name, value in values.items():
            out[f"{name}_at_{k}"] = torch.where(has_rel, value, nan)
    return out


def beyond_accuracy(
    topk_indices: Tensor, valid: Tensor, item_popularity: Tensor, n_train_users: int, ks: Sequence[int]
) -> dict[str, float]:
    """Aggregate metrics over all evaluated users' top-k lists (pass every user's rows at once).

    For each k (lists cut to their first k positions; only ``valid`` positions count):
        ``coverage_at_k``: fraction of the catalogue recommended to at least one user.
        ``gini_at_k``: Gini index of the recommendation counts over the whole catalogue
            (``sum_i (2i - n - 1) x_(i) / (n * sum x)`` with counts sorted ascending; 0 = equal, (n-1)/n = one item).
        ``expgini_at_k``: the same Gini index of the items' exposure, each listing at rank r exposing its item by
            ``1 / log2(r + 1)`` (the NDCG discount as a browsing model: Singh & Joachims 2018).
        ``novelty_at_k``: mean of ``-log2(pop_i / n_train_users)`` over recommended items (pop 0 counts as 1).
        ``avgpop_at_k``: mean training popularity of recommended items.
    ``item_popularity`` is (n_items,): the number of training users of each item. With no valid
    recommendation at all, gini, novelty and avgpop are NaN and coverage is 0. Values are Python floats.
    """
    n_items = item_popularity.numel()
    pop = item_popularity.to(topk_indices.device, torch.float64)
    info = -torch.log2(pop.clamp(min=1) / n_train_users)
    position = torch.arange(1, n_items + 1, device=pop.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(torch.arange(2, topk_indices.shape[1] + 2, device=pop.device, dtype=torch.float64))

    def gini(x: Tensor) -> float:
        return float(((2 * position - n_items - 1) * x.sort().values).sum() / (n_items * x.sum()))

    out: dict[str, float] = {}
    for k in ks:
        keep = valid[:, :k].to(torch.bool)
        items = topk_indices[:, :k][keep]
        counts = torch.bincount(items, minlength=n_items).to(torch.float64)
        total = counts.sum()
        exposure = torch.bincount(items, weights=discount[:k].expand(keep.shape)[keep], minlength=n_items)
        out[f"coverage_at_{k}"] = float((counts > 0).sum()) / n_items
        out[f"gini_at_{k}"] = gini(counts)
        out[f"expgini_at_{k}"] = gini(exposure)
        out[f"novelty_at_{k}"] = float((counts * info).sum() / total)
        out[f"avgpop_at_{k}"] = float((counts * pop).sum() / total)
    return out
