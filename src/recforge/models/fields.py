"""What the feature-aware networks share (DCN-V2, Wide & Deep, AutoInt, DIN): a user side and an item side of FM
variables (:class:`~recforge.models.fm.FeatureSide`: ids, and features when the data has them), a network that
reads their field embeddings pair by pair, and :meth:`FieldRecommender.score_all` in user chunks bounded by the
network's activations. Not a model itself; each model file subclasses it and cites its paper."""

from __future__ import annotations

import torch

from recforge.models.base import Recommender, by_user_chunks
from recforge.models.fm import FeatureSide, FeatureSides, SideTerms, context_side


def field_embeddings(user: SideTerms, item: SideTerms) -> torch.Tensor:
    """``(..., n_fields, k)``: the user's field embeddings then the item's, broadcast to the pairs' shape."""
    shape = torch.broadcast_shapes(user.linear.shape, item.linear.shape)
    return torch.stack([f.expand(*shape, -1) for f in user.fields + item.fields], dim=-2)


class FieldRecommender(FeatureSides, Recommender):
    """A network over the fields user id, item id and, when the data has them, user features, item features and the
    interaction's context (each feature field the value-weighted sum of its features' embeddings; the context,
    ``n_context`` columns, on the user's side: :class:`~recforge.models.fm.ContextSide`), so that an id without
    training interactions is scored from its features (:meth:`scores_unseen`). ``use_features=false`` ignores the
    features and the context.

    Subclasses define :meth:`logits` and set ``pair_width``, the activations one pair needs in the widest layer:
    :meth:`score_all` computes the item terms once and scores users in chunks of at most ``max_activations``
    activations."""

    pair_width = 1

    def __init__(self, n_users: int, n_items: int, embedding_dim: int, use_features: bool, init_std: float,
                 user_features: torch.Tensor | None, item_features: torch.Tensor | None, n_context: int = 0) -> None:
        super().__init__()
        self.n_users, self.n_items, self.embedding_dim = n_users, n_items, embedding_dim
        self.user_side = FeatureSide(n_users, embedding_dim, user_features if use_features else None, init_std,
                                     "user_features")
        self.item_side = FeatureSide(n_items, embedding_dim, item_features if use_features else None, init_std,
                                     "item_features")
        self.context_side = context_side(n_context, embedding_dim, use_features, init_std)
        self.reads_context = self.context_side is not None

    @property
    def n_fields(self) -> int:
        return self.user_side.n_fields + self.item_side.n_fields + int(self.reads_context)

    def user_terms(self, users: torch.Tensor, context: torch.Tensor | None = None) -> SideTerms:
        """The user side's terms of ``(B,)`` users, with their ``(B, n_context)`` context when the model reads it."""
        user = self.user_side(users)
        return user if self.context_side is None else self.context_side(user, context)

    def logits(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The logit of each (user, item) pair: ``user`` / ``item`` terms and ``users`` / ``items`` ids broadcast
        against each other (``(B, 1)`` users over ``(B, n)`` or ``(1, n_items)`` items, or ``(B,)`` pairs)."""
        raise NotImplementedError

    def forward(self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        user = self.user_terms(users, context)
        if items.dim() == 2:
            user, users = user.per_item(), users.unsqueeze(-1)
        return self.logits(user, self.item_side(items), users, items)

    def score_all(self, users: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The item terms once, then users in chunks of at most ``max_activations`` activations."""
        weight = self.item_side.embedding.weight
        if not len(users):
            return torch.empty(0, self.n_items, device=users.device, dtype=weight.dtype)
        items = self.item_side.all_ids(users.device)
        item = self.item_side(items)
        item = SideTerms(tuple(f.unsqueeze(0) for f in item.fields), item.linear.unsqueeze(0), item.within.unsqueeze(0))

        def score(chunk: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            return self.logits(self.user_terms(chunk, rows).per_item(), item, chunk.unsqueeze(-1), items.unsqueeze(0))

        return by_user_chunks(score, users, self.n_items, self.max_activations, self.pair_width, context)
