"""DeepFM: a factorization machine and a deep network over the same field embeddings, summed into one logit.

Guo, Tang, Ye, Li and He. 2017. DeepFM: A Factorization-Machine based Neural Network for CTR Prediction. IJCAI.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.base import Recommender, by_user_chunks
from recforge.models.fm import FactorizationMachine, SideTerms
from recforge.models.mlp import mlp_tower, tower_over_all_pairs, tower_width, xavier_init_


class DeepFM(Recommender):
    """``logit = FM(x) + DNN(x)``. The fields are the user id, the item id and, when the data has them, the
    user features, the item features and the interaction's context (each one field whose embedding is the
    value-weighted sum of its features' embeddings; the context on the user's side, as in the FM). The FM
    component is :class:`~recforge.models.fm.FactorizationMachine` (first-order terms and all pairwise
    interactions); the DNN reads the concatenated field embeddings of the same shared embedding tables through the
    ReLU tower ``mlp_layers`` (``dropout`` after each layer) and a linear output.

    The paper's setting (Criteo / Company*): embedding 10, 400-400-400 ReLU, dropout 0.5, Adam, log loss,
    which is ``loss=bce`` here (sampled negatives stand in for non-clicks)."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 10,
                 mlp_layers: Sequence[int] = (400, 400, 400), dropout: float = 0.5, use_features: bool = True,
                 init_std: float = 0.01, global_mean: float = 0.0, user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        super().__init__()
        mlp_layers = list(mlp_layers)
        if not mlp_layers or min(mlp_layers) < 1:
            raise ValueError(f"mlp_layers needs at least one positive width, got {mlp_layers}")
        self.n_users, self.n_items = n_users, n_items
        self.fm = FactorizationMachine(n_users, n_items, embedding_dim, use_features, init_std, global_mean,
                                       user_features, item_features, n_context)
        self.reads_context = self.fm.reads_context
        n_fields = self.fm.user_side.n_fields + self.fm.item_side.n_fields + int(self.reads_context)
        self.dnn = mlp_tower([n_fields * embedding_dim, *mlp_layers], dropout)
        self.dnn_out = nn.Linear(mlp_layers[-1], 1)
        xavier_init_(self.dnn, self.dnn_out)

    def deep(self, user: SideTerms, item: SideTerms) -> torch.Tensor:
        """The DNN component's logit over the concatenated field embeddings (users broadcast over items)."""
        shape = torch.broadcast_shapes(user.linear.shape, item.linear.shape)
        fields = [f.expand(*shape, -1) for f in user.fields + item.fields]
        return self.dnn_out(self.dnn(torch.cat(fields, dim=-1))).squeeze(-1)

    def components(self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The FM and the DNN logits of the pairs, each of ``items``' shape."""
        user = self.fm.user_terms(users, context)
        if items.dim() == 2:
            user = user.per_item()
        item = self.fm.item_side(items)
        return self.fm.combine(user, item), self.deep(user, item)

    def forward(self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        fm, deep = self.components(users, items, context)
        return fm + deep

    def score_all(self, users: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The item terms once, then users in chunks of at most ``max_activations`` DNN activations (pairs times
        the widest hidden layer); the DNN's first layer applied once per user and once per item
        (:func:`~recforge.models.mlp.tower_over_all_pairs`)."""
        if not len(users):
            return torch.empty(0, self.n_items, device=users.device, dtype=self.dnn_out.weight.dtype)
        item = self.fm.item_side(self.fm.item_side.all_ids(users.device))
        item_fields = torch.cat(item.fields, dim=-1)
        item = SideTerms(tuple(f.unsqueeze(0) for f in item.fields), item.linear.unsqueeze(0),
                         item.within.unsqueeze(0))

        def score(chunk: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            user = self.fm.user_terms(chunk, rows)
            deep = self.dnn_out(tower_over_all_pairs(self.dnn, torch.cat(user.fields, dim=-1), item_fields))
            return self.fm.combine(user.per_item(), item) + deep.squeeze(-1)

        return by_user_chunks(score, users, self.n_items, self.max_activations, tower_width(self.dnn), context)

    def item_vectors(self) -> torch.Tensor:
        return self.fm.item_vectors()

    def scores_unseen(self, side: str) -> bool:
        return self.fm.scores_unseen(side)

    def add_items(self, item_features: torch.Tensor) -> None:
        self.fm.add_items(item_features)
        self.n_items = self.fm.n_items
