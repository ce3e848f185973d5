"""Wide & Deep: a wide linear model over sparse features and their cross products, trained jointly with a deep
network over the features' embeddings; the two logits are summed.

Cheng, Koc, Harmsen, Shaked, Chandra, Aradhye, Anderson, Corrado, Chai, Ispir, Anil, Haque, Hong, Jain, Liu and
Shah. 2016. Wide & Deep Learning for Recommender Systems. DLRS workshop at RecSys.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.fields import FieldRecommender, field_embeddings
from recforge.models.fm import SideTerms
from recforge.models.mlp import mlp_tower, xavier_init_


class WideDeep(FieldRecommender):
    """``logit = wide + deep``.

    * **wide**: a linear model over the one-hot user and item ids and the features (each variable's weight times its
      value: the first-order terms of :class:`~recforge.models.fm.FeatureSide`) plus, with ``cross_features`` and
      features on both sides, the cross-product transformations of every user feature with every item feature,
      ``x_u^T W x_i`` (``W`` is ``d_user x d_item``; for one-hot features such as ``occupation=writer`` and
      ``genres=Comedy`` a weight per AND of the two, the paper's ``AND(user_installed_app, impression_app)``).
    * **deep**: the ReLU tower ``mlp_layers`` (``dropout`` after each layer) over the concatenated field embeddings
      (user id, item id and, when the data has them, user and item features) and a linear output.

    An id without training interactions scores through its features in both parts (:meth:`scores_unseen`).

    The paper's setting (Google Play): 32-dimensional embeddings, ReLU layers 1024-512-256 (the class defaults), no
    dropout, log loss, which is ``loss=bce`` here (sampled negatives stand in for non-installs); it trains the wide
    part by FTRL with L1 and the deep part by AdaGrad, where here one optimizer (Adam by default) trains both."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 32,
                 mlp_layers: Sequence[int] = (1024, 512, 256), dropout: float = 0.0, cross_features: bool = True,
                 use_features: bool = True, init_std: float = 0.01,
                 user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        mlp_layers = list(mlp_layers)
        if not mlp_layers or min(mlp_layers) < 1:
            raise ValueError(f"mlp_layers needs at least one positive width, got {mlp_layers}")
        super().__init__(n_users, n_items, embedding_dim, use_features, init_std, user_features, item_features,
                         n_context)
        dim = self.n_fields * embedding_dim
        self.deep = mlp_tower([dim, *mlp_layers], dropout)
        self.deep_out = nn.Linear(mlp_layers[-1], 1)
        self.bias = nn.Parameter(torch.zeros(()))
        crossed = cross_features and self.user_side.has_features and self.item_side.has_features
        self.cross = nn.Parameter(torch.zeros(self.user_side.features.shape[1], self.item_side.features.shape[1])) \
            if crossed else None
        self.pair_width = max(dim, *mlp_layers, self.cross.shape[1] if crossed else 1) * 2
        xavier_init_(self.deep, self.deep_out)

    def wide(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The wide part's logit: bias, id and feature weights, and the user x item feature crosses."""
        logit = self.bias + user.linear + item.linear
        if self.cross is None:
            return logit
        crossed = self.user_side.features[users] @ self.cross  # (..., d_item): each item feature's cross weight
        return logit + (crossed * self.item_side.features[items]).sum(-1)

    def logits(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        deep = self.deep_out(self.deep(field_embeddings(user, item).flatten(-2))).squeeze(-1)
        return self.wide(user, item, users, items) + deep
