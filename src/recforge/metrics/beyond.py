"""Beyond-accuracy metrics of top-K lists, and the user and item slices results are broken down by.

Slices (built once from the training data by :func:`user_slices` and :func:`popularity_groups`):

- users by **activity**, the length of their training history: ``cold`` / ``light`` / ``medium`` / ``heavy``,
  split at three given cut points or at quantiles of the lengths of users with a history (default quartiles);
  a length equal to a cut point falls below it, and users without history are ``cold``;
- users by **popularity profile**, the mean training popularity of the items in their history: ``niche`` /
  ``diverse`` / ``blockbuster`` below, between and above two quantiles (default 20% and 80%, the split of
  Abdollahpouri et al., "The Unfairness of Popularity Bias in Recommendation", 2019); users without history are
  in neither;
- items by **popularity**: ``head`` / ``mid`` / ``tail`` by the share of training interactions held by the items
  more popular than them (default cuts 20% and 80%: the head is the most popular items until they hold 20% of the
  interactions, the tail the items after the first 80%; items never seen in training are tail).

Per-user list metrics, each a (B,) tensor per cut-off k, NaN where undefined (:func:`list_metrics`):

- ``ild_at_k``: intra-list diversity, the mean of ``1 - cos(v_i, v_j)`` over the pairs of the list's items
  (Ziegler et al. 2005), with item vectors from item features or the model (NaN below two items);
- ``miscalibration_at_k``: ``KL(p || q~)`` between the category (genre) distribution ``p`` of the user's history
  and ``q`` of the list, ``q~ = (1 - alpha) q + alpha p`` (Steck, "Calibrated Recommendations", RecSys 2018);
  an item's categories share its unit of mass equally, list and history items weigh the same (NaN for a user
  whose history has no category);
- ``aplt_at_k``: the share of the list's items in the long tail (the ``tail`` group): APLT, Abdollahpouri et al.
  2019 (NaN for an empty list);
- ``psrecall_at_k``: popularity-stratified recall (Steck, "Item Popularity and Recommendation Accuracy", RecSys
  2011): recall with each relevant item weighted by ``popularity ** -gamma`` (popularity 0 counts as 1), per user;
- ``serendipity_at_k``: relevant and unexpected items over k, unexpected meaning not in the popularity
  baseline's top k for this user (the most popular items the user may be recommended; Ge et al. 2010).

The aggregate metrics of all lists (coverage, Gini, exposure Gini, novelty, average popularity) are
:func:`recforge.metrics.ranking.beyond_accuracy`. This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from recforge.metrics.ranking import beyond_accuracy, ranking_metrics, relevance_matrix

__all__ = ["ACTIVITY", "ITEM_GROUPS", "LIST_METRIC_NAMES", "PROFILE", "ListContext", "history_distribution",
           "item_slice_metrics", "list_metrics", "popularity_groups", "popularity_positions", "slice_aggregates", "slice_labels",
           "unit_rows", "user_slices"]

ACTIVITY = ("cold", "light", "medium", "heavy")
PROFILE = ("niche", "diverse", "blockbuster")
ITEM_GROUPS = ("head", "mid", "tail")
LIST_METRIC_NAMES = ("ild", "miscalibration", "aplt", "psrecall", "serendipity")


def popularity_groups(item_popularity: Tensor, shares: Sequence[float] = (0.2, 0.8)) -> Tensor:
    """(n_items,) int64 group of each item: 0 head, 1 mid, 2 tail. Items are ordered by popularity (descending,
    ties by lower index); an item whose more popular items hold less than ``shares[0]`` of all interactions is
    head, at least ``shares[1]`` tail, else mid."""
    if len(shares) != 2 or not 0 < shares[0] <= shares[1] <= 1:
        raise ValueError(f"shares must be two increasing fractions in (0, 1], got {list(shares)}")
    pop = item_popularity.detach().double()
    order = torch.sort(-pop, stable=True).indices
    ranked = pop[order]
    before = (torch.cumsum(ranked, 0) - ranked) / ranked.sum().clamp(min=1e-12)
    groups = torch.empty_like(order)
    groups[order] = torch.bucketize(before, torch.tensor(shares, dtype=torch.float64, device=pop.device), right=True)
    return groups


def popularity_positions(item_popularity: Tensor) -> Tensor:
    """(n_items,) int64 place of each item in the popularity order (0 = most popular; ties by lower index), the
    order a popularity baseline ranks by."""
    order = torch.sort(-item_popularity.detach().double(), stable=True).indices
    positions = torch.empty_like(order)
    positions[order] = torch.arange(order.numel(), device=order.device)
    return positions


def user_slices(history_users: Tensor, history_items: Tensor, n_users: int, item_popularity: Tensor,
                activity_quantiles: Sequence[float] = (0.25, 0.5, 0.75), activity_cuts: Sequence[float] | None = None,
                profile_quantiles: Sequence[float] = (0.2, 0.8)) -> dict[str, tuple[tuple[str, ...], Tensor]]:
    """``{"activity": (ACTIVITY, codes), "profile": (PROFILE, codes)}``: each user's group (an index into the names;
    -1 for none) from the (user, item) pairs of the training history; see the module docstring."""
    cuts = activity_cuts if activity_cuts is not None else activity_quantiles
    if len(cuts) != len(ACTIVITY) - 1 or list(cuts) != sorted(cuts):
        raise ValueError(f"activity needs {len(ACTIVITY) - 1} increasing cut points or quantiles, got {list(cuts)}")
    if len(profile_quantiles) != len(PROFILE) - 1 or list(profile_quantiles) != sorted(profile_quantiles):
        raise ValueError(f"profile needs {len(PROFILE) - 1} increasing quantiles, got {list(profile_quantiles)}")
    users = history_users.long()
    length = torch.bincount(users, minlength=n_users).double()
    known = length > 0
    mean_pop = torch.bincount(users, weights=item_popularity.double()[history_items.long()], minlength=n_users)
    mean_pop = mean_pop / length.clamp(min=1)
    if activity_cuts is None:
        cuts = _quantiles(length[known], activity_quantiles)
    activity = torch.bucketize(length, torch.as_tensor(cuts, dtype=torch.float64))
    profile = torch.bucketize(mean_pop, _quantiles(mean_pop[known], profile_quantiles))
    profile[~known] = -1
    return {"activity": (ACTIVITY, activity), "profile": (PROFILE, profile)}


def history_distribution(history_users: Tensor, item_rows: Tensor, n_users: int) -> Tensor:
    """(n_users, G) the rows of the items in each user's history (one per (user, item) pair) summed and scaled to
    sum 1: the category distribution ``p(g|u)`` from the items' category rows, or the share of head, mid and tail
    items from one-hot group rows. A user without history, or whose items have no category, gets a zero row."""
    totals = torch.zeros(n_users, item_rows.shape[1], dtype=torch.float32, device=item_rows.device)
    totals.index_add_(0, history_users.long(), item_rows.float())
    return totals / totals.sum(1, keepdim=True).clamp(min=1e-12)


def _quantiles(values: Tensor, q: Sequence[float]) -> Tensor:
    if not values.numel():
        return torch.zeros(len(q), dtype=torch.float64)
    return torch.quantile(values.double(), torch.tensor(q, dtype=torch.float64))


def unit_rows(vectors: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (float32; all-zero and non-finite rows become zero rows)."""
    vectors = torch.nan_to_num(vectors.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.nn.functional.normalize(vectors, dim=1)


@dataclass
class ListContext:
    """What the list metrics and the slices need besides the lists, built once from the training data.

    Args:
        item_popularity: (n_items,) training users per item.
        item_groups: (n_items,) :func:`popularity_groups` codes.
        user_groups: :func:`user_slices`; empty for no user slices.
        item_vectors: (n_items, d) unit rows for ``ild`` (item features or the model's vectors), or None.
        item_categories: (n_items, G) each item's category distribution ``p(g|i)`` (rows sum to 1, or 0 for an
            item without category), or None.
        user_categories: (n_users, G) each user's history distribution ``p(g|u)``, or None.
        user_group_shares: (n_users, 3) the share of head, mid and tail items in each history (re-rankers), or None.
        psrecall_gamma: the popularity-stratified recall's exponent.
        calibration_alpha: the mixing weight of ``q~``.
        vectors_from: where ``item_vectors`` come from, said in reports: ``item_features``, ``model`` or ``none``.
    """

    item_popularity: Tensor
    item_groups: Tensor
    user_groups: dict[str, tuple[tuple[str, ...], Tensor]] = field(default_factory=dict)
    item_vectors: Tensor | None = None
    item_categories: Tensor | None = None
    user_categories: Tensor | None = None
    user_group_shares: Tensor | None = None
    psrecall_gamma: float = 0.5
    calibration_alpha: float = 0.01
    vectors_from: str = "none"

    def __post_init__(self) -> None:
        self.positions = popularity_positions(self.item_popularity)
        self.weights = self.item_popularity.detach().float().clamp(min=1) ** -self.psrecall_gamma

    def to(self, device: torch.device | str) -> "ListContext":
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        moved["user_groups"] = {k: (names, codes.to(device)) for k, (names, codes) in self.user_groups.items()}
        return replace(self, **moved)

    def metric_names(self, ks: Sequence[int]) -> list[str]:
        """The per-user list metrics this context can compute."""
        names = [m for m in LIST_METRIC_NAMES if (m != "ild" or self.item_vectors is not None)
                 and (m != "miscalibration" or self.user_categories is not None)]
        return [f"{m}_at_{k}" for m in names for k in ks]


def _column(k: int, width: int) -> int:
    """The last column of the top-k prefix of a (B, width) list (a k beyond the catalogue: the whole list)."""
    return min(k, width) - 1


def list_metrics(ctx: ListContext, users: Tensor, topk: Tensor, valid: Tensor, hits: Tensor, rel_rows: Tensor,
                 rel_cols: Tensor, ex_rows: Tensor, ex_cols: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """The per-user list metrics of one chunk (see the module docstring), from its top-K lists and their hit
    matrix (:func:`recforge.metrics.ranking.relevance_matrix`); ``rel_*`` and ``ex_*`` are the chunk's relevant
    and excluded (row, item) pairs. Every tensor of ``ctx`` is on the lists' device."""
    n_rows, width = topk.shape
    valid = valid.to(torch.bool)
    n_valid = valid.cumsum(1).float()
    nan = torch.full((), float("nan"), device=topk.device)
    out: dict[str, Tensor] = {}
    if width == 0:
        return {name: torch.full((n_rows,), float("nan"), device=topk.device) for name in ctx.metric_names(ks)}
    if ctx.item_vectors is not None:
        v = ctx.item_vectors[topk] * valid.unsqueeze(-1)
        pair = (valid.unsqueeze(2) & valid.unsqueeze(1)).triu(1)
        distance = ((1 - torch.bmm(v, v.transpose(1, 2))) * pair).sum(1).cumsum(1)  # item j against those above it
        for k in ks:
            c = _column(k, width)
            pairs = n_valid[:, c] * (n_valid[:, c] - 1) / 2
            out[f"ild_at_{k}"] = torch.where(pairs > 0, distance[:, c] / pairs.clamp(min=1), nan)
    if ctx.user_categories is not None and ctx.item_categories is not None:
        p = ctx.user_categories[users]
        q_sum = (ctx.item_categories[topk] * valid.unsqueeze(-1)).cumsum(1)
        alpha = ctx.calibration_alpha
        for k in ks:
            q = q_sum[:, _column(k, width)]
            mass = q.sum(1, keepdim=True)
            q = torch.where(mass > 0, q / mass.clamp(min=1e-12), 0.0)
            mixed = (1 - alpha) * q + alpha * p
            kl = torch.where(p > 0, p * torch.log(p / mixed), 0.0).sum(1)
            out[f"miscalibration_at_{k}"] = torch.where(p.sum(1) > 0, kl, nan)
    tail = ((ctx.item_groups[topk] == len(ITEM_GROUPS) - 1) & valid).cumsum(1).float()
    for k in ks:
        c = _column(k, width)
        out[f"aplt_at_{k}"] = torch.where(n_valid[:, c] > 0, tail[:, c] / n_valid[:, c].clamp(min=1), nan)
    relevant = hits != 0
    n_items = ctx.item_popularity.numel()
    keys = torch.unique(rel_rows * n_items + rel_cols)
    rows = torch.div(keys, n_items, rounding_mode="floor")
    has_rel = torch.bincount(rows, minlength=n_rows) > 0
    weight_all = torch.bincount(rows, weights=ctx.weights[keys % n_items], minlength=n_rows)
    weight_hit = (relevant * ctx.weights[topk]).cumsum(1)
    unexpected = _baseline_ranks(ctx.positions, topk, ex_rows, ex_cols)
    for k in ks:
        c = _column(k, width)
        out[f"psrecall_at_{k}"] = torch.where(has_rel, weight_hit[:, c] / weight_all.clamp(min=1e-12), nan)
        surprising = (relevant & (unexpected >= k))[:, :c + 1].sum(1).float()
        out[f"serendipity_at_{k}"] = torch.where(has_rel, surprising / k, nan)
    return out


def _baseline_ranks(positions: Tensor, topk: Tensor, ex_rows: Tensor, ex_cols: Tensor) -> Tensor:
    """(B, K) the rank (0-based) of each listed item in the popularity baseline's list for its user: its place in
    the popularity order minus the user's excluded items placed above it."""
    n_items = positions.numel()
    keys = torch.unique(ex_rows * n_items + positions[ex_cols])  # sorted
    place = positions[topk]
    start = torch.arange(topk.shape[0], device=topk.device).unsqueeze(1) * n_items
    above = torch.searchsorted(keys, start + place) - torch.searchsorted(keys, start.expand_as(place).contiguous())
    return place - above


def item_slice_metrics(ctx: ListContext, n_rows: int, topk: Tensor, valid: Tensor, rel_rows: Tensor,
                       rel_cols: Tensor, gains: Tensor | None, ks: Sequence[int]) -> dict[str, Tensor]:
    """The ranking metrics of each item group: ``ndcg_at_10/items_tail`` is NDCG@10 with only the user's relevant
    tail items counted as relevant (NaN for a user without any); the lists are the same."""
    out = {}
    groups = ctx.item_groups[rel_cols]
    for code, name in enumerate(ITEM_GROUPS):
        keep = groups == code
        hits, n_relevant, ideal = relevance_matrix(n_rows, topk, rel_rows[keep], rel_cols[keep],
                                                   None if gains is None else gains[keep], valid)
        metrics = ranking_metrics(hits, n_relevant, ks, ideal_gains=ideal)
        out.update({f"{metric}/items_{name}": value for metric, value in metrics.items()})
    return out


def slice_aggregates(ctx: ListContext, results: dict[str, Tensor], metric_keys: Sequence[str], ks: Sequence[int],
                     n_train_users: int) -> dict[str, float]:
    """Every metric per user slice: the mean of each per-user metric in ``metric_keys`` over the slice's users
    with a value, and the aggregate list metrics (coverage, Gini, ...) of the slice's lists; named
    ``<metric>/users_<group>``. ``results`` are the evaluator's concatenated per-user results."""
    out: dict[str, float] = {}
    for names, codes in ctx.user_groups.values():
        group_of = codes[results["users"]]
        for code, name in enumerate(names):
            rows = group_of == code
            for key in metric_keys:
                out[f"{key}/users_{name}"] = float(results[key][rows].double().nanmean())
            if rows.any():
                extra = beyond_accuracy(results["topk"][rows], results["valid"][rows], ctx.item_popularity,
                                        n_train_users, ks)
                out.update({f"{key}/users_{name}": value for key, value in extra.items()})
    return out


def slice_labels(ctx: ListContext, users: Tensor) -> dict[str, list[str]]:
    """``{"slice_activity": ["cold", ...], "slice_profile": [...]}``: each user's group name ("" for none), the
    columns the per-user results carry so that reports can break any metric down by slice."""
    out = {}
    for family, (names, codes) in ctx.user_groups.items():
        labels = list(names) + [""]  # code -1 reads the last entry
        out[f"slice_{family}"] = [labels[c] for c in codes[users.to(codes.device)].tolist()]
    return out
