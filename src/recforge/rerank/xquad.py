"""Popularity-aware xQuAD (Abdollahpouri, Burke & Mobasher, "Managing Popularity Bias in Recommender Systems
with Personalized Re-ranking", FLAIRS 2019; xQuAD: Santos et al. 2010): the item popularity groups are the
aspects, weighted by their share of the user's history, so that each group gets its due share of the list."""

from __future__ import annotations

import torch
from torch import Tensor

from recforge.rerank.base import Reranker


class XQuAD(Reranker):
    """value = ``(1 - trade_off) * relevance + trade_off * P(c|u) * (1 - share of c in the list so far)`` for the
    candidate's group ``c`` (the smooth variant of the paper; the share is 0 before the first item).

    Args:
        trade_off: the paper's lambda.
        n_candidates: the model's top-N items re-ranked.
        item_groups: (n_items,) each item's popularity group (head / mid / tail codes); from the caller.
        user_group_shares: (n_users, n_groups) the share of each group in the user's history; from the caller.
    """

    def __init__(self, trade_off: float = 0.5, n_candidates: int = 100, item_groups: Tensor | None = None,
                 user_group_shares: Tensor | None = None) -> None:
        super().__init__(trade_off, n_candidates)
        self.item_groups = self.required(item_groups, "item_groups (item popularity groups)", "XQuAD").long()
        self.user_group_shares = self.required(user_group_shares, "user_group_shares (history share per group)",
                                               "XQuAD")

    def start(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        shares = self.user_group_shares.to(items.device)[users].float()
        groups = self.item_groups.to(items.device)[items]
        return {"wanted": shares.gather(1, groups), "groups": groups, "listed": torch.zeros_like(shares)}

    def value(self, state: dict[str, Tensor], relevance: Tensor, step: int) -> Tensor:
        covered = state["listed"].gather(1, state["groups"]) / max(step, 1)
        return (1 - self.trade_off) * relevance + self.trade_off * state["wanted"] * (1 - covered)

    def update(self, state: dict[str, Tensor], rows: Tensor, picked: Tensor, items: Tensor) -> None:
        state["listed"][rows, state["groups"][rows, picked]] += 1
