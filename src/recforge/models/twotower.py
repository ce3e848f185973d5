"""Two-tower retrieval: a user tower and an item tower map ids and features to L2-normalised vectors whose inner
product over a temperature is the score, trained with an in-batch softmax corrected by each item's log sampling
probability.

Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei and Chi. 2019. Sampling-Bias-Corrected Neural Modeling for
Large Corpus Item Recommendations. RecSys.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import Recommender
from recforge.models.fm import FeatureSide
from recforge.models.mlp import mlp_tower, xavier_init_
from recforge.utils.linalg import inner_products, with_shared_products


class Tower(nn.Module):
    """One side's tower: the id embedding and (with features) the value-weighted sum of the features' embeddings
    (:class:`~recforge.models.fm.FeatureSide`'s fields), concatenated, through ReLU layers ``layers[:-1]`` and a
    linear output of ``layers[-1]`` dimensions, L2-normalised."""

    def __init__(self, side: FeatureSide, layers: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.side = side
        widths = [side.n_fields * side.embedding_dim, *layers]
        self.hidden = mlp_tower(widths[:-1], dropout)
        self.output = nn.Linear(widths[-2], widths[-1])
        xavier_init_(self.hidden, self.output)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        fields = torch.cat(self.side(ids).fields, dim=-1)
        return F.normalize(self.output(self.hidden(fields)), dim=-1)


class TwoTower(Recommender):
    """``score(u, i) = <u(x_u), v(y_i)> / temperature`` with ``u`` and ``v`` the unit-length outputs of a user
    :class:`Tower` and an item :class:`Tower` (``tower_layers``: the hidden widths, then the output dimension), so
    that a user or item without training interactions is scored through its features (:meth:`scores_unseen`), and
    an ANN index serves it (:meth:`retrieval_items`).

    The paper's objective is a softmax over the batch's items with each logit corrected by ``- log p_j``, ``p_j`` the
    probability that item ``j`` is in a batch, which it estimates from streaming frequencies: ``model=twotower``
    selects ``loss=sampled_softmax sampler=in_batch`` (:class:`~recforge.samplers.InBatchSampler`, whose ``log q`` is
    each item's share of the training interactions, subtracted with ``loss.logq_correction=true``; a negative that
    is a positive of the row's user is masked), with every other positive of the batch as a negative. With
    candidates ``(B, n)`` :meth:`forward` runs the item tower once per distinct item, so the ``B x B`` in-batch
    scores cost one tower pass over at most ``B`` items.

    The paper tunes the temperature (a small one sharpens the softmax over normalised vectors) and uses ReLU towers
    of a few hundred units; the defaults here (``tower_layers=(256, 64)``, ``temperature=0.05``, embeddings of 64)
    are ours, not a table of the paper's."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, tower_layers: Sequence[int] = (256, 64),
                 temperature: float = 0.05, dropout: float = 0.0, use_features: bool = True, init_std: float = 0.01,
                 user_features: torch.Tensor | None = None, item_features: torch.Tensor | None = None) -> None:
        tower_layers = list(tower_layers)
        if not tower_layers or min(tower_layers) < 1 or temperature <= 0:
            raise ValueError(f"need tower_layers of positive widths and temperature > 0; got {tower_layers}, "
                             f"{temperature}")
        super().__init__()
        self.n_users, self.n_items, self.temperature = n_users, n_items, temperature
        self.user_tower = Tower(FeatureSide(n_users, embedding_dim, user_features if use_features else None,
                                            init_std, "user_features"), tower_layers, dropout)
        self.item_tower = Tower(FeatureSide(n_items, embedding_dim, item_features if use_features else None,
                                            init_std, "item_features"), tower_layers, dropout)

    def item_side_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """The item tower's unit vectors over the temperature: the item side of every score."""
        return self.item_tower(items) / self.temperature

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        queries = self.user_tower(users)
        if items.dim() == 1:
            return (queries * self.item_side_vectors(items)).sum(-1)
        distinct, where = torch.unique(items, return_inverse=True)
        return inner_products(queries, self.item_side_vectors(distinct)).gather(1, where)

    def score_with_shared(self, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """One pass of the user tower (one dropout draw) for the positive and the shared negatives."""
        items = self.item_side_vectors(torch.cat([positives, shared]))
        return with_shared_products(self.user_tower(users), items[:len(positives)], items[len(positives):])

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return inner_products(self.user_tower(users), self.retrieval_items())

    def item_vectors(self) -> torch.Tensor:
        return self.item_tower(self.item_tower.side.all_ids(self.item_tower.output.weight.device))

    def retrieval_items(self) -> torch.Tensor:
        return self.item_vectors() / self.temperature

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_tower(users)

    def scores_unseen(self, side: str) -> bool:
        """Unseen users (items) are scored through their features' embeddings when the towers read user (item)
        features; their own id embeddings keep their small initial values."""
        return (self.item_tower if side == "items" else self.user_tower).side.has_features

    def add_items(self, item_features: torch.Tensor) -> None:
        self.item_tower.side.append(item_features)
        self.n_items = self.item_tower.side.n
