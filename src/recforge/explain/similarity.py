"""Embedding models (MF, BPR, GMF, NeuMF, UltraGCN, SimpleX, NGCF, two-tower ...): the user's history items most
similar to the recommended one in the model's own item space."""

from __future__ import annotations

from typing import Callable

import torch

from recforge.explain.base import SCORE_CHUNK, Explainer, Explanations, Histories, history_of, model_device
from recforge.models.base import Recommender


@torch.no_grad()
def item_space(model: Recommender, n_users: int,
               score_all: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[str, torch.Tensor]:
    """``(source, vectors)``: L2-normalised ``(n_items, d)`` item vectors, the model's ``item_vectors()``
    (``source`` "item_vectors") or, for a model without them, each item's column of the full user x item score
    matrix (``source`` "score_columns": the item as its scores over all ``n_users`` users, by ``score_all``,
    default the model's: an explainer's scores each user in its query context)."""
    raw = model.item_vectors()
    source = "item_vectors"
    if raw is None:
        source = "score_columns"
        step = max(1, SCORE_CHUNK // max(model.n_items, 1))
        users = torch.arange(n_users, device=model_device(model))
        score_all = score_all or model.score_all
        raw = torch.cat([score_all(chunk).float() for chunk in users.split(step)]).T
    raw = torch.nan_to_num(raw.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return source, torch.nn.functional.normalize(raw, dim=1)


class ItemSimilarity(Explainer):
    """Cosine similarity between the recommended item and each history item in the model's item space
    (:func:`item_space`). Not a decomposition of the score: an embedding model's score is not a sum over the
    history (the user vector was learnt from it), so the weights are similarities, not shares."""

    method = "item_similarity"

    def __init__(self, model: Recommender, histories: Histories, n_users: int,
                 context: torch.Tensor | None = None) -> None:
        super().__init__(model, context)
        self.histories = histories
        self.space, self.vectors = item_space(model, n_users, self.score_all)
        self.note = ("cosine similarity of the history item to the recommended one in the model's item vectors"
                     if self.space == "item_vectors" else
                     "cosine similarity of the history item to the recommended one over their score columns (each "
                     "item's scores for all users: the model has no item vectors)")

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        history = history_of(self.model, user, self.histories).to(self.vectors.device)
        items = items.to(self.vectors.device)
        weights = self.vectors[items] @ self.vectors[history].T
        return self.result(items, self.user_scores(user, items), weights, history, top)
