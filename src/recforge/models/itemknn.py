"""Item-based k-nearest-neighbour collaborative filtering with shrunk cosine similarity.

Sarwar, Karypis, Konstan and Riedl. 2001. Item-Based Collaborative Filtering Recommendation Algorithms.
WWW. Deshpande and Karypis. 2004. Item-Based Top-N Recommendation Algorithms. ACM TOIS 22(1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from recforge.models.ease import HistoryRecommender, product_chunks
from recforge.utils.sparse import row_entries, row_pointers


class ItemNeighbourhood(HistoryRecommender):
    """An item-item model that keeps, for each item, its ``k_neighbors`` heaviest weights ``w(i, j)`` from source
    items ``i`` to target items ``j``, and scores ``score(u, j) = sum_{i in I_u} w(i, j)`` (``X_u W``). Row ``j`` of
    the neighbour lists holds target ``j``'s sources (each target keeps its ``k_neighbors`` strongest sources), or,
    with ``lists_targets``, row ``i`` holds source ``i``'s targets (each source keeps its strongest targets).
    Subclasses compute the weights in :meth:`fit` and hand them to :meth:`keep_neighbours` a block of rows at a
    time, so only ``(n_items, k_neighbors)`` lists are kept.

    Scoring is a scatter over the user's history: each history item ``i`` adds ``w(i, j)`` to every ``j`` that
    ``i`` reaches (the lists grouped by source once, after fitting or loading). Its cost is the history length
    times ``k_neighbors`` per user, where a sparse-times-dense ``W^T X_u^T`` reads all ``n_items * k_neighbors``
    weights for every user."""

    lists_targets = False

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 k_neighbors: int = 100) -> None:
        super().__init__(n_users, n_items, interactions)
        if k_neighbors < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {k_neighbors}")
        self.k_neighbors = min(k_neighbors, max(n_items - 1, 1))
        self.register_buffer("neighbor_index", torch.zeros(n_items, self.k_neighbors, dtype=torch.long))
        self.register_buffer("neighbor_sim", torch.zeros(n_items, self.k_neighbors))
        # the lists grouped by source item i (CSR): the targets j that i reaches, and w(i, j)
        self.register_buffer("inverse_indptr", torch.zeros(n_items + 1, dtype=torch.long), persistent=False)
        self.register_buffer("inverse_targets", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("inverse_sims", torch.zeros(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._invert_neighbours())

    def keep_neighbours(self, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the neighbour lists of ``(rows, weights)`` blocks covering every item: ``weights[t, i] = w(i,
        rows[t])`` (``rows`` are targets), or ``w(rows[t], i)`` with ``lists_targets``; ``(len(rows), n_items)``,
        overwritten (an item is not its own neighbour)."""
        index, sims = [], []
        for rows, weights in blocks:
            weights[torch.arange(len(rows), device=weights.device), rows] = 0.0
            top = weights.topk(self.k_neighbors, dim=1)
            index.append(top.indices)
            sims.append(top.values)
        self.neighbor_index = torch.cat(index)
        self.neighbor_sim = torch.cat(sims).float()
        self._invert_neighbours()

    @torch.no_grad()
    def _invert_neighbours(self) -> None:
        sims = self.neighbor_sim.reshape(-1)
        keep = sims != 0  # empty neighbour slots (items with fewer than k related items) add nothing
        sources, targets = self._pairs(keep)
        order = torch.argsort(sources, stable=True)
        self.inverse_indptr = row_pointers(sources, self.n_items)
        self.inverse_targets, self.inverse_sims = targets[order], sims[keep][order]

    def _pairs(self, keep: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sources, targets)`` of the kept list entries, in the lists' order."""
        owners = torch.arange(self.n_items, device=self.neighbor_index.device).repeat_interleave(self.k_neighbors)
        listed = self.neighbor_index.reshape(-1)
        return (owners[keep], listed[keep]) if self.lists_targets else (listed[keep], owners[keep])

    def similarity(self) -> torch.Tensor:
        """The pruned weights as a sparse ``(n_items, n_items)`` matrix ``W^T``: row ``j`` holds the sources
        ``i`` of target ``j`` with ``w(i, j)``."""
        sources, targets = self._pairs()
        return torch.sparse_coo_tensor(torch.stack([targets, sources]), self.neighbor_sim.reshape(-1),
                                       (self.n_items, self.n_items), check_invariants=False).coalesce()

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self._scatter(self.history_indptr, self.history_indices, users)

    def score_histories(self, indptr: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._scatter(indptr.long(), items.long(), torch.arange(len(indptr) - 1))

    def _scatter(self, indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``X_u W`` for the rows ``users`` of the CSR history ``(indptr, indices)``."""
        device, n = self.inverse_sims.device, self.n_items
        lengths, positions = row_entries(indptr.to(device), users.to(device).long())
        rows = torch.repeat_interleave(torch.arange(len(users), device=device), lengths)
        keys = torch.unique(rows * n + indices.to(device)[positions])  # an item counts once, as in X_u
        rows, items = torch.div(keys, n, rounding_mode="floor"), keys % n
        fan_out, entries = row_entries(self.inverse_indptr, items)
        scores = torch.zeros(len(users), n, device=device, dtype=self.inverse_sims.dtype)
        scores.view(-1).index_add_(0, rows.repeat_interleave(fan_out) * n + self.inverse_targets[entries],
                                   self.inverse_sims[entries])
        return scores


class ItemKNN(ItemNeighbourhood):
    """``sim(i, j) = |U_i & U_j| / (|U_j|^a |U_i|^(1-a) + shrinkage)`` from a history item ``i`` to a target
    ``j`` over binary training rows: cosine at ``asymmetric_alpha`` a = 0.5 (the default), the asymmetric cosine of
    Aiolli (2013) otherwise (a > 0.5 discounts popular targets). With ``weighting="idf"`` each user's row is
    weighted by its inverse user frequency ``idf_u = log((1 + n_items) / (1 + |I_u|)) + 1`` (Breese et al. 1998;
    smoothed as scikit-learn's TF-IDF), so that overlaps and counts sum ``idf_u^2`` over users instead of 1: a
    user with a long history says less about any one pair of items. Each item keeps its ``k_neighbors`` most
    similar other items, and ``score(u, j) = sum_{i in I_u} sim(i, j)`` over ``j``'s neighbours (``X_u S``).
    Similarities are computed ``chunk_size`` items at a time."""

    WEIGHTINGS = ("none", "idf")

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 k_neighbors: int = 100, shrinkage: float = 10.0, asymmetric_alpha: float = 0.5,
                 weighting: str = "none", chunk_size: int = 4096) -> None:
        super().__init__(n_users, n_items, interactions, k_neighbors)
        if shrinkage < 0 or chunk_size < 1:
            raise ValueError("chunk_size must be >= 1 and shrinkage >= 0")
        if not 0.0 <= asymmetric_alpha <= 1.0:
            raise ValueError(f"model.asymmetric_alpha must be in [0, 1] (0.5: cosine), got {asymmetric_alpha}")
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"model.weighting must be one of {', '.join(self.WEIGHTINGS)}, got {weighting!r}")
        self.shrinkage, self.chunk_size = shrinkage, chunk_size
        self.asymmetric_alpha, self.weighting = asymmetric_alpha, weighting

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        x = self.set_history(users, items, self.neighbor_sim.device)
        if self.weighting == "idf":
            rows = x.indices()[0]
            idf = torch.log((1.0 + self.n_items) / (1.0 + torch.bincount(rows, minlength=x.shape[0]).float())) + 1.0
            x = torch.sparse_coo_tensor(x.indices(), idf[rows], x.shape, is_coalesced=True, check_invariants=False)
        counts = torch.zeros(self.n_items, device=x.device).index_add_(0, x.indices()[1], x.values().float() ** 2)
        alpha = self.asymmetric_alpha
        source_term, target_term = counts ** (1.0 - alpha), counts ** alpha

        def similarity(cols: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:  # overlap: (n_items, chunk)
            return overlap.T / (target_term[cols, None] * source_term[None, :] + self.shrinkage).clamp_min(1e-12)

        self.keep_neighbours((cols, similarity(cols, overlap))
                             for cols, overlap in product_chunks(x.t().coalesce(), x, self.chunk_size))
