"""DIN: the user's interest in a candidate is the sum of their past items weighted by an activation unit that reads
each past item together with the candidate; an MLP scores it with the user and item fields.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li and Gai. 2018. Deep Interest Network for Click-Through Rate
Prediction. KDD.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.base import latest_items
from recforge.models.fields import FieldRecommender, field_embeddings
from recforge.models.fm import SideTerms
from recforge.models.mlp import mlp_tower, xavier_init_
from recforge.utils.sparse import row_pointers


class ActivationUnit(nn.Module):
    """The local activation unit (the paper's figure 2 and equation 3): the weight of past item ``h`` for candidate
    ``t`` is ``a(h, t) = MLP([h, t, h - t, h * t])``, PReLU hidden layers ``hidden`` and a linear output, **not**
    normalised over the history (the paper keeps the weights' sum as a measure of how strongly the user is
    interested). The first layer is applied in parts, ``W [h, t, h - t, h * t] = (W_h + W_d) h + (W_t - W_d) t +
    W_p (h * t)``, so that the only term of every (candidate, past item) pair is the last: the ``4k``-wide input
    of every pair is never built."""

    def __init__(self, dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        hidden = list(hidden)
        self.first = nn.Linear(4 * dim, hidden[0])
        layers: list[nn.Module] = [nn.PReLU()]
        for width_in, width_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(width_in, width_out), nn.PReLU()]
        self.rest = nn.Sequential(*layers, nn.Linear(hidden[-1], 1))

    def forward(self, history: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B, L, k)`` past items and ``(B or 1, N, k)`` candidates -> ``(B, N, L)`` weights."""
        w_h, w_t, w_d, w_p = self.first.weight.chunk(4, dim=1)
        past = history @ (w_h + w_d).T  # (B, L, H)
        candidate = targets @ (w_t - w_d).T  # (B|1, N, H)
        batch, length, hidden = past.shape
        # sum_k t_k h_k W_p[:, k] for every (candidate, past item): (B|1, N, k) x (B, k, L * H)
        product = targets @ (history.unsqueeze(2) * w_p).reshape(batch, length * hidden, -1).transpose(1, 2)
        layer = product.view(batch, -1, length, hidden) + past.unsqueeze(1) + candidate.unsqueeze(2) + self.first.bias
        return self.rest(layer).squeeze(-1)


class DIN(FieldRecommender):
    """DIN over the fields user id, user features, the user's interest and the candidate's item id and item features
    (each feature field the value-weighted sum of its features' embeddings; past items and candidates are item
    vectors, the id embedding plus the features' embeddings, so an item without training interactions is scored and
    attended to through its features). The interest in candidate ``t`` is ``sum_j a(h_j, t) h_j`` over the user's
    latest ``max_history`` training items ``h_j`` (:class:`ActivationUnit`); the concatenated fields go through
    the ReLU tower ``mlp_layers`` to one logit.

    The history is built once from the training (and fold-in) interactions in time order (``sequences``) and kept
    as a non-persistent ``(n_users, max_history)`` buffer, padded; validation and test items never enter it. The
    candidate itself is left out of the history it is compared with, in training (where every positive is one of
    the user's training items, which the paper's histories, the behaviours before the click, never hold) as in
    evaluation (where the user's training items are not ranked).

    The paper's setting on its public data (Amazon, MovieLens): embeddings of 12, an MLP of 200-80, an activation
    unit with one hidden layer of 36 (figure 2), PReLU or Dice, log loss, which is ``loss=bce`` here (sampled
    negatives stand in for non-clicks). Here the tower's activations are ReLU and the activation unit's PReLU."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_history: int = 50,
                 embedding_dim: int = 12, attention_layers: Sequence[int] = (36,),
                 mlp_layers: Sequence[int] = (200, 80), dropout: float = 0.0, use_features: bool = True,
                 init_std: float = 0.01, user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        attention_layers, mlp_layers = list(attention_layers), list(mlp_layers)
        if max_history < 1 or not attention_layers or not mlp_layers or min(attention_layers + mlp_layers) < 1:
            raise ValueError(f"need max_history >= 1 and attention_layers and mlp_layers of positive widths; got "
                             f"{max_history}, {attention_layers}, {mlp_layers}")
        super().__init__(n_users, n_items, embedding_dim, use_features, init_std, user_features, item_features,
                         n_context)
        pairs = sequences if sequences is not None else torch.zeros(2, 0, dtype=torch.long)
        history = latest_items(row_pointers(pairs[0].long(), n_users), pairs[1].long(), torch.arange(n_users),
                               max_history, n_items)
        self.register_buffer("history", history, persistent=False)  # (n_users, max_history); n_items pads
        self.attention = ActivationUnit(embedding_dim, attention_layers)
        dim = (self.n_fields + 1) * embedding_dim
        self.deep = mlp_tower([dim, *mlp_layers], dropout)
        self.out = nn.Linear(mlp_layers[-1], 1)
        self.pair_width = max(max_history * max(attention_layers) * 2, dim, *mlp_layers)
        xavier_init_(self.deep, self.out)

    def interest(self, users: torch.Tensor, targets: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, N, k)``: each user's history summed with the activation unit's weights for each candidate;
        ``users`` ``(B,)``, candidate vectors ``(B or 1, N, k)`` of item ids ``items`` ``(B or 1, N)``."""
        past = self.history[users]  # (B, L)
        history = self.item_side(past.clamp(max=self.n_items - 1)).vector  # (B, L, k)
        weights = self.attention(history, targets)
        keep = (past != self.n_items).unsqueeze(1) & (past.unsqueeze(1) != items.unsqueeze(-1))
        return torch.einsum("bnl,blk->bnk", weights * keep, history)

    def logits(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        pairs = items.dim() == 1  # (B,) pairs: one candidate per user
        if pairs:
            user, item, items = user.per_item(), item.per_item(), items.unsqueeze(-1)
        interest = self.interest(users.reshape(-1), item.vector, items)
        fields = field_embeddings(user, item)
        fields = torch.cat([fields.flatten(-2), interest], dim=-1)
        logit = self.out(self.deep(fields)).squeeze(-1)
        return logit.squeeze(-1) if pairs else logit

    def add_items(self, item_features: torch.Tensor) -> None:
        """The new items, and the history's padding index moved past them."""
        padding = self.n_items
        super().add_items(item_features)
        self.history = self.history.masked_fill(self.history == padding, self.n_items)
