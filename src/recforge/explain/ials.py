"""iALS: the exact history decomposition of Hu, Koren and Volinsky (2008, Section 5, "Explaining
recommendations").

The user vector iALS solves from a history ``H`` is ``x_u = W_u (1 + alpha) sum_{h in H} y_h`` with
``W_u = (Y^T Y + alpha sum_{h in H} y_h y_h^T + reg I)^-1``, so ``y_i . x_u = sum_h (1 + alpha) y_i^T W_u y_h``: a
sum over the history, each term the similarity of ``i`` and ``h`` under the user's own metric ``W_u``."""

from __future__ import annotations

import torch

from recforge.explain.base import Explainer, Explanations, Histories, history_of
from recforge.models.ials import IALS


def user_system(y: torch.Tensor, gram: torch.Tensor, history: torch.Tensor, alpha: float,
                reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_u, b_u)`` of iALS's user update ``A_u x_u = b_u`` for this history, given item factors ``y`` and their
    ``gram = Y^T Y``: ``A_u = Y^T Y + alpha sum_h y_h y_h^T + reg I``, ``b_u = (1 + alpha) sum_h y_h``."""
    observed = y[history]
    matrix = gram + alpha * observed.T @ observed
    matrix.diagonal().add_(reg)
    return matrix, (1 + alpha) * observed.sum(0)


class IALSHistoryWeights(Explainer):
    """Each history item's term ``(1 + alpha) y_i^T W_u y_h`` of the score of the user vector iALS solves from the
    history. The terms add up to that solve's score; ``rest`` is the stored user vector's score minus it (the
    last sweep updated the items after the users, and the history given may hold items newer than training)."""

    method = "ials_history_weights"
    exact = True
    note = "each history item's term (1 + alpha) y_i^T W_u y_h of the score iALS solves from the history " \
           "(Hu et al. 2008)"

    @torch.no_grad()
    def __init__(self, model: IALS, histories: Histories) -> None:
        super().__init__(model)
        self.histories = histories
        self.gram = model.item_factors.T @ model.item_factors

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        history = history_of(self.model, user, self.histories)
        items = items.to(history.device)
        y = self.model.item_factors
        matrix, _ = user_system(y, self.gram, history, self.model.alpha, self.model.reg)
        weights = (1 + self.model.alpha) * y[items] @ torch.linalg.solve(matrix, y[history].T)
        scores = self.user_scores(user, items)
        return self.result(items, scores, weights, history, top, rest=scores - weights.sum(1))
