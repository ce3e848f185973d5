"""Calibrated re-ranking (Steck, "Calibrated Recommendations", RecSys 2018): the list's category (genre)
distribution should match the user's history's."""

from __future__ import annotations

import torch
from torch import Tensor

from recforge.rerank.base import Reranker


class Calibrated(Reranker):
    """value = ``(1 - trade_off) * relevance - trade_off * KL(p || q~)`` of the list with the candidate added,
    ``p`` the history's category distribution, ``q`` the list's (items weigh the same), ``q~ = (1 - alpha) q +
    alpha p`` (Steck's greedy maximisation of ``(1 - lambda) * sum of scores - lambda * C_KL``). A user whose
    history has no category keeps the model's order.

    Args:
        trade_off: Steck's lambda.
        n_candidates: the model's top-N items re-ranked.
        alpha: the mixing weight that keeps ``q~`` positive where ``p`` is.
        item_categories: (n_items, G) each item's category distribution (rows sum to 1, or 0); from the caller.
        user_categories: (n_users, G) each user's history distribution; from the caller.
    """

    def __init__(self, trade_off: float = 0.5, n_candidates: int = 100, alpha: float = 0.01,
                 item_categories: Tensor | None = None, user_categories: Tensor | None = None) -> None:
        super().__init__(trade_off, n_candidates)
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.item_categories = self.required(item_categories, "item_categories (genres)", "Calibrated")
        self.user_categories = self.required(user_categories, "user_categories (history genres)", "Calibrated")

    def start(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        profile = self.user_categories.to(items.device)[users]
        candidates = self.item_categories.to(items.device)[items]
        return {"p": profile.unsqueeze(1), "candidates": candidates, "listed": torch.zeros_like(profile)}

    def value(self, state: dict[str, Tensor], relevance: Tensor, step: int) -> Tensor:
        p = state["p"]
        q = state["listed"].unsqueeze(1) + state["candidates"]
        mass = q.sum(2, keepdim=True)
        q = torch.where(mass > 0, q / mass.clamp(min=1e-12), 0.0)
        mixed = (1 - self.alpha) * q + self.alpha * p
        kl = torch.where(p > 0, p * torch.log(p / mixed), 0.0).sum(2)
        return (1 - self.trade_off) * relevance - self.trade_off * kl

    def update(self, state: dict[str, Tensor], rows: Tensor, picked: Tensor, items: Tensor) -> None:
        state["listed"] = state["listed"] + state["candidates"][rows, picked]
