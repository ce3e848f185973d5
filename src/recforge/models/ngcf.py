"""NGCF: graph convolution with feature transforms and an affinity (element-wise) message term.

Wang, He, Wang, Feng and Chua. 2019. Neural Graph Collaborative Filtering. SIGIR.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.lightgcn import GraphRecommender, propagate_layer


class NGCF(GraphRecommender):
    """Embedding propagation (Eq. 7 in matrix form):
    ``E^(l) = LeakyReLU((L + I) E^(l-1) W1 + (L E^(l-1)) * E^(l-1) W2)``, ``L = D^-1/2 A D^-1/2``,
    message dropout between layers, each layer's output L2-normalised, and the final representation the
    concatenation of ``E^(0..L)`` scored by inner product. Paper setting: 64-d, ``layers`` [64, 64, 64],
    BPR, L2 ``reg_weight`` 1e-5, ``message_dropout`` 0.1 (the default here is 0.0, chosen on validation:
    docs/defaults.md). Here the L2 term is on the batch's ego embeddings, as LightGCN's is (see
    :meth:`regularization`); the NGCF reference code puts it on the propagated (concatenated) vectors of the batch,
    and RecBole on those vectors' unsquared norms. Kept: the quality pairs with RecBole were measured this way."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor, embedding_dim: int = 64,
                 layers: Sequence[int] = (64, 64, 64), message_dropout: float = 0.0, reg_weight: float = 1e-5,
                 leaky_slope: float = 0.2) -> None:
        super().__init__(n_users, n_items, interactions)
        widths = [embedding_dim, *layers]
        self.reg_weight, self.message_dropout, self.leaky_slope = reg_weight, message_dropout, leaky_slope
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        self.w_sum = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.w_product = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for weight in (self.user_embedding.weight, self.item_embedding.weight):
            nn.init.xavier_uniform_(weight)
        for layer in (*self.w_sum, *self.w_product):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        outputs = [ego]
        for w_sum, w_product in zip(self.w_sum, self.w_product):
            side = propagate_layer(self.adjacency, ego)
            ego = F.leaky_relu(w_sum(side + ego) + w_product(side * ego), self.leaky_slope)
            ego = F.dropout(ego, self.message_dropout, self.training)
            outputs.append(F.normalize(ego, dim=1))
        final = torch.cat(outputs, dim=1)
        return final[: self.n_users], final[self.n_users :]
