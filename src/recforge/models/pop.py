"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

import torch

from recforge.models.base import Recommender


class Popularity(Recommender):
    """Scores an item by its number of training interactions (the non-personalised baseline every paper
    should beat). Fitted by counting; no gradient steps."""

    requires_training = False
    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.register_buffer("counts", torch.zeros(n_items))

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        self.counts = torch.bincount(items.to(self.counts.device), minlength=self.n_items).to(self.counts.dtype)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def scores_unseen(self, side: str) -> bool:
        """The cold-start reference: an unseen user gets the popular items like everyone (a real baseline); unseen
        items all count 0, so among held-out items the ranking is the evaluator's tie order (lower item index
        first), i.e. chance level, and among all items they come last."""
        return True
