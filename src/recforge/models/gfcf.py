"""GF-CF: graph filters on the normalised item-item graph, fitted in closed form.

Shen, Wu, Zhang, Shan, Zhang, Letaief and Li. 2021. How Powerful is Graph Convolution for Recommendation? CIKM.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from recforge.models.ease import HistoryRecommender
from recforge.utils.sparse import dense_rows, to_csr

DENSE_SVD_FACTOR = 4  # below factors x this many users (or items), a dense SVD is cheaper than ARPACK's iterations


class GFCF(HistoryRecommender):
    """With ``R~ = D_U^-1/2 R D_I^-1/2`` the degree-normalised binary training matrix and ``P~ = R~^T R~`` its
    normalised item-item graph, a user's row ``r`` scores ``r P~ + ideal_weight * r D_I^-1/2 V^T V D_I^1/2``: a
    linear low-pass filter (one step of heat diffusion on the item graph) plus an ideal low-pass filter, the
    projection on the ``factors`` leading right singular vectors ``V`` of ``R~`` (0 for items without training
    users). The class defaults are GF-CF's Gowalla and Yelp setting, 256 factors and weight 0.3;
    ``conf/model/gfcf.yaml`` has 128 and 0.2, chosen on validation over smaller catalogues
    (``docs/defaults.md#gf-cf``).

    Nothing is learnt but ``V`` (ARPACK through SciPy, float64, seeded; a dense SVD for small matrices; at most
    ``min(n_users, n_items) - 1`` factors), so the fit is one truncated SVD. ``R~`` is rebuilt from the training
    rows (``interactions``, or ``fit``'s) and not stored; scoring multiplies by the sparse ``R~`` and ``R~^T``
    instead of holding the dense ``n_items^2`` ``P~``: ``2 * nnz(R)`` multiply-adds per user and filter step, plus
    ``2 * factors * n_items`` for the ideal filter."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 factors: int = 256, ideal_weight: float = 0.3) -> None:
        super().__init__(n_users, n_items, interactions)
        if factors < 0:
            raise ValueError(f"model.factors must be >= 0 (0: no ideal low-pass filter), got {factors}")
        if ideal_weight < 0:
            raise ValueError(f"model.ideal_weight must be >= 0, got {ideal_weight}")
        self.factors = min(factors, max(min(n_users, n_items) - 1, 0))
        self.ideal_weight = ideal_weight
        self.register_buffer("vectors", torch.zeros(self.factors, n_items))  # V: the right singular vectors
        for name in ("graph", "graph_t", "item_sqrt_degree"):  # rebuilt from the training rows, not stored
            self.register_buffer(name, torch.zeros(0), persistent=False)
        self._build_graph()

    def _build_graph(self) -> None:
        """``R~`` and ``R~^T`` as sparse CSR tensors, and the item degrees' square roots, from the history rows:
        called while they are the training rows (construction, ``fit``), before evaluation replaces them."""
        indptr, indices = self.history_indptr, self.history_indices
        device = indptr.device
        row_of = torch.repeat_interleave(torch.arange(self.n_users, device=device), indptr.diff())
        user_degree = indptr.diff().float()
        item_degree = torch.bincount(indices, minlength=self.n_items).float()
        values = (user_degree[row_of] * item_degree[indices]).rsqrt()
        graph = torch.sparse_coo_tensor(torch.stack([row_of, indices]), values, (self.n_users, self.n_items),
                                        is_coalesced=True, check_invariants=False)
        self.graph, self.graph_t = to_csr(graph), to_csr(graph.t().coalesce())
        self.item_sqrt_degree = item_degree.sqrt()

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        self.set_history(users, items, self.vectors.device)
        self._build_graph()
        if self.factors:
            self.vectors.copy_(torch.from_numpy(np.ascontiguousarray(self._right_singular_vectors())))

    def _right_singular_vectors(self) -> np.ndarray:
        graph = self.graph.cpu()
        matrix = sp.csr_matrix((graph.values().double().numpy(), graph.col_indices().numpy(),
                                graph.crow_indices().numpy()), shape=graph.shape)
        if min(matrix.shape) <= DENSE_SVD_FACTOR * self.factors:
            return np.linalg.svd(matrix.toarray(), full_matrices=False)[2][: self.factors]
        return svds(matrix, k=self.factors, random_state=0)[2]

    def propagate(self, signal: torch.Tensor) -> torch.Tensor:
        """``P~ y`` for a ``(n_items, B)`` block of column signals ``y`` (``(r P~)^T`` for rows ``r = y^T``)."""
        return torch.sparse.mm(self.graph_t, torch.sparse.mm(self.graph, signal))

    def ideal(self, signal: torch.Tensor) -> torch.Tensor:
        """``D_I^1/2 V^T V D_I^-1/2 y``: the ideal low-pass filter on ``(n_items, B)`` column signals."""
        scale = self.item_sqrt_degree[:, None]
        inverse = torch.where(scale > 0, scale.reciprocal(), 0.0)
        return scale * (self.vectors.T @ (self.vectors @ (inverse * signal)))

    def filtered(self, signal: torch.Tensor) -> torch.Tensor:
        """GF-CF's scores of ``(n_items, B)`` column signals."""
        out = self.propagate(signal)
        if self.factors and self.ideal_weight:
            out += self.ideal_weight * self.ideal(signal)
        return out

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_rows(dense_rows(self.history_indptr, self.history_indices, users, self.n_items))

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.filtered(rows.T.contiguous()).T
