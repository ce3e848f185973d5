"""Exact explanations of linear item-item models (ItemKNN, EASE, SLIM, RP3beta: ``score(u, i) = sum_{h in H_u}
W[h, i]``): each history item's weight is its term ``W[h, i]`` of the score."""

from __future__ import annotations

import torch

from recforge.explain.base import SCORE_CHUNK, Explainer, Explanations, history_of, with_histories
from recforge.models.ease import EASE


class ItemWeights(Explainer):
    """``W[h, i]`` for the user's history items ``h``, read through the model's own scoring: ``W[h]`` is the score
    row of a history that holds ``h`` alone (:meth:`HistoryRecommender.score_all` is ``X_u W``), so the method
    needs no access to how a model keeps ``W`` (neighbour lists, ...) and covers every subclass; EASE's dense ``W``
    is read directly (its scoring would multiply each one-hot row by the whole matrix). The weights of all history
    items add up to the score (``rest`` is 0 up to rounding)."""

    method = "item_weights"
    exact = True
    note = "each history item's term W[h, i] of the score sum_h W[h, i]"

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        history = history_of(self.model, user, None)
        items = items.to(history.device)
        scores = self.user_scores(user, items)
        weights = self.terms(history, items).T.to(scores.dtype)
        return self.result(items, scores, weights, history, top, rest=scores - weights.sum(1))

    def terms(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``W[history][:, items]``: EASE's dense weights directly, other models through their scoring."""
        if isinstance(self.model, EASE):
            return self.model.weights[history][:, items]
        singles = with_histories(self.model, torch.arange(len(history) + 1, device=history.device), history)
        step = max(1, SCORE_CHUNK // max(self.model.n_items, 1))
        rows = torch.arange(len(history), device=history.device)
        return torch.cat([singles.score_all(chunk)[:, items] for chunk in rows.split(step)]) if len(history) \
            else torch.zeros(0, len(items), device=history.device)
