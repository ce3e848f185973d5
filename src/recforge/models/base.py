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


def broadcast_users(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Expand ``(B,)`` users to ``items``' shape ``(B,)`` or ``(B, n)``."""
    return users.view(-1, *([1] * (items.dim() - 1))).expand_as(items)
