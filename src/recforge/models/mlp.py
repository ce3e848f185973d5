"""Multi-Layer Perceptron (MLP), the non-linear half of Neural Collaborative Filtering.

He, Liao, Zhang, Nie, Hu and Chua. 2017. Neural Collaborative Filtering. WWW (Section 3.3).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import Recommender, broadcast_users, by_user_chunks


def mlp_tower(widths: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` between consecutive ``widths``: NCF's MLP tower. The ReLU works in place on its
    linear layer's fresh output (which that layer's backward does not read): one tensor less a layer."""
    tower: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        tower += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*tower)


def tower_width(tower: nn.Sequential, inputs: int = 1) -> int:
    """The activations a pair needs in ``tower`` from :func:`tower_over_all_pairs`: its widest linear output, or
    ``inputs`` (the concatenation's width) when it has no layer and the concatenation itself is its output."""
    return max((layer.out_features for layer in tower if isinstance(layer, nn.Linear)), default=inputs)


def xavier_init_(*modules: nn.Module, normal: bool = False) -> None:
    """Xavier-uniform weights and zero biases for every linear layer in ``modules`` (towers, output layers), in
    order (He et al. 2017's setting for NCF's towers, and the CTR and autoencoder models' too); ``normal``: Glorot's
    normal draw instead, of the same variance (RecBole's RecVAE)."""
    draw = nn.init.xavier_normal_ if normal else nn.init.xavier_uniform_
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                draw(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


def tower_over_all_pairs(tower: nn.Sequential, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``tower`` (from :func:`mlp_tower`) over the concatenation ``[users[b], items[j]]`` of every pair, ``(B, d)``
    and ``(n, d')`` -> ``(B, n, width)``, as ``tower(cat(...))`` computes it. The first layer is linear in the
    concatenation, ``W [u; i] + b = W_u u + (W_i i + b)``, so each half is projected once, not once per pair."""
    if not len(tower):  # no hidden layer: the concatenation itself
        return torch.cat([users.unsqueeze(1).expand(-1, len(items), -1),
                          items.unsqueeze(0).expand(len(users), -1, -1)], dim=-1)
    first, d = tower[0], users.shape[-1]
    projected = (users @ first.weight[:, :d].T).unsqueeze(1) + F.linear(items, first.weight[:, d:], first.bias)
    return tower[1:](projected)


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

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``forward`` over every item, the tower's first layer applied once per user and once per item."""
        items = self.item_embedding.weight
        return by_user_chunks(lambda chunk: self.predict(tower_over_all_pairs(
            self.tower, self.user_embedding(chunk), items)).squeeze(-1), users, self.n_items, self.max_activations,
            tower_width(self.tower, 2 * items.shape[1]))
