"""Transformer sequential models (SASRec, BERT4Rec): which history positions the scored state attends to, by
attention rollout (Abnar and Zuidema. 2020. Quantifying Attention Flow in Transformers. ACL)."""

from __future__ import annotations

import threading

import torch
from torch import nn

from recforge.explain.base import Explainer, Explanations, model_device
from recforge.models.base import SequentialRecommender


def has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


class AttentionRollout(Explainer):
    """The attention maps of every layer (heads averaged), each mixed half and half with the identity for the
    residual connection and renormalised, multiplied from the first layer to the last; the row of the position
    the model scores says how much of its state flows from each input position. The maps and the input ids are
    read by hooks while the model scores the user (hooks act only on the explaining thread, so requests served
    beside it are untouched). Attention does not depend on the candidate item: every recommended item of a user
    gets the same weights."""

    method = "attention_rollout"
    note = "attention rollout: how much of the scored position's state flows from each history position " \
           "(the same for every recommended item)"

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__(model)
        self.layers = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]

    def explain(self, user: int, items: torch.Tensor, top: int) -> Explanations:
        model, owner = self.model, threading.get_ident()
        maps: list[torch.Tensor] = []
        ids: list[torch.Tensor] = []

        def want_weights(module, args, kwargs):
            if threading.get_ident() == owner:
                return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

        def keep_weights(module, args, output):
            if threading.get_ident() == owner:
                maps.append(output[1])

        def keep_ids(module, args):
            if threading.get_ident() == owner and not ids:
                ids.append(args[0])

        handles = [layer.register_forward_pre_hook(want_weights, with_kwargs=True) for layer in self.layers]
        handles += [layer.register_forward_hook(keep_weights) for layer in self.layers]
        handles.append(model.item_embedding.register_forward_pre_hook(keep_ids))
        try:
            with torch.no_grad():  # hooks on the blocks turn off torch's fused fast path, which skips them
                items = items.to(model_device(model))
                scores = model.score_all(torch.tensor([user], device=items.device))[0, items]
        finally:
            for handle in handles:
                handle.remove()
        inputs = ids[0][0]
        flow = torch.eye(len(inputs), device=inputs.device)
        for attention in maps:
            mixed = 0.5 * attention[0] + 0.5 * torch.eye(len(inputs), device=inputs.device)
            flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
        real = inputs < model.n_items  # not padding, nor a mask token
        positions = real.flip(0).cumsum(0).flip(0)  # 1 = the latest item
        weights = flow[-1][real].expand(len(items), -1)
        return self.result(items, scores, weights, inputs[real], top,
                           positions=positions[real].expand(len(items), -1))
