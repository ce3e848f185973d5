"""Multi-Layer Perceptron (MLP), the non-linear half of Neural Collaborative Filtering.

He, Liao, Zhang, Nie, Hu and Chua. 2017. Neural Collaborative Filtering. WWW (Section 3.3).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.base import Recommender, broadcast_users


def mlp_tower(widths: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` between consecutive ``widths``: NCF's MLP tower."""
    tower: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        tower += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*tower)


def xavier_init_(tower: nn.Sequential) -> None:
    """Xavier-uniform weights and zero biases for the tower's linear layers (He et al. 2017's setting)."""
    for layer in tower:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class MLP(Recommender):
    """User and item embeddings of ``layers[0] / 2`` dimensions each are concatenated and fed through the
    ReLU tower ``layers`` (the paper's "3 layers" default is ``[64, 32, 16, 8]``: 8 predictive factors),
    then mapped to one logit. ``dropout`` applies after each hidden layer."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, layers: Sequence[int] = (64, 32, 16, 8),
                 dropout: float = 0.0, init_std: float = 0.01) -> None:
        super().__init__()
        layers = list(layers)
        if len(layers) < 1 or layers[0] % 2:
            raise ValueError("layers needs at least one width and an even first width (user + item halves)")
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, layers[0] // 2)
        self.item_embedding = nn.Embedding(n_items, layers[0] // 2)
        self.tower = mlp_tower(layers, dropout)
        self.predict = nn.Linear(layers[-1], 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        xavier_init_(self.tower)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([self.user_embedding(broadcast_users(users, items)), self.item_embedding(items)], dim=-1)
        return self.predict(self.tower(pair)).squeeze(-1)
