"""Factorization machine over user and item ids and their features, in the LightFM style.

Rendle. 2010. Factorization Machines. ICDM. Kula. 2015. Metadata Embeddings for User and Item Cold-start
Recommendations. CBRecSys workshop at RecSys (LightFM).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from recforge.models.base import Recommender
from recforge.utils.linalg import inner_products


class SideTerms(NamedTuple):
    """What one side (the users or the items of a batch) contributes to an FM score, per id in the batch."""

    fields: tuple[torch.Tensor, ...]  # (..., k) field embeddings: the id's, then (with features) sum_f x_f v_f
    linear: torch.Tensor  # (...) first-order terms: the id's bias + sum_f x_f w_f
    within: torch.Tensor  # (...) pairwise interactions among the side's own variables (id and features)

    @property
    def vector(self) -> torch.Tensor:
        """The side's representation: the id embedding plus its features' embeddings, weighted by value."""
        return sum(self.fields[1:], self.fields[0])

    def per_item(self) -> "SideTerms":
        """Terms of ``(B,)`` ids made to broadcast against ``(B, n)`` items."""
        return SideTerms(tuple(f.unsqueeze(-2) for f in self.fields), self.linear.unsqueeze(-1),
                         self.within.unsqueeze(-1))


def feature_matrix(features: torch.Tensor | None, n: int, name: str = "features") -> torch.Tensor | None:
    """``features`` as a float32 ``(n, d)`` matrix, or ``None`` when there are none (``None``, or no columns); a
    ValueError naming ``name`` when it does not have one row per index."""
    if features is None:
        return None
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.dim() != 2 or features.shape[0] != n:
        raise ValueError(f"{name} must be a ({n}, d) matrix with one row per index, got shape {tuple(features.shape)}")
    return features if features.shape[1] else None


def with_zero_rows(embedding: nn.Embedding, m: int, at: int | None = None) -> nn.Embedding:
    """A copy of ``embedding`` with ``m`` rows of zeros inserted before row ``at`` (default: appended); a padding row
    after them moves with them."""
    weight = embedding.weight.detach()
    at = len(weight) if at is None else at
    grown = torch.cat([weight[:at], weight.new_zeros(m, weight.shape[1]), weight[at:]])
    padding = embedding.padding_idx
    return nn.Embedding.from_pretrained(grown, freeze=False, padding_idx=None if padding is None else
                                        padding + m * (padding >= at))


def project_features(x: torch.Tensor, embedding: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``(m, k + 2)`` FM terms of ``(m, d)`` feature rows ``x``: ``sum_f x_f v_f`` (``k``), ``sum_f x_f w_f`` and
    ``sum_f x_f^2 |v_f|^2`` (the squares the O(kn) identity subtracts)."""
    weights = torch.cat([embedding, bias.unsqueeze(1)], dim=1)
    return torch.cat([x @ weights, ((x * x) @ embedding.pow(2).sum(1)).unsqueeze(-1)], dim=-1)


class FeatureSide(nn.Module):
    """The FM variables of one side: a one-hot id (an embedding and a bias per row) and, given an ``(n, d)``
    ``features`` matrix, ``d`` real-valued feature variables (an embedding and a weight per column). The
    features are a non-persistent buffer: they come from the data, like ``n``, not from a checkpoint."""

    def __init__(self, n: int, embedding_dim: int, features: torch.Tensor | None, init_std: float,
                 name: str = "features") -> None:
        super().__init__()
        self.n, self.embedding_dim = n, embedding_dim
        self.embedding = nn.Embedding(n, embedding_dim)
        self.bias = nn.Embedding(n, 1)
        nn.init.normal_(self.embedding.weight, std=init_std)
        nn.init.zeros_(self.bias.weight)
        features = feature_matrix(features, n, name)
        self.has_features = features is not None
        if features is not None:
            self.register_buffer("features", features.clone(), persistent=False)
            self.feature_embedding = nn.Parameter(torch.empty(features.shape[1], embedding_dim))
            self.feature_bias = nn.Parameter(torch.zeros(features.shape[1]))
            nn.init.normal_(self.feature_embedding, std=init_std)

    @property
    def n_fields(self) -> int:
        return 1 + self.has_features

    def append(self, features: torch.Tensor) -> None:
        """Append ``len(features)`` ids that are their features alone: their id embedding and bias are zero (the
        one-hot id variable of an id never trained on is left out), ``features`` are their encoded rows."""
        if not self.has_features:
            raise ValueError("ids without training interactions are scored from their features, and this side has none")
        features = feature_matrix(features, len(features)).to(self.features.device)
        if features.shape[1] != self.features.shape[1]:
            raise ValueError(f"new rows have {features.shape[1]} feature columns, the model {self.features.shape[1]}")
        self.embedding = with_zero_rows(self.embedding, len(features))
        self.bias = with_zero_rows(self.bias, len(features))
        self.features = torch.cat([self.features, features])
        self.n += len(features)

    def all_ids(self, device: torch.device) -> torch.Tensor:
        return torch.arange(self.n, device=device)

    def forward(self, ids: torch.Tensor) -> SideTerms:
        emb = self.embedding(ids)
        linear = self.bias(ids).squeeze(-1)
        if not self.has_features:
            return SideTerms((emb,), linear, torch.zeros_like(linear))

        def project(x: torch.Tensor) -> torch.Tensor:  # (m, d) feature rows -> (m, k + 2)
            return project_features(x, self.feature_embedding, self.feature_bias)

        # gather the batch's feature rows, or (for batches larger than the table) project every row once and
        # gather the projections: memory stays O(min(batch, n) * d + batch * k)
        rows = project(self.features[ids]) if ids.numel() < self.n else project(self.features)[ids]
        field, first, squares = rows.split([self.embedding_dim, 1, 1], dim=-1)
        vector = emb + field
        within = 0.5 * (vector.pow(2).sum(-1) - emb.pow(2).sum(-1) - squares.squeeze(-1))
        return SideTerms((emb, field), linear + first.squeeze(-1), within)


class ContextSide(nn.Module):
    """The FM variables of the interaction's context (``n_context`` columns, e.g. the one-hot hour and weekday of
    its time; :mod:`recforge.data.context`), an embedding and a weight per column, joined to the user's side: the
    context is the user's side of the query (what this user picks at this moment), so ``s_u = v_u + sum_f x_uf v_f
    + sum_c x_c v_c`` and the first-order and within-side terms grow by the context's."""

    def __init__(self, n_context: int, embedding_dim: int, init_std: float) -> None:
        super().__init__()
        self.n_context, self.embedding_dim = n_context, embedding_dim
        self.embedding = nn.Parameter(torch.empty(n_context, embedding_dim))
        self.bias = nn.Parameter(torch.zeros(n_context))
        nn.init.normal_(self.embedding, std=init_std)

    def forward(self, user: SideTerms, context: torch.Tensor | None) -> SideTerms:
        """``user``'s terms ``(B,)`` with the ``(B, n_context)`` context's field added (``None``: no context
        variable is set, as for a caller that knows no time: a zero field)."""
        if context is None:
            context = user.linear.new_zeros(*user.linear.shape, self.n_context)
        field, first, squares = project_features(context.to(user.linear.dtype), self.embedding, self.bias).split(
            [self.embedding_dim, 1, 1], dim=-1)
        within = (user.within + (user.vector * field).sum(-1)    # the context with the id and the user features
                  + 0.5 * (field.pow(2).sum(-1) - squares.squeeze(-1)))   # among the context's own variables
        return SideTerms(user.fields + (field,), user.linear + first.squeeze(-1), within)


def context_side(n_context: int, embedding_dim: int, use_features: bool, init_std: float) -> ContextSide | None:
    """A model's :class:`ContextSide`, or ``None`` when the data has no context or ``use_features=false``."""
    return ContextSide(n_context, embedding_dim, init_std) if use_features and n_context else None


class FeatureSides:
    """What a model over a ``user_side`` and an ``item_side`` (:class:`FeatureSide`) answers alike: its item
    vectors, whether it scores unseen ids, and new items appended from their features (FM and the field models)."""

    user_side: FeatureSide
    item_side: FeatureSide

    def item_vectors(self) -> torch.Tensor:
        return self.item_side(self.item_side.all_ids(self.item_side.embedding.weight.device)).vector

    def scores_unseen(self, side: str) -> bool:
        """Unseen users (items) score through their features' embeddings when the model reads user (item)
        features; their own id embeddings keep their small initial values."""
        return (self.item_side if side == "items" else self.user_side).has_features

    def add_items(self, item_features: torch.Tensor) -> None:
        self.item_side.append(item_features)
        self.n_items = self.item_side.n


class FactorizationMachine(FeatureSides, Recommender):
    """A second-order FM (Rendle 2010) whose input vector is ``[one-hot user, one-hot item, user features,
    item features]``::

        score = w0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l

    computed with the O(kn) identity. Grouping the variables by side, the user representation
    ``s_u = v_u + sum_f x_uf v_f`` and the item representation ``s_i`` likewise (LightFM's sums of id and
    feature embeddings, Kula 2015) give ``score = w0 + b_u + b_i + s_u . s_i + c_u + c_i``, where ``b`` are the
    first-order terms and ``c`` the interactions within one side (a per-user / per-item constant): an item never
    seen in training still has a representation from its features. :meth:`score_all` is one matrix product.

    With ``n_context`` context columns (``data.context_columns``: the hour and weekday of the interaction) the
    context's variables join the user's side (:class:`ContextSide`): ``forward`` and ``score_all`` then take each
    query's ``context``.

    ``use_features=false`` ignores ``user_features`` / ``item_features`` and the context (then it is biased MF). With
    ``loss=mse`` it learns ratings, the global bias ``w0`` starting at ``global_mean``; with ``loss=bpr`` it
    ranks."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, use_features: bool = True,
                 init_std: float = 0.01, global_mean: float = 0.0, user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_side = FeatureSide(n_users, embedding_dim, user_features if use_features else None, init_std,
                                     "user_features")
        self.item_side = FeatureSide(n_items, embedding_dim, item_features if use_features else None, init_std,
                                     "item_features")
        self.context_side = context_side(n_context, embedding_dim, use_features, init_std)
        self.reads_context = self.context_side is not None
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))

    def user_terms(self, users: torch.Tensor, context: torch.Tensor | None = None) -> SideTerms:
        """The user side's terms of ``(B,)`` users, with their ``(B, n_context)`` context when the model reads it."""
        user = self.user_side(users)
        return user if self.context_side is None else self.context_side(user, context)

    def combine(self, user: SideTerms, item: SideTerms) -> torch.Tensor:
        """The FM score of the user and item terms (of the same, or broadcastable, shapes)."""
        return (self.global_bias + user.linear + item.linear + user.within + item.within
                + (user.vector * item.vector).sum(-1))

    def forward(self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        user = self.user_terms(users, context)
        return self.combine(user.per_item() if items.dim() == 2 else user, self.item_side(items))

    def score_all(self, users: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        user = self.user_terms(users, context)
        item = self.item_side(self.item_side.all_ids(users.device))
        return (inner_products(user.vector, item.vector) + (self.global_bias + user.linear + user.within).unsqueeze(1)
                + (item.linear + item.within))
