"""Generalized Matrix Factorization (GMF), the linear half of Neural Collaborative Filtering.

He, Liao, Zhang, Nie, Hu and Chua. 2017. Neural Collaborative Filtering. WWW (Section 3.2).
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import Recommender, broadcast_users
from recforge.utils.linalg import inner_products


class GMF(Recommender):
    """``score(u, i) = h . (p_u * q_i)``: the element-wise product of ``embedding_dim``-d user and item
    embeddings, weighted by a learnt output layer ``h`` (plus a bias) and read as a logit. Trained with
    BCE over sampled negatives as in the paper; with ``h`` fixed to ones it would be plain MF."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 8, init_std: float = 0.01) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        self.predict = nn.Linear(embedding_dim, 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        product = self.user_embedding(broadcast_users(users, items)) * self.item_embedding(items)
        return self.predict(product).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        # h . (p_u * q_i) = (p_u * h) . q_i: one matrix product instead of (B, n_items, d) products
        weighted = self.user_embedding(users) * self.predict.weight
        return inner_products(weighted, self.item_embedding.weight) + self.predict.bias

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight
