"""UltraGCN: graph convolution's infinite-layer limit approximated by constraint losses on plain embeddings.

Mao, Zhu, Xiao, Lu, Wang and He. 2021. UltraGCN: Ultra Simplification of Graph Convolutional Networks for
Recommendation. CIKM.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from recforge.models.ease import interaction_matrix, product_chunks
from recforge.models.mf import MatrixFactorization
from recforge.utils.linalg import inner_products


def inverse_sqrt_ratio(degree: torch.Tensor) -> torch.Tensor:
    """``sqrt(d + 1) / d`` (0 where ``d = 0``): the source side of UltraGCN's constraint weights."""
    return torch.where(degree > 0, (degree + 1).sqrt() / degree.clamp_min(1), 0.0)


def item_constraint_graph(interactions: torch.Tensor, n_users: int, n_items: int,
                          k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(neighbours, omega)``, both ``(n_items, k)``: each item's ``k`` items with the largest ``omega_ij =
    G_ij sqrt(g_i + 1) / g_i / sqrt(g_j + 1)`` on the co-occurrence graph ``G = X^T X`` with a zero diagonal,
    ``g_i = sum_j G_ij`` (the reference code's weights; the paper's Eq. 14 without the +1s)."""
    x = interaction_matrix(interactions[0], interactions[1], n_users, n_items)
    u, i = x.indices()
    user_degree = torch.bincount(u, minlength=n_users).float()
    g = torch.zeros(n_items, device=u.device).index_add_(0, i, user_degree[u]) - torch.bincount(i, minlength=n_items)
    source, target = inverse_sqrt_ratio(g), (g + 1).rsqrt()
    neighbours, omega = [], []
    for cols, co in product_chunks(x.t().coalesce(), x):  # G[:, cols], i.e. G[cols, :] transposed
        rows = co.T
        rows[torch.arange(len(cols), device=cols.device), cols] = 0.0
        top = (rows * source[cols, None] * target[None, :]).topk(k, dim=1)
        neighbours.append(top.indices)
        omega.append(top.values)
    return torch.cat(neighbours), torch.cat(omega)


class UltraGCN(MatrixFactorization):
    """Inner products of user and item embeddings (no propagation), trained so that they satisfy the fixed point
    of infinitely many graph convolutions. With the module's pairwise loss on the positive and its sampled
    negatives as ``L_O`` (``loss=bce``, the paper's choice), :meth:`regularization` adds

    * ``constraint_weight * L_C``: binary cross-entropy of the positive and of the negatives, each pair weighted
      by ``beta_ui = sqrt(d_u + 1) / d_u / sqrt(d_i + 1)`` (degrees ``d`` in the training graph), the negatives'
      mean times ``negative_weight``;
    * ``item_weight * L_I``: ``-sum_j omega_ij log sigmoid(e_u . e_j)`` over the ``item_neighbors`` items ``j``
      closest to the positive ``i`` on the item co-occurrence graph (:func:`item_constraint_graph`);
    * ``l2_reg * ||E||^2 / 2`` over both whole embedding tables, as in the reference code;

    every term averaged over the batch's positives (the reference sums them; ``l2_reg`` is divided by the batch
    size here, so the reference's ``gamma`` carries over). The reference code's ``w1..w4`` weigh ``L_O`` against
    ``L_C``; on its Gowalla and ML-1M settings ``L_O`` gets 1e-6 and 1e-7 of ``L_C``'s weight, which a large
    ``constraint_weight`` approaches (the training module always adds its loss with weight 1). The terms read the
    candidates of a sampled-negatives loss (``bce``, ``bpr``, ``sampled_softmax``): the positive first, then the
    negatives; under ``loss=softmax`` there are no sampled negatives, and the terms are the positive's constraint,
    the neighbour term and the L2 term.

    The degree weights and the item graph are non-persistent buffers computed from ``interactions`` when the model
    is built (the graph a block of items at a time, like :class:`~recforge.models.itemknn.ItemKNN`)."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor, embedding_dim: int = 64,
                 constraint_weight: float = 1.0, negative_weight: float = 200.0, item_weight: float = 1e-3,
                 item_neighbors: int = 10, l2_reg: float = 1e-3, init_std: float = 1e-3) -> None:
        if constraint_weight < 0 or negative_weight < 0 or item_weight < 0 or item_neighbors < 1:
            raise ValueError("need constraint_weight, negative_weight, item_weight >= 0 and item_neighbors >= 1")
        super().__init__(n_users, n_items, embedding_dim, use_bias=False, init_std=init_std, l2_reg=l2_reg)
        self.constraint_weight, self.negative_weight, self.item_weight = constraint_weight, negative_weight, item_weight
        pairs = torch.unique(interactions[0].long() * n_items + interactions[1].long())
        user_degree = torch.bincount(torch.div(pairs, n_items, rounding_mode="floor"), minlength=n_users).float()
        item_degree = torch.bincount(pairs % n_items, minlength=n_items).float()
        self.register_buffer("user_beta", inverse_sqrt_ratio(user_degree), persistent=False)
        self.register_buffer("item_beta", (item_degree + 1).rsqrt(), persistent=False)
        neighbours, omega = item_constraint_graph(interactions, n_users, n_items, min(item_neighbors, n_items))
        self.register_buffer("item_neighbours", neighbours, persistent=False)
        self.register_buffer("item_omega", omega, persistent=False)
        # within one_pass(): [] until the step's products are formed, then [(users, their products)] (as LightGCN)
        self._step: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @contextlib.contextmanager
    def one_pass(self, positives: torch.Tensor | None = None):
        """A training step: the users' products with every item are computed once in it, for the module's loss
        and for the constraint term, which both score the step's hundreds of negatives a row from them."""
        self._step = []
        try:
            yield
        finally:
            self._step = None

    def products(self, users: torch.Tensor) -> torch.Tensor:
        if self._step is None or not torch.is_grad_enabled():  # a hard negative's scoring computes its own
            return super().products(users)
        if not self._step or self._step[0][0] is not users:
            self._step[:] = [(users, super().products(users))]
        return self._step[0][1]

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The constraint losses and the L2 term for ``(B,)`` users and their ``(B, 1 + n)`` candidates."""
        positives, negatives = items[:, 0], items[:, 1:]
        user = self.user_embedding(users)
        pos_score = (user * self.item_embedding(positives)).sum(-1)
        if len(negatives) > 1 and bool((negatives[1:] == negatives[:1]).all()):  # one set for all (sampler.shared)
            neg_score = inner_products(user, self.item_embedding(negatives[0]))
        else:  # MF's scores (hundreds of negatives a row: a pick from the step's product with every item)
            neg_score = self(users, negatives)
        beta = self.user_beta[users]
        constraint = beta * self.item_beta[positives] * F.softplus(-pos_score)  # -log sigmoid(s)
        if negatives.shape[1]:
            constraint = constraint + self.negative_weight * (
                beta.unsqueeze(1) * self.item_beta[negatives] * F.softplus(neg_score)).mean(-1)
        neighbour_score = (user.unsqueeze(1) * self.item_embedding(self.item_neighbours[positives])).sum(-1)
        item_term = -(self.item_omega[positives] * F.logsigmoid(neighbour_score)).sum(-1)
        norm = (self.user_embedding.weight.pow(2).sum() + self.item_embedding.weight.pow(2).sum()) / 2
        return (self.constraint_weight * constraint + self.item_weight * item_term).mean() \
            + self.l2_reg * norm / len(users)
