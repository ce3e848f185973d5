"""The greedy re-ranking loop every re-ranker shares.

A re-ranker receives each user's candidates, the model's top ``n_candidates`` items in the model's order (score
descending, ties by lower item index, ``-inf`` for missing ones), and builds the top-``k`` list position by
position: at each step it takes the candidate of highest :meth:`Reranker.value`, which weighs the candidate's
relevance (the model's score min-max scaled to [0, 1] among the user's candidates) against what the method
wants, with ``trade_off`` in [0, 1]. ``trade_off=0`` keeps the model's list exactly; equal values go to the
candidate the model ranked higher. Everything runs on (B, N) tensors, one step per list position.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor


def scaled_relevance(scores: Tensor, valid: Tensor) -> Tensor:
    """Each row's valid scores min-max scaled to [0, 1] (a row of equal scores: all 1); invalid entries 0."""
    lo = torch.where(valid, scores, torch.inf).amin(1, keepdim=True)
    hi = torch.where(valid, scores, -torch.inf).amax(1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # equal scores, or no valid score at all
    rel = (scores - lo) / torch.where(flat, 1.0, span)
    return torch.where(valid, torch.where(flat, 1.0, rel), 0.0)


class Reranker:
    """Base class: ``reranker(users, items, scores, k) -> (items, scores)``, both (B, min(k, N)).

    The returned scores are the model's scores of the listed items (so not descending once reordered); positions
    past a user's valid candidates get ``-inf``, as the evaluator's top-K marks missing recommendations.
    Subclasses set up per-batch state in :meth:`start`, score every candidate in :meth:`value` and record a pick
    in :meth:`update`; data-dependent constructor arguments (item vectors, user profiles) are passed in by the
    caller, like a model's ``n_items``.

    Args:
        trade_off: in [0, 1]: 0 keeps the model's order, 1 follows the method's objective alone.
        n_candidates: N, how many of the model's top items are re-ranked (at least the list length is used).
    """

    def __init__(self, trade_off: float, n_candidates: int) -> None:
        if not 0.0 <= float(trade_off) <= 1.0:
            raise ValueError(f"trade_off must lie in [0, 1], got {trade_off}")
        if int(n_candidates) < 1:
            raise ValueError(f"n_candidates must be a positive integer, got {n_candidates}")
        self.trade_off, self.n_candidates = float(trade_off), int(n_candidates)

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this re-ranker (as a served bundle stores it)."""
        return {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}

    @staticmethod
    def required(value: Tensor | None, name: str, method: str) -> Tensor:
        if value is None:
            raise ValueError(f"{method} needs {name}")
        return value.detach()

    def start(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        """Per-batch state from the (B,) users and their (B, N) candidate items."""
        raise NotImplementedError

    def value(self, state: dict[str, Tensor], relevance: Tensor, step: int) -> Tensor:
        """(B, N) the value of adding each candidate at position ``step`` (0-based); the highest is taken."""
        raise NotImplementedError

    def update(self, state: dict[str, Tensor], rows: Tensor, picked: Tensor, items: Tensor) -> None:
        """Record the pick: candidate position ``picked`` (B,), item ``items`` (B,) of each row."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, users: Tensor, items: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n_rows, n = items.shape
        k = min(int(k), n)
        valid = torch.isfinite(scores)
        relevance = scaled_relevance(scores.float(), valid)
        taken = torch.zeros_like(valid)
        rows = torch.arange(n_rows, device=items.device)
        state = self.start(users, items)
        picks = torch.zeros(n_rows, k, dtype=torch.long, device=items.device)
        last = torch.finfo(torch.float32).min  # missing candidates come after every valid one, in their order
        for step in range(k):
            value = self.value(state, relevance, step).masked_fill(~valid, last).masked_fill(taken, -torch.inf)
            pick = value.argmax(1)
            picks[:, step] = pick
            taken[rows, pick] = True
            self.update(state, rows, pick, items[rows, pick])
        return items.gather(1, picks), scores.gather(1, picks)
