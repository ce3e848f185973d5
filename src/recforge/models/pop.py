"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

import torch

from recforge.models.base import Recommender


def tie_order(n_items: int, seed: int) -> torch.Tensor:
    """A pseudo-random order of the items (fixed by ``seed``) as fractions in [0, 0.5): added to integer counts it
    orders items of equal count without reordering different counts. Not the item index: indices follow the sorted
    raw ids, and on MovieLens a low id is an older, more rated film, so an index order would pass as a popularity
    signal where there is none (e.g. among held-out items that all count 0)."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))
    return order.to(torch.float32) * (0.5 / max(n_items, 1))


class Popularity(Recommender):
    """Scores an item by its number of training interactions (the non-personalised baseline every paper
    should beat), equal counts in a pseudo-random order fixed by ``tie_seed`` (:func:`tie_order`; the run's seed
    by default, so seeds give the spread of that order's luck). Fitted by counting; no gradient steps."""

    requires_training = False
    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, tie_seed: int = 0) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.register_buffer("counts", torch.zeros(n_items))
        self.register_buffer("ties", tie_order(n_items, tie_seed), persistent=False)

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        self.counts = torch.bincount(items.to(self.counts.device), minlength=self.n_items).to(self.counts.dtype)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items] + self.ties[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return (self.counts + self.ties).expand(len(users), -1).clone()

    def scores_unseen(self, side: str) -> bool:
        """The cold-start reference: an unseen user gets the popular items like everyone (a real baseline); unseen
        items all count 0, so among held-out items the ranking is the seeded pseudo-random tie order, i.e. chance
        level (one draw per seed), and among all items they come last."""
        return True
