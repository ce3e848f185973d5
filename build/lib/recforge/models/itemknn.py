"""Item-based k-nearest-neighbour collaborative filtering with shrunk cosine similarity.

Sarwar, Karypis, Konstan and Riedl. 2001. Item-Based Collaborative Filtering Recommendation Algorithms.
WWW. Deshpande and Karypis. 2004. Item-Based Top-N Recommendation Algorithms. ACM TOIS 22(1).
"""

from __future__ import annotations

import torch

from recforge.models.ease import HistoryRecommender
from recforge.utils.sparse import row_entries, row_pointers


class ItemKNN(HistoryRecommender):
    """``sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrinkage)`` over binary training rows; each
    item keeps its ``k_neighbors`` most similar other items, and ``score(u, j) = sum_{i in I_u} sim(i, j)``
    over ``j``'s neighbours (``X_u S``). Similarities are computed ``chunk_size`` items at a time, so only
    ``(n_items, k_neighbors)`` neighbour lists are kept.

    Scoring is a scatter over the user's history: each history item ``i`` adds ``sim(i, j)`` to every ``j`` that
    keeps ``i`` as a neighbour (the lists inverted once, after fitting or loading). Its cost is the history
    length times ``k_neighbors`` per user, where a sparse-times-dense ``S X_u^T`` reads all
    ``n_items * k_neighbors`` similarities for every user."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 k_neighbors: int = 100, shrinkage: float = 10.0, chunk_size: int = 4096) -> None:
        super().__init__(n_users, n_items, interactions)
        if k_neighbors < 1 or shrinkage < 0 or chunk_size < 1:
            raise ValueError("k_neighbors and chunk_size must be >= 1 and shrinkage >= 0")
        self.k_neighbors, self.shrinkage, self.chunk_size = min(k_neighbors, max(n_items - 1, 1)), shrinkage, chunk_size
        self.register_buffer("neighbor_index", torch.zeros(n_items, self.k_neighbors, dtype=torch.long))
        self.register_buffer("neighbor_sim", torch.zeros(n_items, self.k_neighbors))
        # the neighbour lists inverted, CSR over source items i: the targets j that keep i, and sim(i, j)
        self.register_buffer("inverse_indptr", torch.zeros(n_items + 1, dtype=torch.long), persistent=False)
        self.register_buffer("inverse_targets", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("inverse_sims", torch.zeros(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._invert_neighbours())

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        device = self.neighbor_sim.device
        x = self.set_history(users, items, device)
        x_t = x.t().coalesce()
        norms = torch.bincount(x.indices()[1], minlength=self.n_items).float().sqrt()
        index, sims = [], []
        for start in range(0, self.n_items, self.chunk_size):
            cols = torch.arange(start, min(start + self.chunk_size, self.n_items), device=device)
            dense_cols = torch.index_select(x, 1, cols).to_dense()  # (n_users, chunk)
            overlap = torch.sparse.mm(x_t, dense_cols).T  # (chunk, n_items): co-counts of target j with i
            sim = overlap / (norms[cols, None] * norms[None, :] + self.shrinkage).clamp_min(1e-12)
            sim[torch.arange(len(cols), device=device), cols] = 0.0  # an item is not its own neighbour
            top = sim.topk(self.k_neighbors, dim=1)
            index.append(top.indices)
            sims.append(top.values)
        self.neighbor_index = torch.cat(index)
        self.neighbor_sim = torch.cat(sims)
        self._invert_neighbours()

    @torch.no_grad()
    def _invert_neighbours(self) -> None:
        sims = self.neighbor_sim.reshape(-1)
        keep = sims != 0  # empty neighbour slots (items with fewer than k co-occurring items) add nothing
        sources = self.neighbor_index.reshape(-1)[keep]
        targets = torch.arange(self.n_items, device=sims.device).repeat_interleave(self.k_neighbors)[keep]
        order = torch.argsort(sources, stable=True)
        self.inverse_indptr = row_pointers(sources, self.n_items)
        self.inverse_targets, self.inverse_sims = targets[order], sims[keep][order]

    def similarity(self) -> torch.Tensor:
        """The pruned similarity as a sparse ``(n_items, n_items)`` matrix ``S^T``: row ``j`` holds ``j``'s
        neighbours ``i`` with ``sim(i, j)``."""
        rows = torch.arange(self.n_items, device=self.neighbor_index.device).repeat_interleave(self.k_neighbors)
        return torch.sparse_coo_tensor(torch.stack([rows, self.neighbor_index.reshape(-1)]),
                                       self.neighbor_sim.reshape(-1), (self.n_items, self.n_items),
                                       check_invariants=False).coalesce()

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        device, n = self.inverse_sims.device, self.n_items
        lengths, positions = row_entries(self.history_indptr, users.to(device).long())
        rows = torch.repeat_interleave(torch.arange(len(users), device=device), lengths)
        keys = torch.unique(rows * n + self.history_indices[positions])  # an item counts once, as in X_u
        rows, items = torch.div(keys, n, rounding_mode="floor"), keys % n
        fan_out, entries = row_entries(self.inverse_indptr, items)
        scores = torch.zeros(len(users), n, device=device, dtype=self.inverse_sims.dtype)
        scores.view(-1).index_add_(0, rows.repeat_interleave(fan_out) * n + self.inverse_targets[entries],
                                   self.inverse_sims[entries])
        return scores
