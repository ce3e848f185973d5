"""What-if scores: a user's scores with some of their history items (or, for feature models, variables)
removed, by the model's own computation where it has one. They measure how faithful explanations are
(:mod:`recforge.explain.faithfulness`): removing an item's top reasons should lower it more than removing
random ones.

==========================================  =======================  ==============================================
model                                       counterfactual           how
==========================================  =======================  ==============================================
reads histories (item-item, sequential,     ``history_removal``      the model scores the shortened history (exact)
autoencoders, SimpleX)
graph models (LightGCN, NGCF)               ``edge_removal``         the graph without the user's edges to the
                                                                     items, propagated again (exact, no retraining)
iALS                                        ``ials_fold_in``         iALS's own user update on the shortened
                                                                     history (exact)
FM, DeepFM                                  ``feature_removal``      the variables set to zero (exact)
other embedding models (MF, BPR, NeuMF)     ``least_squares_fold_in``  a surrogate: the user vector re-fitted to the
                                                                     shortened history by iALS's least squares over
                                                                     the model's item space, the items fixed
==========================================  =======================  ==============================================
"""

from __future__ import annotations

import torch

from recforge.explain.base import Histories, history_of, model_device, shallow_copy, with_histories
from recforge.explain.features import fm_of, logits_of, side_variables, user_variables
from recforge.explain.ials import user_system
from recforge.explain.similarity import item_space
from recforge.models.base import Recommender, SequentialRecommender
from recforge.models.deepfm import DeepFM
from recforge.models.fm import FactorizationMachine, SideTerms
from recforge.models.ials import IALS
from recforge.models.lightgcn import GraphRecommender, normalized_adjacency
from recforge.utils.sparse import to_csr


class Counterfactual:
    """``scores(user, item, removed)``: the user's scores of every item with ``removed`` taken away (history item
    indices, or variable indices for feature models, where only ``item``'s own variables change)."""

    name: str
    exact: bool = True

    def __init__(self, model: Recommender) -> None:
        self.model = model

    def scores(self, user: int, item: int, removed: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class HistoryRemoval(Counterfactual):
    """For models that read histories: the user's own history (rows or sequence) without the removed items."""

    name = "history_removal"

    def __init__(self, model: Recommender) -> None:
        super().__init__(model)
        self.indptr = model.history_indptr
        self.entries = model.history_items if isinstance(model, SequentialRecommender) else model.history_indices

    @torch.no_grad()
    def scores(self, user: int, item: int, removed: torch.Tensor) -> torch.Tensor:
        start, stop = int(self.indptr[user]), int(self.indptr[user + 1])
        row = self.entries[start:stop]
        kept = row[~torch.isin(row, removed.to(row.device))]
        indptr = self.indptr.clone()
        indptr[user + 1:] -= len(row) - len(kept)
        entries = torch.cat([self.entries[:start], kept, self.entries[stop:]])
        view = with_histories(self.model, indptr, entries)
        return view.score_all(torch.tensor([user], device=indptr.device))[0]


class EdgeRemoval(Counterfactual):
    """For graph models: the normalised adjacency rebuilt without the user's edges to the removed items and the
    embeddings propagated through it (the model's weights as they are, not retrained)."""

    name = "edge_removal"

    def __init__(self, model: GraphRecommender) -> None:
        super().__init__(model)
        adjacency = model.adjacency
        rows = torch.repeat_interleave(torch.arange(adjacency.shape[0], device=adjacency.device),
                                       torch.diff(adjacency.crow_indices()))
        users = rows < model.n_users
        self.pairs = torch.stack([rows[users], adjacency.col_indices()[users] - model.n_users]).cpu()

    @torch.no_grad()
    def scores(self, user: int, item: int, removed: torch.Tensor) -> torch.Tensor:
        model = self.model
        cut = (self.pairs[0] == user) & torch.isin(self.pairs[1], removed.cpu())
        adjacency = to_csr(normalized_adjacency(self.pairs[:, ~cut], model.n_users, model.n_items))
        view = shallow_copy(model)
        view.adjacency = adjacency.to(model.adjacency.device)
        users, items = view.propagate()
        return items @ users[user]


class FoldIn(Counterfactual):
    """The user vector solved from the shortened history with iALS's update ``A_u x = b_u`` over item vectors
    ``y``, scores ``y x``. For iALS it is the model's own update (exact); for other embedding models a surrogate
    (``exact`` false) over their item space, whose base ranking may differ from the model's."""

    @torch.no_grad()
    def __init__(self, model: Recommender, histories: Histories, vectors: torch.Tensor, alpha: float, reg: float,
                 name: str, exact: bool) -> None:
        super().__init__(model)
        self.histories, self.vectors, self.alpha, self.reg = histories, vectors, alpha, reg
        self.gram = vectors.T @ vectors
        self.name, self.exact = name, exact

    @torch.no_grad()
    def scores(self, user: int, item: int, removed: torch.Tensor) -> torch.Tensor:
        history = history_of(self.model, user, self.histories).to(self.vectors.device)
        history = history[~torch.isin(history, removed.to(history.device))]
        matrix, target = user_system(self.vectors, self.gram, history, self.alpha, self.reg)
        return self.vectors @ torch.cholesky_solve(target.unsqueeze(1), torch.linalg.cholesky(matrix))[:, 0]  # SPD


class FeatureRemoval(Counterfactual):
    """For FM and DeepFM: the removed variables set to zero (user variables for every item, item variables for
    ``item`` only)."""

    name = "feature_removal"

    @torch.no_grad()
    def __init__(self, model: FactorizationMachine | DeepFM, context: torch.Tensor | None = None) -> None:
        super().__init__(model)
        self.fm = fm_of(model)
        self.context = context if self.fm.context_side is not None else None   # (n_users, n_context) or None
        self.n_user_variables = len(user_variables(self.fm, torch.tensor(0, device=model_device(model))).values)
        self.items = side_variables(self.fm.item_side, torch.arange(self.fm.n_items, device=model_device(model)))
        self.item_terms = self.items.terms()  # every item as it is; a call changes one item's

    @torch.no_grad()
    def scores(self, user: int, item: int, removed: torch.Tensor) -> torch.Tensor:
        removed = removed.to(self.items.values.device)
        context = self.context[user] if self.context is not None else None
        user_vars = user_variables(self.fm, torch.tensor(user, device=removed.device), context)
        user_scales = torch.ones_like(user_vars.values)
        user_scales[removed[removed < self.n_user_variables]] = 0
        items = self.item_terms
        own = removed[removed >= self.n_user_variables] - self.n_user_variables
        if item >= 0 and len(own):
            scales = torch.ones_like(self.items.values[item])
            scales[own] = 0
            changed = self.items.at(item).terms(scales)
            at = (torch.tensor([item], device=removed.device),)
            items = SideTerms(tuple(f.index_put(at, g.unsqueeze(0)) for f, g in zip(items.fields, changed.fields)),
                              items.linear.index_put(at, changed.linear.view(1)),
                              items.within.index_put(at, changed.within.view(1)))
        return logits_of(self.model, user_vars.terms(user_scales), items)


# the surrogate fold-in's confidence and ridge (relative to the item vectors' mean squared norm)
SURROGATE_ALPHA, SURROGATE_REG = 10.0, 100.0


def counterfactual_for(model: Recommender, histories: Histories | None = None,
                       n_users: int | None = None, context: torch.Tensor | None = None) -> Counterfactual:
    """The counterfactual that fits ``model`` (see the module's table); ``context``: the users' query context of
    an FM or DeepFM that reads context (:func:`recforge.explain.explainer_for`'s)."""
    model.eval()
    if isinstance(model, (FactorizationMachine, DeepFM)):
        return FeatureRemoval(model, context)
    if model.reads_histories:
        return HistoryRemoval(model)
    if isinstance(model, GraphRecommender):
        return EdgeRemoval(model)
    if histories is None:
        raise ValueError(f"{type(model).__name__} does not read histories: give the users' histories")
    if isinstance(model, IALS):
        return FoldIn(model, histories, model.item_factors, model.alpha, model.reg, "ials_fold_in", True)
    with torch.no_grad():
        vectors = model.item_vectors()
        vectors = item_space(model, n_users or model.n_users)[1] if vectors is None else vectors.detach().float()
    reg = SURROGATE_REG * float(vectors.pow(2).sum(1).mean())
    return FoldIn(model, histories, vectors, SURROGATE_ALPHA, reg, "least_squares_fold_in", False)

