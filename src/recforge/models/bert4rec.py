"""BERT4Rec: sequential recommendation with a bidirectional Transformer trained by masked item prediction.

Sun, Liu, Wu, Pei, Lin, Ou and Jiang. 2019. BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer. CIKM.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import SequentialRecommender


class BERT4Rec(SequentialRecommender):
    """Item plus position embeddings (LayerNorm, dropout) through ``n_blocks`` bidirectional Transformer blocks
    (GELU, post-LayerNorm as BERT); padding is masked out of attention. Training replaces each item of the user's
    latest ``max_len`` (``train_on=all``: of every ``max_len`` window of the history) with a ``[mask]`` token (id
    ``n_items + 1``) with probability ``mask_prob`` (at least one per window, always including its latest item with
    probability ``mask_prob``) and predicts the masked items
    (Cloze task); the output layer is a GELU projection scored against the shared item embeddings plus an item
    bias. To recommend, ``[mask]`` is appended after the latest ``max_len - 1`` items and its state is scored.
    ``loss=softmax`` (the paper's cross-entropy) is the default."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 embedding_dim: int = 64, n_blocks: int = 2, n_heads: int = 2, dropout: float = 0.1,
                 mask_prob: float = 0.2, train_on: str = "latest") -> None:
        super().__init__(n_users, n_items, sequences, max_len, train_on)
        if embedding_dim % n_heads:
            raise ValueError(f"embedding_dim ({embedding_dim}) must be divisible by n_heads ({n_heads})")
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
        self.mask_idx, self.mask_prob = n_items + 1, mask_prob
        self.item_embedding = nn.Embedding(n_items + 2, embedding_dim, padding_idx=self.padding_idx)
        self.position_embedding = nn.Embedding(max_len, embedding_dim)
        self.input_norm = nn.LayerNorm(embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embedding_dim, n_heads, dim_feedforward=4 * embedding_dim, dropout=dropout,
                                       activation="gelu", batch_first=True)
            for _ in range(n_blocks))
        self.output = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.GELU(), nn.LayerNorm(embedding_dim))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        for emb in (self.item_embedding, self.position_embedding):
            nn.init.trunc_normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[self.padding_idx].zero_()

    def training_sequences(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owners, seq = self.training_windows(users, self.max_len, step=self.max_len)
        real = seq != self.padding_idx
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_prob) & real
        # every sequence predicts something: where no item was drawn, mask the latest one
        masked[:, -1] |= ~masked.any(dim=1) & real[:, -1]
        inputs = torch.where(masked, self.mask_idx, seq)
        return owners, inputs, torch.where(masked, seq, -1)

    def encode(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        positions = torch.arange(self.max_len - length, self.max_len, device=inputs.device)
        h = self.dropout(self.input_norm(self.item_embedding(inputs) + self.position_embedding(positions)))
        padding = inputs == self.padding_idx
        for block in self.blocks:
            h = block(h, src_key_padding_mask=padding)
        return self.output(h)

    def item_logits(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().item_logits(hidden, items)
        return logits + (self.output_bias if items is None else self.output_bias[items])

    @property
    def context_length(self) -> int:
        return self.max_len - 1  # the [mask] token takes the last position

    def last_state(self, recent: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """The state of a ``[mask]`` appended after the latest items."""
        recent = recent.to(self.output_bias.device)
        inputs = torch.cat([recent, torch.full((len(recent), 1), self.mask_idx, dtype=torch.long,
                                               device=recent.device)], dim=1)
        return self.encode(inputs, users)[:, -1]
