"""Feature models (FM, DeepFM): attributions to the model's input variables, exact for FM.

The input of RecForge's FM is ``[one-hot user, one-hot item, user features, item features, context]``. Each side
(user, item) has variables ``j`` with a value ``x_j`` (1 for the id, the feature's value otherwise), a vector ``v_j``
and a first-order weight ``w_j``; the score is ``w0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l``. Variables are
numbered user id, user features, the query's context (on the user's side, for a model that reads it), item id, item
features, and named by :func:`variable_names`. A model that reads context is explained in the context it is given
(the user's query context of the evaluated part, :meth:`RecDataModule.query_context`), else in a zero context.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from recforge.explain.base import FEATURE, Explainer, Explanations, model_device
from recforge.models.deepfm import DeepFM
from recforge.models.fm import FactorizationMachine, FeatureSide, SideTerms


class Variables(NamedTuple):
    """One side's variables for a batch of ids: ``(..., m)`` values, ``(..., m, d)`` vectors, ``(..., m)`` weights;
    variable 0 is the id, then the features, then (the user's side of a model that reads it) the context.
    ``fields``: how many variables each field holds (the id's 1, the features', the context's), as the model
    groups them into field embeddings."""

    values: torch.Tensor
    vectors: torch.Tensor
    weights: torch.Tensor
    fields: tuple[int, ...] = (1,)

    def terms(self, scales: torch.Tensor | None = None) -> SideTerms:
        """The side's :class:`SideTerms` (what :class:`FeatureSide` and :class:`ContextSide` compute) with each value
        multiplied by ``scales`` (``(..., m)``; ``None``: as they are)."""
        values = self.values if scales is None else self.values * scales
        scaled = values.unsqueeze(-1) * self.vectors
        fields = tuple(part.sum(-2) for part in scaled.split(self.fields, dim=-2))
        total = scaled.sum(-2)
        within = 0.5 * (total.pow(2).sum(-1) - scaled.pow(2).sum((-2, -1)))
        return SideTerms(fields, (values * self.weights).sum(-1), within)

    def detached(self) -> "Variables":
        return Variables(self.values.detach(), self.vectors.detach(), self.weights.detach(), self.fields)

    def at(self, index: int) -> "Variables":
        """The variables of one id of the batch."""
        return Variables(self.values[index], self.vectors[index], self.weights[index], self.fields)


def side_variables(side: FeatureSide, ids: torch.Tensor) -> Variables:
    """The variables of ``ids`` on one side."""
    values = torch.ones(*ids.shape, 1, device=ids.device)
    vectors = side.embedding(ids).unsqueeze(-2)
    weights = side.bias(ids)
    if not side.has_features:
        return Variables(values, vectors, weights)
    values = torch.cat([values, side.features[ids]], -1)
    vectors = torch.cat([vectors, side.feature_embedding.expand(*ids.shape, -1, -1)], -2)
    weights = torch.cat([weights, side.feature_bias.expand(*ids.shape, -1)], -1)
    return Variables(values, vectors, weights, (1, side.features.shape[1]))


def user_variables(fm: FactorizationMachine, user: torch.Tensor, context: torch.Tensor | None = None) -> Variables:
    """One user's variables (``user`` a 0-d id tensor): the id and features, and, when ``fm`` reads context, the
    ``(n_context,)`` ``context`` row's variables (zeros without one), as :class:`ContextSide` joins them."""
    own = side_variables(fm.user_side, user)
    side = fm.context_side
    if side is None:
        return own
    values = context.to(own.values) if context is not None else own.values.new_zeros(side.n_context)
    return Variables(torch.cat([own.values, values]), torch.cat([own.vectors, side.embedding]),
                     torch.cat([own.weights, side.bias]), own.fields + (side.n_context,))


def variable_names(model: FactorizationMachine, user_features: Sequence[str] | None = None,
                   item_features: Sequence[str] | None = None, context: Sequence[str] | None = None) -> list[str]:
    """Names of the variables in order: ``user_id``, the user features, the context (for a model that reads it),
    ``item_id``, the item features (given names, else ``user_feature[3]``, ``context[0]`` style)."""
    names = []
    n_context = model.context_side.n_context if model.context_side is not None else 0
    for side, given, prefix in ((model.user_side, user_features, "user"), (model.item_side, item_features, "item")):
        width = side.features.shape[1] if side.has_features else 0
        if given is not None and len(given) != width:
            raise ValueError(f"{len(given)} {prefix} feature names for {width} {prefix} features")
        names += [f"{prefix}_id", *(given if given is not None else [f"{prefix}_feature[{f}]" for f in range(width)])]
        if prefix == "user" and n_context:
            if context is not None and len(context) != n_context:
                raise ValueError(f"{len(context)} context names for {n_context} context columns")
            names += list(context) if context is not None else [f"context[{c}]" for c in range(n_context)]
    return names


def fm_of(model: FactorizationMachine | DeepFM) -> FactorizationMachine:
    return model.fm if isinstance(model, DeepFM) else model


def logits_of(model: FactorizationMachine | DeepFM, user: SideTerms, item: SideTerms) -> torch.Tensor:
    """The model's logits of (broadcastable) user and item terms: FM's, plus DeepFM's deep part."""
    fm = fm_of(model).combine(user, item)
    return fm + model.deep(user, item) if isinstance(model, DeepFM) else fm


class FeatureExplainer(Explainer):
    """Shared by the feature methods: the user's and the items' variables, the non-zero ones as candidates."""

    reason = FEATURE

    def __init__(self, model: FactorizationMachine | DeepFM, names: Sequence[str] | None = None,
                 context: torch.Tensor | None = None) -> None:
        super().__init__(model, context)
        self.fm = fm_of(model)
        self.features = list(names) if names is not None else variable_names(self.fm)

    def variables(self, user: int, items: torch.Tensor) -> tuple[Variables, Variables]:
        """``(user's, items')`` variables: the user's ``(m_u,)`` (its context's among them), the items' ``(k, m_i)``."""
        context = self.context[user] if self.context is not None else None
        return (user_variables(self.fm, torch.tensor(user, device=items.device), context),
                side_variables(self.fm.item_side, items))

    def scores(self, user: int, items: torch.Tensor) -> torch.Tensor:
        """The model's scores of ``items`` for ``user`` (in its context)."""
        users = torch.full_like(items, user)
        if self.context is None:
            return self.model(users, items)
        return self.model(users, items, context=self.context[users])

    def finish(self, items: torch.Tensor, scores: torch.Tensor, attributions: torch.Tensor, values: torch.Tensor,
               top: int, rest: torch.Tensor) -> Explanations:
        """The variables non-zero for the user or any of the items are the candidates; each item's own (and the
        user's) are eligible for it."""
        nonzero = values != 0
        active = nonzero.any(0).nonzero()[:, 0]
        return self.result(items, scores, attributions[:, active], active, top, rest=rest, features=self.features,
                           eligible=nonzero[:, active])


class FMTerms(FeatureExplainer):
    """Exact: variable ``j`` gets its first-order term ``w_j x_j`` and half of each pairwise term
    ``<v_j, v_l> x_j x_l`` it is part of (the Shapley value of a product of two players), so the attributions of
    all variables add up to the score minus the global bias ``w0`` (``rest``)."""

    method = "fm_terms"
    exact = True
    note = "each variable's first-order term plus half of every pairwise FM term it is part of"

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        items = items.to(model_device(self.model))
        user_vars, item_vars = self.variables(user, items)
        values = torch.cat([user_vars.values.expand(len(items), -1), item_vars.values], 1)  # (k, m)
        vectors = torch.cat([user_vars.vectors.expand(len(items), -1, -1), item_vars.vectors], 1)
        weights = torch.cat([user_vars.weights.expand(len(items), -1), item_vars.weights], 1)
        scaled = values.unsqueeze(-1) * vectors
        others = scaled.sum(1, keepdim=True) - scaled
        attributions = values * weights + 0.5 * (scaled * others).sum(-1)
        scores = self.scores(user, items)
        return self.finish(items, scores, attributions, values, top, self.fm.global_bias.expand(len(items)))


class IntegratedGradients(FeatureExplainer):
    """Integrated gradients (Sundararajan, Taly and Yan. 2017. ICML) of the logit along the straight path from
    all variables at 0 to their values, ``steps`` midpoints: attributions add up to the score minus the score of
    the all-zero input (``rest``), up to the integration error. For DeepFM, whose deep part is not a sum of terms."""

    method = "integrated_gradients"
    exact = False

    def __init__(self, model: DeepFM, names: Sequence[str] | None = None, steps: int = 32,
                 context: torch.Tensor | None = None) -> None:
        super().__init__(model, names, context)
        self.steps = steps
        self.note = f"integrated gradients of the logit from all variables at zero ({steps} steps)"

    def logits(self, user_vars: Variables, item_vars: Variables, user_scales: torch.Tensor,
               item_scales: torch.Tensor) -> torch.Tensor:
        """The logits with the variables' values scaled (user scales broadcast against the items')."""
        return logits_of(self.model, user_vars.terms(user_scales), item_vars.terms(item_scales))

    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        items = items.to(model_device(self.model))
        user_vars, item_vars = self.variables(user, items)
        user_vars, item_vars = user_vars.detached(), item_vars.detached()
        k, m_user, m_item = len(items), user_vars.values.shape[-1], item_vars.values.shape[-1]
        alphas = (torch.arange(self.steps, device=items.device) + 0.5) / self.steps
        with torch.enable_grad():
            user_scales = alphas.view(-1, 1, 1).expand(-1, k, m_user).clone().requires_grad_()
            item_scales = alphas.view(-1, 1, 1).expand(-1, k, m_item).clone().requires_grad_()
            expanded = item_vars._replace(**{name: getattr(item_vars, name).unsqueeze(0)
                                             for name in ("values", "vectors", "weights")})
            path = self.logits(user_vars, expanded, user_scales, item_scales)  # (steps, k)
            user_grad, item_grad = torch.autograd.grad(path.sum(), (user_scales, item_scales))
        attributions = torch.cat([user_grad.mean(0), item_grad.mean(0)], 1)
        with torch.no_grad():
            ones = lambda n: torch.ones(k, n, device=items.device)  # noqa: E731
            scores = self.logits(user_vars, item_vars, ones(m_user), ones(m_item))
            rest = self.logits(user_vars, item_vars, 0 * ones(m_user), 0 * ones(m_item))
        values = torch.cat([user_vars.values.expand(k, -1), item_vars.values], 1)
        return self.finish(items, scores, attributions, values, top, rest)
