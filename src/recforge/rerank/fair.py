"""FA*IR (Zehlike et al., "FA*IR: A Fair Top-k Ranking Algorithm", CIKM 2017) with long-tail items as the
protected group: every prefix of the list holds at least the number of tail items a fair binomial draw would."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recforge.rerank.base import Reranker


def minimum_protected(length: int, p: float, alpha: float) -> list[int]:
    """FA*IR's table ``m(i)`` for prefixes ``i = 1..length``: the alpha-quantile of Binomial(i, p), the smallest m
    with ``P(X <= m) >= alpha`` (``scipy.stats.binom.ppf(alpha, i, p)``). Not adjusted for the multiple tests of
    the prefixes (the paper's ``alpha_c``), so the guarantee is per prefix."""
    table = []
    for i in range(1, length + 1):
        m, cdf = 0, 0.0
        while m < i:
            cdf += math.comb(i, m) * p**m * (1 - p) ** (i - m)
            if cdf >= alpha - 1e-12:
                break
            m += 1
        table.append(m)
    return table


class FairTopK(Reranker):
    """Position by position: while the list holds fewer tail items than ``m(position)``, the best remaining tail
    candidate is taken, else the best candidate of any group (by the model's order).

    Args:
        trade_off: p, the minimum target share of protected (tail) items; 0 keeps the model's list.
        n_candidates: the model's top-N items re-ranked (tail items beyond them cannot be listed).
        alpha: the significance of the per-prefix binomial test.
        protected: (n_items,) bool, the long-tail items; from the caller.
    """

    def __init__(self, trade_off: float = 0.2, n_candidates: int = 100, alpha: float = 0.1,
                 protected: Tensor | None = None) -> None:
        super().__init__(trade_off, n_candidates)
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.protected = self.required(protected, "protected (the long-tail items)", "FairTopK").bool()
        self._table: list[int] = []

    def start(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        return {"protected": self.protected.to(items.device)[items],
                "count": torch.zeros(items.shape[0], dtype=torch.long, device=items.device)}

    def value(self, state: dict[str, Tensor], relevance: Tensor, step: int) -> Tensor:
        if len(self._table) <= step:
            self._table = minimum_protected(2 * (step + 1), self.trade_off, self.alpha)
        behind = state["count"] < self._table[step]
        return relevance + 2.0 * (behind.unsqueeze(1) & state["protected"])  # relevance <= 1 < the bonus

    def update(self, state: dict[str, Tensor], rows: Tensor, picked: Tensor, items: Tensor) -> None:
        state["count"] += state["protected"][rows, picked].long()
