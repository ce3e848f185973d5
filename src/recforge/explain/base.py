"""What an explanation is, and the plumbing the methods share.

An explainer answers, for one user and the items recommended to them, which *reasons* drive each item's score:
history items (item-item, embedding, graph, sequential and autoencoder models) or features (feature models).
Every method is chosen by what the model is (:func:`recforge.explain.explainer_for`) and named in its output.
Explainers never change the model they explain: what-if scores come from :func:`with_histories`, a shallow copy
that reads other histories, so a served model can be explained while it answers other requests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from recforge.models.base import Recommender, RowInputRecommender, SequentialRecommender

HISTORY_ITEM, FEATURE = "history_item", "feature"  # what a reason id is
SCORE_CHUNK = 1 << 22  # scores (16 MB of float32) a method holds at once when it scores many rows


@dataclass
class Explanations:
    """Why each of one user's recommended ``items`` (``(k,)`` item indices) was recommended, by one ``method``.

    ``reasons[j]`` holds the ids of item ``items[j]``'s strongest reasons, best first, and ``weights[j]`` their
    weights (``(k, n)``, ``n`` at most the number asked for; -1 and 0 pad a row with fewer): history item indices
    when ``reason`` is ``history_item``, variable indices into ``features`` when it is ``feature``. ``candidates``
    are every id the method weighed (the history it read, or the user's and items' non-zero variables): what a
    random baseline removes instead; ``eligible`` (``(k, m)``, feature methods) says which of them apply to each
    item (the user's variables and the item's own non-zero ones), ``None`` all. ``exact``: the weights of all
    candidates (not only the listed ones) plus ``rest`` add up to ``scores``; ``rest`` is the part no candidate
    carries (biases, the user's own vector). ``positions`` (sequential methods) count each reason's place back from
    the latest item (1 = the latest). ``note`` says in a sentence how the weights were computed."""

    method: str
    reason: str
    exact: bool
    note: str
    items: torch.Tensor
    scores: torch.Tensor
    reasons: torch.Tensor
    weights: torch.Tensor
    candidates: torch.Tensor
    rest: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    features: Sequence[str] | None = None
    eligible: torch.Tensor | None = None


class Explainer:
    """Explains one user's recommended items; subclasses set ``method``, ``exact`` and ``note``."""

    method: str
    exact: bool = False
    reason: str = HISTORY_ITEM
    note: str = ""

    def __init__(self, model: Recommender, context: torch.Tensor | None = None) -> None:
        self.model = model
        # (n_users, n_context) each user's query context, for a model that reads context (else unused: None)
        self.context = context.to(model_device(model)) if context is not None and model.reads_context else None

    def in_context(self, row: torch.Tensor) -> "Explainer":
        """A copy of this explainer that explains every user in one ``(n_context,)`` context (a request's time);
        itself for a model that does not read context. What the explainer computed when it was built stays (an
        ``item_similarity`` item space: every model that reads context has item vectors, which no context moves)."""
        if not self.model.reads_context:
            return self
        view = copy.copy(self)
        view.context = row.to(model_device(self.model)).expand(self.model.n_users, -1)
        return view

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """The model's scores of every item for ``users`` (on the model's device), in their query context when the
        model reads context and the explainer was given it (else the model's own default: a zero context)."""
        if self.context is None:
            return self.model.score_all(users)
        return self.model.score_all(users, context=self.context[users])

    def user_scores(self, user: int, items: torch.Tensor) -> torch.Tensor:
        """The model's scores of ``items`` for ``user``."""
        device = model_device(self.model)
        return self.score_all(torch.tensor([user], device=device))[0, items.to(device)]

    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:  # pragma: no cover - abstract
        """At most ``top`` reasons for each of ``items`` (item indices) recommended to ``user`` (a user index)."""
        raise NotImplementedError

    def result(self, items: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor, candidates: torch.Tensor,
               top: int, **extra) -> Explanations:
        """The :class:`Explanations` of ``weights`` (``(k, m)``: each item's weight for each of the ``m``
        ``candidates``), keeping each item's ``top`` heaviest; everything on the CPU."""
        reasons, kept, order = strongest(weights, candidates, top, extra.get("eligible"))
        if extra.get("positions") is not None:
            extra["positions"] = extra["positions"].gather(1, order)
        extra = {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
                 for key, value in extra.items()}
        return Explanations(self.method, self.reason, self.exact, self.note, items.detach().cpu(),
                            scores.detach().float().cpu(), reasons.cpu(), kept.detach().float().cpu(),
                            candidates.detach().cpu(), **extra)


def strongest(weights: torch.Tensor, ids: torch.Tensor, top: int,
              eligible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, weights, columns)`` of each row's ``top`` largest weights (``(k, min(top, m))``), largest first;
    ties go to the earlier column. Where ``eligible`` (``(k, m)``) leaves a row fewer, -1 ids and 0 weights pad."""
    n = min(top, weights.shape[1])
    if n == 0:
        empty = torch.empty(weights.shape[0], 0, dtype=torch.long, device=weights.device)
        return empty, weights[:, :0], empty
    key = weights if eligible is None else weights.masked_fill(~eligible, -torch.inf)
    columns = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :n]
    reasons, kept = ids[columns], weights.gather(1, columns)
    if eligible is not None:
        valid = eligible.gather(1, columns)
        reasons, kept = reasons.masked_fill(~valid, -1), kept.masked_fill(~valid, 0.0)
    return reasons, kept, columns


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's tensors live (its first buffer or parameter; the CPU for an empty module)."""
    for tensor in model.buffers():
        return tensor.device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def shallow_copy(model: Recommender) -> Recommender:
    """A copy of ``model`` that shares its parameters, submodules and buffers but has a buffer table of its own:
    a buffer assigned on the copy (other histories, another graph) leaves the model as it was."""
    view = copy.copy(model)
    view._buffers = dict(model._buffers)
    return view


def with_histories(model: Recommender, indptr: torch.Tensor, items: torch.Tensor) -> Recommender:
    """A :func:`shallow_copy` of a history-reading ``model`` that scores from these histories (CSR over users)."""
    view = shallow_copy(model)
    view.set_histories(indptr, items)
    return view


def csr_row(indptr: torch.Tensor, indices: torch.Tensor, row: int) -> torch.Tensor:
    """The entries of one CSR row (empty for a row past the matrix)."""
    if row + 1 >= len(indptr):
        return indices[:0]
    return indices[int(indptr[row]):int(indptr[row + 1])]


def own_history(model: Recommender, user: int) -> torch.Tensor:
    """The items a history-reading model scores ``user`` from (its own rows or sequence, in stored order)."""
    if isinstance(model, SequentialRecommender):
        return csr_row(model.history_indptr, model.history_items, user)
    if isinstance(model, RowInputRecommender):
        return csr_row(model.history_indptr, model.history_indices, user)
    raise TypeError(f"{type(model).__name__} does not read histories")


class Histories:
    """Users' histories as CSR ``(indptr, items)`` (e.g. every known interaction of a served model), for models
    that do not read histories themselves."""

    def __init__(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        self.indptr, self.items = indptr.long(), items.long()

    @classmethod
    def from_csr(cls, matrix) -> "Histories":
        """From a scipy sparse user x item matrix (a bundle's seen items)."""
        matrix = matrix.tocsr()
        return cls(torch.from_numpy(matrix.indptr.astype("int64")), torch.from_numpy(matrix.indices.astype("int64")))


def history_of(model: Recommender, user: int, histories: Histories | None) -> torch.Tensor:
    """``user``'s distinct history items on the model's device: the model's own when it reads histories (what it
    scores from), else the row of ``histories``."""
    if model.reads_histories or histories is None:
        row = own_history(model, user)
    else:
        row = csr_row(histories.indptr, histories.items, user)
    return torch.unique(row).to(model_device(model))
