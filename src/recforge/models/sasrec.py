"""SASRec: self-attentive sequential recommendation.

Kang and McAuley. 2018. Self-Attentive Sequential Recommendation. ICDM.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recforge.models.base import SequentialRecommender


class SASRec(SequentialRecommender):
    """Item plus learned position embeddings through ``n_blocks`` causal self-attention blocks (pre-LayerNorm,
    ReLU feed-forward, dropout, as the authors' code), the state at position ``t`` scored against the shared item
    embeddings to predict item ``t + 1``. Padding positions are zeroed after every block (the paper's timeline
    mask), so a user with a short history attends to zeros, never to a fully masked row.

    Trained on each user's latest ``max_len + 1`` items (``train_on="latest"``) or on every window of the history
    (``"all"``); ``loss=bce`` with one negative per position is the paper's objective, ``loss=softmax`` the full
    cross-entropy (usually better: Klenitskiy & Vasilev 2023; the YAML's default, chosen on validation)."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 embedding_dim: int = 64, n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2,
                 train_on: str = "latest") -> None:
        super().__init__(n_users, n_items, sequences, max_len, train_on)
        if embedding_dim % n_heads:
            raise ValueError(f"embedding_dim ({embedding_dim}) must be divisible by n_heads ({n_heads})")
        self.embedding_dim, self.n_heads = embedding_dim, n_heads
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=self.padding_idx)
        self.position_embedding = nn.Embedding(max_len, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embedding_dim, n_heads, dim_feedforward=embedding_dim, dropout=dropout,
                                       activation="relu", batch_first=True, norm_first=True)
            for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(embedding_dim)
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_normal_(self.position_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[self.padding_idx].zero_()

    def input_embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` vectors of the input items (``padding_idx`` included; its row is zero here)."""
        return self.item_embedding(inputs)

    def encode(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        keep = (inputs != self.padding_idx).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        positions = torch.arange(self.max_len - length, self.max_len, device=inputs.device)  # right-aligned
        h = self.input_embeddings(inputs) * math.sqrt(self.embedding_dim) + self.position_embedding(positions)
        h = self.dropout(h) * keep
        # a position attends to itself and to earlier non-padding positions (the authors' key masking); padding
        # queries see only themselves, so no attention row is empty, and their outputs are zeroed anyway
        future = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)
        blocked = (future | (inputs == self.padding_idx).unsqueeze(1)) & ~torch.eye(length, dtype=torch.bool,
                                                                                    device=inputs.device)
        blocked = blocked.repeat_interleave(self.n_heads, dim=0)
        for block in self.blocks:
            h = block(h, src_mask=blocked) * keep
        return self.final_norm(h)
