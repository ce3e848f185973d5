"""Why each item was recommended: one explanation method per model family, chosen by :func:`explainer_for`.

==========================================================  =========================  ======================
model                                                       method                     reasons
==========================================================  =========================  ======================
linear item-item (ItemKNN, EASE, SLIM, RP3beta)             ``item_weights`` (exact)   history items
LightGCN                                                    ``graph_paths`` (exact)    history items
iALS                                                        ``ials_history_weights``   history items
FM                                                          ``fm_terms`` (exact)       features
DeepFM                                                      ``integrated_gradients``   features
transformers (SASRec, BERT4Rec)                             ``attention_rollout``      history positions
other sequential models (GRU4Rec, Caser)                    ``sequence_occlusion``     history positions
autoencoders (Mult-VAE/DAE, CDAE, U-AutoRec, RecVAE)        ``row_occlusion``          history items
anything else (MF, BPR, GMF, NeuMF, NGCF, SimpleX, ...)     ``item_similarity``        history items
Popularity                                                  none (not personalised)
==========================================================  =========================  ======================

``docs/explanations.md`` describes each method, the output and the measured faithfulness.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from recforge.explain.attention import AttentionRollout, has_attention
from recforge.explain.base import FEATURE, Explainer, Explanations, Histories
from recforge.explain.features import FMTerms, IntegratedGradients
from recforge.explain.graph import GraphPaths
from recforge.explain.ials import IALSHistoryWeights
from recforge.explain.item_weights import ItemWeights
from recforge.explain.occlusion import RowOcclusion, SequenceOcclusion
from recforge.explain.similarity import ItemSimilarity
from recforge.models.base import Recommender, RowInputRecommender, SequentialRecommender
from recforge.models.deepfm import DeepFM
from recforge.models.ease import HistoryRecommender
from recforge.models.fm import FactorizationMachine
from recforge.models.ials import IALS
from recforge.models.lightgcn import LightGCN
from recforge.models.pop import Popularity

__all__ = ["FEATURE", "Explainer", "Explanations", "Histories", "NotPersonal", "at_time", "bundle_explainer",
           "explainer_for", "records"]


class NotPersonal(Explainer):
    """A model whose scores do not depend on the user (Popularity): no reasons, and it says so."""

    method = "none"
    note = "not personalised: every user gets the items with the most training interactions"

    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        empty = torch.zeros(len(items), 0)
        scores = self.model.score_all(torch.tensor([user]))[0, items]
        return self.result(items, scores, empty, torch.zeros(0, dtype=torch.long), top)


def explainer_for(model: Recommender, histories: Histories | None = None, n_users: int | None = None,
                  feature_names: Sequence[str] | None = None, context: torch.Tensor | None = None) -> Explainer:
    """The explainer that fits ``model``, by what the model is (its family, not its name), so that a model that
    subclasses one of these families is covered too.

    ``histories``: users' interactions (CSR) for models that do not read histories themselves (embedding models,
    iALS); ``n_users``: how many users to score when a model without item vectors is described by its score
    columns (default: the model's ``n_users``); ``feature_names``: names of an FM's variables
    (:func:`recforge.explain.features.variable_names`); ``context``: each user's ``(n_users, n_context)`` query
    context (:meth:`recforge.data.datamodule.RecDataModule.query_context`) for a model that reads context, whose
    scores and reasons are then those of that context (without it: a zero context, no time the model trained on)."""
    model.eval()
    if isinstance(model, Popularity):
        return NotPersonal(model)
    if isinstance(model, HistoryRecommender):
        return ItemWeights(model)
    if isinstance(model, LightGCN):
        return GraphPaths(model)
    if isinstance(model, DeepFM):
        return IntegratedGradients(model, feature_names, context=context)
    if isinstance(model, FactorizationMachine):
        return FMTerms(model, feature_names, context)
    if isinstance(model, SequentialRecommender):
        return AttentionRollout(model) if has_attention(model) else SequenceOcclusion(model)
    if histories is None and not model.reads_histories:
        raise ValueError(f"{type(model).__name__} does not read histories: give the users' histories")
    if isinstance(model, IALS):
        return IALSHistoryWeights(model, histories)
    if isinstance(model, RowInputRecommender) and model.item_vectors() is None and model.train_view != "items":
        return RowOcclusion(model)
    return ItemSimilarity(model, histories, n_users if n_users is not None else model.n_users, context)


def bundle_explainer(bundle, at: float | None = None) -> Explainer:
    """The explainer of a model bundle (``recforge.tracking.bundle.Bundle``, as served): histories from its seen
    items; for a model that reads context, in the context of ``at`` (Unix seconds; None: none bound, for a caller
    that binds each request's with :meth:`Explainer.in_context`), FM's and DeepFM's context variables named by the
    bundle's declaration (``hour=9``, ``weekday=Mon``; the bundle keeps no feature names: ``user_feature[3]``)."""
    from recforge.data.context import context_names
    from recforge.explain.features import fm_of, variable_names

    model, names = bundle.model, None
    if bundle.reads_context and isinstance(model, (FactorizationMachine, DeepFM)):
        names = variable_names(fm_of(model), context=context_names(bundle.context))
    explainer = explainer_for(model, Histories.from_csr(bundle.seen), len(bundle.user_ids), names)
    return explainer if at is None else at_time(explainer, bundle, at)


def at_time(explainer: Explainer, bundle, at: float | None) -> Explainer:
    """``explainer`` (of ``bundle``'s model) bound to the context of a query made at ``at`` (Unix seconds; None:
    now), as the bundle scores one; itself for a model that does not read context."""
    if not bundle.reads_context:
        return explainer
    return explainer.in_context(bundle.query_context(1, at)["context"][0])


def _number(value: float) -> float:
    """A JSON-safe weight: 6 decimals, no -0.0, 0 for a non-finite value."""
    return round(float(value), 6) + 0.0 if np.isfinite(value) else 0.0


def records(explanations: Explanations, item_ids: Sequence[Any]) -> dict[str, Any]:
    """The JSON form of one user's explanations with raw ids: ``{method, exact, note, items: [{item, reasons:
    [{item | feature, weight, position?}], rest?}]}``, as ``POST /recommend`` answers with ``"explain": true``."""
    out = []
    for j, item in enumerate(explanations.items.tolist()):
        reasons = []
        for n, (reason, weight) in enumerate(zip(explanations.reasons[j].tolist(), explanations.weights[j].tolist())):
            if reason < 0:  # padding: this item has fewer reasons
                continue
            entry = ({"feature": explanations.features[reason]} if explanations.reason == FEATURE
                     else {"item": item_ids[reason]})
            entry["weight"] = _number(weight)
            if explanations.positions is not None:
                entry["position"] = int(explanations.positions[j, n])
            reasons.append(entry)
        entry = {"item": item_ids[item], "reasons": reasons}
        if explanations.rest is not None:
            entry["rest"] = _number(explanations.rest[j])
        out.append(entry)
    note = explanations.note if len(explanations.candidates) else \
        "no reasons: the model reads no history (or no non-zero feature) of this user"
    return {"method": explanations.method, "exact": explanations.exact, "note": note, "items": out}
