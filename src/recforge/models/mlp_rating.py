"""A neural network for explicit feedback: user and item embeddings plus timestamp features through an MLP.

The classic course-material rating network (embeddings of the ids, concatenated with side features, fed to a
ReLU tower that regresses the rating); the tower is NCF's (He et al. 2017), here with a squared-error head.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.base import Recommender, broadcast_users
from recforge.models.mlp import mlp_tower, xavier_init_


def _time_table(features: torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    if features is None:
        return torch.zeros(n, 3)
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.dim() != 2 or features.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, d), got {tuple(features.shape)}")
    return features


class MLPRating(Recommender):
    """``rating(u, i) = global_mean + f([p_u, q_i, t_u, t_i])``: ``embedding_dim``-d user and item embeddings
    concatenated with the user's and the item's time features (data arguments ``user_time_features`` /
    ``item_time_features``, ``(n, 3)``: first, mean and last training timestamp scaled to [0, 1]; ``None``: zeros),
    fed to the ReLU tower ``layers`` (``dropout`` after each hidden layer) and a linear output: the offset from
    the training mean rating ``global_mean``. Trained with ``loss=mse``.

    The time features are non-persistent buffers: a checkpoint rebuilt from the data or a bundle (whose spec keeps
    the constructor arguments) restores them, and a warm start on new data uses the new data's."""

    feedbacks = ("explicit",)

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 32, layers: Sequence[int] = (64, 32, 16),
                 dropout: float = 0.0, init_std: float = 0.01, global_mean: float = 0.0,
                 user_time_features: torch.Tensor | None = None,
                 item_time_features: torch.Tensor | None = None) -> None:
        super().__init__()
        if embedding_dim < 1 or any(width < 1 for width in layers):
            raise ValueError(f"embedding_dim and layers must be positive, got {embedding_dim} and {list(layers)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.n_users, self.n_items, self.global_mean = n_users, n_items, float(global_mean)
        self.register_buffer("user_time", _time_table(user_time_features, n_users, "user_time_features"),
                             persistent=False)
        self.register_buffer("item_time", _time_table(item_time_features, n_items, "item_time_features"),
                             persistent=False)
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        widths = [2 * embedding_dim + self.user_time.shape[1] + self.item_time.shape[1], *layers]
        self.tower = mlp_tower(widths, dropout)
        self.predict = nn.Linear(widths[-1], 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        xavier_init_(self.tower, self.predict)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users = broadcast_users(users, items)
        x = torch.cat([self.user_embedding(users), self.item_embedding(items), self.user_time[users],
                       self.item_time[items]], dim=-1)
        return self.global_mean + self.predict(self.tower(x)).squeeze(-1)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight
