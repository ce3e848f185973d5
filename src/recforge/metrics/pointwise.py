"""Point-wise metrics on labelled (user, item) pairs: AUC, group AUC (per user) and log loss.

The labelled pairs of a validation or test part are built once by the data module (see
``RecDataModule.add_pointwise_pairs``): the part's interactions are the positives, and each user gets
``negatives`` sampled items per positive that the user never interacted with in any part (train, fold-in,
validation, test), drawn under a seed, so every model evaluated on the same split scores the same pairs; or,
with a rating threshold, the part's rated pairs labelled ``rating >= threshold`` (no sampling).

* **AUC**: the probability that a random positive pair scores above a random negative pair, over all pairs;
  tied scores count one half (the Mann-Whitney U statistic from tie-averaged ranks).
* **GAUC** (group AUC, Zhou et al. 2018, DIN, section 6.3): each user's AUC over the user's own pairs, averaged
  with weights equal to the user's number of labelled pairs (DIN weighs by impressions: here every labelled pair
  is an impression). Users whose pairs are all of one class have no AUC: they are skipped and counted
  (``gauc_skipped_users``).
* **Log loss**: the mean binary cross-entropy of ``sigmoid(score)`` against the labels. It is a probability's
  loss only when scores are logits, i.e. for models trained with a point-wise log loss (``loss=bce``,
  ``loss=row_bce``); for other losses (BPR, softmax, closed-form models) the scale of a score is arbitrary, and
  the evaluator leaves log loss out rather than log a number that means nothing.

Every function is vectorised: one sort of the pairs (grouped by user, by score within a user) gives the
tie-averaged ranks of every group at once. Sums are in float64. This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits

__all__ = ["POINTWISE_NAMES", "auc", "group_auc", "log_loss", "pointwise_metrics", "tie_ranks"]

POINTWISE_NAMES = ("auc", "gauc", "gauc_skipped_users")  # + "logloss" when scores are logits


def tie_ranks(scores: Tensor, groups: Tensor | None = None) -> Tensor:
    """1-based ranks of ``scores`` (ascending) within each group, tied scores sharing their average rank
    (float64, the input's shape). ``groups`` (same shape, integer) defaults to one group."""
    scores = scores.reshape(-1)
    n = scores.numel()
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=scores.device)
    groups = groups.reshape(-1).to(scores.device, torch.long)
    if n == 0:
        return torch.zeros(0, dtype=torch.float64, device=scores.device)
    by_score = torch.argsort(scores, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]
    s, g = scores[order], groups[order]
    new_group = torch.ones(n, dtype=torch.bool, device=scores.device)
    new_group[1:] = g[1:] != g[:-1]
    new_block = new_group.clone()
    new_block[1:] |= s[1:] != s[:-1]
    position = torch.arange(n, device=scores.device)
    group_start = torch.cummax(torch.where(new_group, position, torch.zeros_like(position)), 0).values
    block_starts = torch.nonzero(new_block).squeeze(1)
    block_lengths = torch.diff(block_starts, append=torch.tensor([n], device=scores.device))
    block_of = torch.cumsum(new_block.long(), 0) - 1
    # a tie block at positions p..p+L-1 of its group (0-based) has ranks p+1..p+L: average p + (L + 1) / 2
    average = (block_starts - group_start[block_starts]).double() + (block_lengths.double() + 1) / 2
    ranks = torch.empty(n, dtype=torch.float64, device=scores.device)
    ranks[order] = average[block_of]
    return ranks


def _auc_parts(scores: Tensor, labels: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per group: the AUC (NaN for a group with one class), the positives and the pairs."""
    positive = labels.reshape(-1).to(scores.device) > 0.5
    groups = groups.reshape(-1).to(scores.device, torch.long)
    ranks = tie_ranks(scores, groups)
    n = torch.bincount(groups, minlength=n_groups).double()
    n_pos = torch.bincount(groups, weights=positive.double(), minlength=n_groups)
    rank_sum = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(
        0, groups[positive], ranks[positive])
    n_neg = n - n_pos
    value = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    value = torch.where((n_pos > 0) & (n_neg > 0), value, torch.full_like(value, float("nan")))
    return value, n_pos, n


def auc(scores: Tensor, labels: Tensor) -> Tensor:
    """The AUC of ``scores`` against 0/1 ``labels`` over all pairs (ties count 1/2); NaN when one class is
    missing. float64 scalar."""
    value, _, _ = _auc_parts(scores.reshape(-1), labels, torch.zeros(scores.numel(), dtype=torch.long), 1)
    return value[0]


def group_auc(scores: Tensor, labels: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(gauc, per_group_auc, skipped)``: the pair-count-weighted mean of the per-group AUCs over groups with
    both classes (NaN when there is none), each group's AUC (NaN where skipped; indexed by the group ids, which
    are renumbered by :func:`torch.unique`), and the number of groups skipped for having one class only."""
    ids, inverse = torch.unique(groups.reshape(-1), return_inverse=True)
    value, _, n = _auc_parts(scores.reshape(-1), labels, inverse, len(ids))
    kept = ~torch.isnan(value)
    skipped = (~kept).sum()
    if not bool(kept.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=value.device), value, skipped
    return (value[kept] * n[kept]).sum() / n[kept].sum(), value, skipped


def log_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 ``labels`` (float64, computed from the
    logits, so large scores do not overflow)."""
    return binary_cross_entropy_with_logits(logits.reshape(-1).double(), labels.reshape(-1).to(logits.device).double())


def pointwise_metrics(scores: Tensor, labels: Tensor, users: Tensor, logits: bool) -> dict[str, Tensor]:
    """``auc``, ``gauc``, ``gauc_skipped_users`` and, when ``logits``, ``logloss`` of the labelled pairs."""
    if scores.numel() == 0:
        return {}
    gauc, _, skipped = group_auc(scores, labels, users)
    out = {"auc": auc(scores, labels), "gauc": gauc, "gauc_skipped_users": skipped.double()}
    if logits:
        out["logloss"] = log_loss(scores, labels)
    return out
