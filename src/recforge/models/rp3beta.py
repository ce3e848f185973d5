"""RP3beta: item-item weights from three-step random walks on the user-item graph, popularity discounted.

Paudel, Christoffel, Newell and Bernstein. 2017. Updatable, Accurate, Diverse, and Scalable Recommendations for
Interactive Applications. ACM TiiS 7(1). Dacrema, Cremonesi and Jannach. 2019. Are We Really Making Much Progress?
A Worrying Analysis of Recent Neural Recommendation Approaches. RecSys (the top-k variant evaluated there).
"""

from __future__ import annotations

import torch

from recforge.models.ease import product_chunks
from recforge.models.itemknn import ItemNeighbourhood


class RP3beta(ItemNeighbourhood):
    """A walk user -> item ``i`` -> user ``v`` -> item ``j`` over binary training rows: ``P_ui = 1/|I_u|`` and
    ``P_iv = 1/|U_i|`` on observed pairs, each raised to ``alpha``, and the landing item's popularity discounted
    by ``beta``: ``w(i, j) = sum_v P_iv^alpha P_vj^alpha / |U_j|^beta`` (0 for items without training users).
    Each item ``i`` keeps the ``k_neighbors`` items ``j`` with the largest ``w(i, j)`` (``i != j``) and
    ``score(u, j) = sum_{i in I_u} w(i, j)``. ``alpha = 1, beta = 0`` is the plain walk probability (P^3);
    ``beta`` around 0.5-0.7 trades a little accuracy on popular items for the long tail (Paudel et al.).

    Weights are computed ``chunk_size`` source items at a time (dense ``(n_items, chunk_size)`` blocks), float32.
    As in the reference code, ``k_neighbors`` prunes each source's row (the code then also keeps the top
    ``k_neighbors`` of each column, which this does not), and rows are not re-normalised (its
    ``normalize_similarity``, off here)."""

    lists_targets = True

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 k_neighbors: int = 100, alpha: float = 1.0, beta: float = 0.6, chunk_size: int = 4096) -> None:
        super().__init__(n_users, n_items, interactions, k_neighbors)
        if alpha <= 0 or chunk_size < 1:
            raise ValueError(f"alpha must be positive and chunk_size >= 1, got alpha={alpha}, chunk_size={chunk_size}")
        self.alpha, self.beta, self.chunk_size = alpha, beta, chunk_size

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        x = self.set_history(users, items, self.neighbor_sim.device)
        u, i = x.indices()
        user_degree = torch.bincount(u, minlength=self.n_users).float()
        item_degree = torch.bincount(i, minlength=self.n_items).float()
        p_ui = torch.sparse_coo_tensor(x.indices(), user_degree[u].pow(-self.alpha), x.shape, is_coalesced=True,
                                       check_invariants=False)
        p_iu = torch.sparse_coo_tensor(x.indices().flip(0), item_degree[i].pow(-self.alpha),
                                       (self.n_items, self.n_users), check_invariants=False).coalesce()
        discount = torch.where(item_degree > 0, item_degree.pow(-self.beta), 0.0)
        # blocks of W^T's columns, W[i, :] for a block of sources i: P_ui^T @ P_iu^T[:, sources]
        self.keep_neighbours((sources, walks.T * discount)
                             for sources, walks in product_chunks(p_ui.t().coalesce(), p_iu.t().coalesce(),
                                                                  self.chunk_size))
