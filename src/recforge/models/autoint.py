"""AutoInt: multi-head self-attention with residual connections over the field embeddings learns high-order feature
interactions explicitly; a linear layer over the last layer's fields gives the logit.

Song, Shi, Xiao, Duan, Xu, Zhang and Tang. 2019. AutoInt: Automatic Feature Interaction Learning via Self-Attentive
Neural Networks. CIKM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.fields import FieldRecommender, field_embeddings
from recforge.models.fm import SideTerms
from recforge.models.mlp import xavier_init_


class InteractingLayer(nn.Module):
    """One interacting layer (the paper's equations 5-8) over ``(..., n_fields, dim_in)`` field vectors: per head
    ``h``, ``alpha_mk = softmax_k(<W_Q e_m, W_K e_k>)`` (no scaling, as in the paper) and ``e~_m = sum_k alpha_mk
    W_V e_k``; the heads are concatenated and, with ``residual``, ``e_res_m = ReLU(e~_m + W_Res e_m)`` (else
    ``ReLU(e~_m)``). The output is ``(..., n_fields, heads * attention_dim)``."""

    def __init__(self, dim_in: int, attention_dim: int, heads: int, residual: bool = True) -> None:
        super().__init__()
        self.heads, self.attention_dim = heads, attention_dim
        width = heads * attention_dim
        self.query = nn.Linear(dim_in, width, bias=False)
        self.key = nn.Linear(dim_in, width, bias=False)
        self.value = nn.Linear(dim_in, width, bias=False)
        self.residual = nn.Linear(dim_in, width, bias=False) if residual else None

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        split = (self.heads, self.attention_dim)
        query, key, value = (p(fields).unflatten(-1, split) for p in (self.query, self.key, self.value))
        weights = torch.einsum("...mhd,...khd->...hmk", query, key).softmax(dim=-1)
        mixed = torch.einsum("...hmk,...khd->...mhd", weights, value).flatten(-2)
        return F.relu(mixed if self.residual is None else mixed + self.residual(fields))


class AutoInt(FieldRecommender):
    """AutoInt over the fields user id, item id and, when the data has them, user features and item features (each
    feature field the value-weighted sum of its features' embeddings, so an id without training interactions is
    scored from its features): ``n_layers`` :class:`InteractingLayer` s of ``n_heads`` heads of ``attention_dim``
    dimensions each, then ``logit = w^T [e_res_1, ..., e_res_M] + b`` (equation 9).

    The paper's setting: embeddings of 16, 3 interacting layers, 2 heads of 32 dimensions, residual connections
    (the class defaults), Adam, log loss, which is ``loss=bce`` here (sampled negatives stand in for non-clicks)."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 16, n_layers: int = 3, n_heads: int = 2,
                 attention_dim: int = 32, residual: bool = True, use_features: bool = True, init_std: float = 0.01,
                 user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        if min(n_layers, n_heads, attention_dim) < 1:
            raise ValueError(f"n_layers, n_heads and attention_dim must be positive, got {n_layers}, {n_heads}, "
                             f"{attention_dim}")
        super().__init__(n_users, n_items, embedding_dim, use_features, init_std, user_features, item_features,
                         n_context)
        width = n_heads * attention_dim
        self.interacting = nn.ModuleList(InteractingLayer(embedding_dim if i == 0 else width, attention_dim, n_heads,
                                                          residual) for i in range(n_layers))
        self.out = nn.Linear(self.n_fields * width, 1)
        # per pair: the fields' query, key, value and residual projections, and the heads' field x field weights
        self.pair_width = self.n_fields * (4 * width + n_heads * self.n_fields)
        xavier_init_(self.interacting, self.out)

    def logits(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        fields = field_embeddings(user, item)
        for layer in self.interacting:
            fields = layer(fields)
        return self.out(fields.flatten(-2)).squeeze(-1)
