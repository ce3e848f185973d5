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
    """``sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrinkage)`` over binary training rows; each
    item keeps its ``k_neighbors`` most similar other items, and ``score(u, j) = sum_{i in I_u} sim(i, j)``
    over ``j``'s neighbours (``X_u S``). Similarities are computed ``chunk_size`` items at a time."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 k_neighbors: int = 100, shrinkage: float = 10.0, chunk_size: int = 4096) -> None:
        super().__init__(n_users, n_items, interactions, k_neighbors)
        if shrinkage < 0 or chunk_size < 1:
            raise ValueError("chunk_size must be >= 1 and shrinkage >= 0")
        self.shrinkage, self.chunk_size = shrinkage, chunk_size

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        x = self.set_history(users, items, self.neighbor_sim.device)
        norms = torch.bincount(x.indices()[1], minlength=self.n_items).float().sqrt()

        def cosine(cols: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:  # overlap: co-counts (n_items, chunk)
            return overlap.T / (norms[cols, None] * norms[None, :] + self.shrinkage).clamp_min(1e-12)

        self.keep_neighbours((cols, cosine(cols, overlap))
                             for cols, overlap in product_chunks(x.t().coalesce(), x, self.chunk_size))
