"""Neural Collaborative Filtering: GMF and MLP fused into NeuMF.

He, Liao, Zhang, Nie, Hu and Chua. 2017. Neural Collaborative Filtering. WWW.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.base import Recommender, broadcast_users
from recforge.models.mlp import mlp_tower, xavier_init_


class NeuMF(Recommender):
    """Generalised MF (element-wise product of ``gmf_dim``-d embeddings) beside an MLP over concatenated
    user and item embeddings (``mlp_layers[0] / 2`` each, then the tower ``mlp_layers``), concatenated and
    mapped to one logit. ``dropout`` applies between MLP layers."""

    def __init__(self, n_users: int, n_items: int, gmf_dim: int = 8,
                 mlp_layers: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0) -> None:
        super().__init__()
        mlp_layers = list(mlp_layers)
        if len(mlp_layers) < 1 or mlp_layers[0] % 2:
            raise ValueError("mlp_layers needs at least one layer and an even first width")
        self.n_users, self.n_items = n_users, n_items
        self.gmf_user = nn.Embedding(n_users, gmf_dim)
        self.gmf_item = nn.Embedding(n_items, gmf_dim)
        self.mlp_user = nn.Embedding(n_users, mlp_layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, mlp_layers[0] // 2)
        self.mlp = mlp_tower(mlp_layers, dropout)
        self.predict = nn.Linear(gmf_dim + mlp_layers[-1], 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.01)
        xavier_init_(self.mlp)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users = broadcast_users(users, items)
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)
