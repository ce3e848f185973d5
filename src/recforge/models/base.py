"""The contract every RecForge model keeps.

* ``forward(users, items)`` scores pairs: ``users`` is ``(B,)``, ``items`` is ``(B,)`` or ``(B, n)``; the
  result has ``items``' shape. Explicit-feedback models predict ratings, implicit ones return logits.
* ``score_all(users)`` scores a batch of users against every item, ``(B, n_items)``, so one evaluator
  serves every model.
* Data-dependent values (``n_users``, ``n_items``, ``global_mean``, ``item_popularity``, and
  ``interactions``, the ``(2, n_train)`` user/item pairs of the training split) are constructor
  arguments that ``train(cfg)`` fills in from the data; a model asks only for those it needs.
* ``feedbacks`` lists the feedback kinds (explicit ratings, implicit) the model can learn from.
* Models fitted in closed form (no gradient steps) set ``requires_training = False`` and implement
  ``fit(users, items, ratings)``.
* ``item_vectors()`` optionally returns ``(n_items, d)`` item representations (used for similar items by
  the service); the default ``None`` means the model has none.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.utils.sparse import csr_indices, dense_rows


class Recommender(nn.Module):
    requires_training: bool = True
    feedbacks: tuple[str, ...] = ("explicit", "implicit")  # which losses' feedback the model can learn
    n_items: int

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Default: ``forward`` over every item, in sub-chunks bounded to ~4M pairs."""
        all_items = torch.arange(self.n_items, device=users.device)
        step = max(1, (1 << 22) // self.n_items)
        return torch.cat([
            self(chunk, all_items.expand(len(chunk), -1)) for chunk in users.split(step)
        ]) if len(users) else torch.empty(0, self.n_items, device=users.device)

    def item_vectors(self) -> torch.Tensor | None:
        """``(n_items, d)`` item representations (e.g. embeddings), or ``None`` when the model has none."""
        return None

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not fit()")


class WholeRowRecommender(Recommender):
    """A model that scores all items of a user at once: ``forward`` picks the requested items out of
    ``score_all``."""

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_all(users).gather(1, items.view(len(users), -1)).view_as(items)


class RowInputRecommender(WholeRowRecommender):
    """A model whose input is the user's training row (autoencoders, item-item models): the ``interactions``
    are kept as non-persistent CSR index buffers and :meth:`user_rows` densifies a batch of them."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        pairs = interactions if interactions is not None else torch.zeros(2, 0, dtype=torch.long)
        indptr, indices = csr_indices(pairs[0], pairs[1], n_users, n_items)
        self.register_buffer("history_indptr", indptr, persistent=False)
        self.register_buffer("history_indices", indices, persistent=False)

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense ``(B, n_items)`` training rows of ``users``."""
        return dense_rows(self.history_indptr, self.history_indices, users, self.n_items)


def broadcast_users(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Expand ``(B,)`` users to ``items``' shape ``(B,)`` or ``(B, n)``."""
    return users.view(-1, *([1] * (items.dim() - 1))).expand_as(items)
