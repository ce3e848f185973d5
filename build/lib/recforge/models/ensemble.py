"""A fused ensemble of trained recommenders, servable like any single model.

Score and rank fusion of the members' full rankings (:mod:`recforge.models.fusion`; reciprocal rank fusion:
Cormack, Clarke & Buettcher, "Reciprocal Rank Fusion outperforms Condorcet and individual Rank Learning
Methods", SIGIR 2009). Built and tuned by ``recforge-ensemble``; its weights are found on validation data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recforge.models.base import Recommender, WholeRowRecommender
from recforge.models.fusion import check_method, fuse, normalize_weights, transform
from recforge.utils.sparse import csr_indices, dense_rows
from recforge.utils.trust import import_trusted


def build_member(target: str, kwargs: dict[str, Any]) -> Recommender:
    """A member from its stored class path (checked against the allow-list first) and arguments."""
    return import_trusted(target, "ensemble member")(**kwargs)


class EnsembleRecommender(WholeRowRecommender):
    """``score_all``: each member scores every item, items in ``exclude`` are removed, each member's row is
    transformed (normalised scores, reciprocal ranks, Borda points or votes) and the rows are summed with
    ``weights``. Excluded items score ``-inf`` (an ensemble never recommends them, whatever the caller asks).

    Args:
        members: ``[{"target": import path, "kwargs": constructor arguments}, ...]``; their weights are this
            module's ``members.<i>.*`` state.
        weights: one non-negative weight per member.
        method, normalization, rrf_k, vote_depth: see :func:`recforge.models.fusion.transform`.
        n_items: the shared item space.
        exclude: optional (2, nnz) user/item index pairs never recommended (the data a serving model has seen).
    """

    requires_training = False
    feedbacks = ("implicit",)

    def __init__(self, members: list[dict[str, Any]], weights: list[float], n_items: int, method: str = "score",
                 normalization: str = "minmax", rrf_k: float = 60.0, vote_depth: int = 50,
                 exclude: torch.Tensor | None = None) -> None:
        super().__init__()
        check_method(method, normalization)
        if len(weights) != len(members):
            raise ValueError(f"need one weight per member: {len(members)} members, {len(weights)} weights")
        self.members = nn.ModuleList(build_member(m["target"], m["kwargs"]) for m in members)
        self.weights = normalize_weights(weights)
        self.n_items, self.method, self.normalization = n_items, method, normalization
        self.rrf_k, self.vote_depth = float(rrf_k), int(vote_depth)
        if exclude is None:
            exclude = torch.zeros(2, 0, dtype=torch.long)
        indptr, indices = csr_indices(exclude[0], exclude[1], int(exclude[0].max()) + 1 if exclude.numel() else 0,
                                      n_items)
        self.register_buffer("exclude_indptr", indptr, persistent=False)
        self.register_buffer("exclude_items", indices, persistent=False)

    def excluded(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) bool: the items each user must not be recommended."""
        return dense_rows(self.exclude_indptr, self.exclude_items, users, self.n_items, torch.bool)

    def member_scores(self, users: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        """(M, B, n_items) transformed member scores, with ``excluded`` items taking no part."""
        out = []
        for member in self.members:
            scores = member.score_all(users).float().masked_fill(excluded, float("-inf"))
            out.append(transform(scores, self.method, self.normalization, self.rrf_k, self.vote_depth))
        return torch.stack(out)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        excluded = self.excluded(users)
        return fuse(self.member_scores(users, excluded), self.weights, excluded)
