"""Maximal marginal relevance (Carbonell & Goldstein, "The Use of MMR, Diversity-Based Reranking for Reordering
Documents and Producing Summaries", SIGIR 1998): each next item trades relevance against its highest cosine
similarity to the items already listed."""

from __future__ import annotations

import torch
from torch import Tensor

from recforge.rerank.base import Reranker


class MMR(Reranker):
    """value = ``(1 - trade_off) * relevance - trade_off * max_{j listed} cos(v_i, v_j)`` (0 for the first item).

    Args:
        trade_off: weight of the similarity penalty (the paper's ``1 - lambda``).
        n_candidates: the model's top-N items re-ranked.
        item_vectors: (n_items, d) unit-norm item vectors (item features, else the model's item vectors);
            passed in by the caller.
    """

    def __init__(self, trade_off: float = 0.5, n_candidates: int = 100, item_vectors: Tensor | None = None) -> None:
        super().__init__(trade_off, n_candidates)
        self.item_vectors = self.required(item_vectors, "item_vectors (item features or a model's item vectors)",
                                          "MMR")

    def start(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        vectors = self.item_vectors.to(items.device)[items]
        return {"vectors": vectors, "closest": torch.full(items.shape, -torch.inf, device=items.device)}

    def value(self, state: dict[str, Tensor], relevance: Tensor, step: int) -> Tensor:
        penalty = state["closest"] if step else torch.zeros_like(relevance)  # nothing listed yet: no penalty
        return (1 - self.trade_off) * relevance - self.trade_off * penalty

    def update(self, state: dict[str, Tensor], rows: Tensor, picked: Tensor, items: Tensor) -> None:
        vectors = state["vectors"]
        similarity = torch.bmm(vectors, vectors[rows, picked].unsqueeze(2)).squeeze(2)
        state["closest"] = torch.maximum(state["closest"], similarity)
