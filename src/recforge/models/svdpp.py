"""SVD++: biased matrix factorisation with the implicit feedback of which items each user rated.

Koren. 2008. Factorization Meets the Neighborhood: a Multifaceted Collaborative Filtering Model. KDD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import Recommender, broadcast_users
from recforge.utils.sparse import csr_indices


class SVDpp(Recommender):
    """``r(u, i) = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)``, where ``N(u)`` is the set of
    items ``u`` rated in training (``interactions``, kept as non-persistent CSR buffers; a user without training
    ratings has only ``p_u``). ``l2_reg`` is the paper's per-pair penalty on ``p_u``, ``q_i``, the biases and the
    ``y_j`` of the user's items (averaged over the batch). Trained with ``loss=mse``."""

    feedbacks = ("explicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 embedding_dim: int = 64, init_std: float = 0.01, global_mean: float = 0.0,
                 l2_reg: float = 0.0) -> None:
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must not be negative, got {l2_reg}")
        self.n_users, self.n_items, self.l2_reg = n_users, n_items, l2_reg
        pairs = interactions if interactions is not None else torch.zeros(2, 0, dtype=torch.long)
        indptr, indices = csr_indices(pairs[0], pairs[1], n_users, n_items)
        self.register_buffer("history_indptr", indptr, persistent=False)
        self.register_buffer("history_indices", indices, persistent=False)
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        self.implicit_embedding = nn.Embedding(n_items, embedding_dim)  # y_j
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))
        for emb in (self.user_embedding, self.item_embedding, self.implicit_embedding):
            nn.init.normal_(emb.weight, std=init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def implicit_sum(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(|N(u)|^-1/2 sum_j y_j, sum_j ||y_j||^2 / |N(u)|)`` for each user: one ``embedding_bag`` over the
        users' CSR rows."""
        starts, ends = self.history_indptr[users], self.history_indptr[users + 1]
        lengths = ends - starts
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        rows = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()), device=users.device)
        items = self.history_indices[rows]
        scale = lengths.clamp(min=1).float().rsqrt().unsqueeze(1)
        summed = F.embedding_bag(items, self.implicit_embedding.weight, offsets, mode="sum")
        squares = F.embedding_bag(items, self.implicit_embedding.weight.pow(2), offsets, mode="sum").sum(1)
        return summed * scale, squares / lengths.clamp(min=1)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(users, return_inverse=True)
        return (self.user_embedding(unique) + self.implicit_sum(unique)[0])[inverse]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = self.user_vectors(users)
        if items.dim() == 2:
            u = u.unsqueeze(1)
        bias = self.user_bias(broadcast_users(users, items)).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return (u * self.item_embedding(items)).sum(-1) + bias + self.global_bias

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return (self.user_vectors(users) @ self.item_embedding.weight.T + self.user_bias(users)
                + self.item_bias.weight.T + self.global_bias)

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``l2_reg * (||p_u||^2 + ||q_i||^2 + b_u^2 + b_i^2 + sum_j ||y_j||^2 / |N(u)|)`` averaged over the pairs."""
        if not self.l2_reg:
            return self.global_bias.new_zeros(())
        users = broadcast_users(users, items)
        total = (self.user_embedding(users).pow(2).sum(-1) + self.item_embedding(items).pow(2).sum(-1)
                 + self.user_bias(users).squeeze(-1).pow(2) + self.item_bias(items).squeeze(-1).pow(2))
        unique, inverse = torch.unique(users.reshape(-1), return_inverse=True)
        total = total + self.implicit_sum(unique)[1][inverse].view_as(total)
        return self.l2_reg * total.mean()

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight
