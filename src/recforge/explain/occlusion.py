"""Occlusion: a history item's weight is how much the recommended item's score falls when the model scores the
user without it. For recurrent and convolutional sequential models (GRU4Rec, Caser) and for autoencoders
(Mult-VAE/DAE, CDAE, U-AutoRec, RecVAE), whose scores are not sums over the history."""

from __future__ import annotations

import torch

from recforge.explain.base import SCORE_CHUNK, Explainer, Explanations, model_device
from recforge.models.base import RowInputRecommender, SequentialRecommender


class SequenceOcclusion(Explainer):
    """Each item among the ``context_length`` latest is deleted from the sequence in turn (the earlier items move
    up, so the model reads a window as long as before) and the model scores the shortened sequence; the weight is
    the score lost. One batch of ``context_length + 1`` sequences per user."""

    method = "sequence_occlusion"
    note = "the score lost when the model reads the sequence without this item (deleted; earlier items move up)"

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        model: SequentialRecommender = self.model
        device = model_device(model)
        items = items.to(device)
        length = model.context_length
        recent = model.recent_items(torch.tensor([user], device=device), length + 1)[0]
        latest = recent[1:]
        place = torch.arange(length, device=device)
        # row p: the window without latest[p], i.e. recent[j + (j > p)] for the window's places j
        deleted = recent[place + (place.unsqueeze(0) > place.unsqueeze(1))]
        real = latest != model.padding_idx
        inputs = torch.cat([latest.unsqueeze(0), deleted[real]])
        hidden = model.encode(inputs, torch.full((len(inputs),), user, device=device))[:, -1]
        logits = model.item_logits(hidden, items.expand(len(inputs), -1))
        weights = (logits[0] - logits[1:]).T
        positions = (length - place)[real]  # 1 = the latest item
        return self.result(items, logits[0], weights, latest[real], top,
                           positions=positions.expand(len(items), -1))


class RowOcclusion(Explainer):
    """Each history item is removed from the user's row in turn and the autoencoder reconstructs the row without
    it; the weight is the recommended item's score lost. Rows are reconstructed in batches (``reconstruct``, the
    autoencoders' own interface)."""

    method = "row_occlusion"
    note = "the score lost when the autoencoder reads the user's row without this item"

    @torch.no_grad()
    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        model: RowInputRecommender = self.model
        device = model_device(model)
        items = items.to(device)
        row = model.user_rows(torch.tensor([user], device=device))
        history = row[0].nonzero()[:, 0]
        rows = row.repeat(len(history) + 1, 1)
        rows[torch.arange(1, len(history) + 1, device=device), history] = 0
        step = max(1, SCORE_CHUNK // max(model.n_items, 1))
        logits = torch.cat([model.reconstruct(chunk, torch.full((len(chunk),), user, device=device))[0][:, items]
                            for chunk in rows.split(step)])
        weights = (logits[0] - logits[1:]).T
        return self.result(items, self.user_scores(user, items), weights, history, top)
