"""GRU4Rec: session-based recommendation with recurrent neural networks.

Hidasi, Karatzoglou, Baltrunas and Tikk. 2016. Session-based Recommendations with Recurrent Neural Networks.
ICLR. Hidasi and Karatzoglou. 2018. Recurrent Neural Networks with Top-k Gains for Session-based
Recommendations. CIKM.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    """Item embeddings (with ``dropout``) through ``n_layers`` GRU layers of ``hidden_dim`` units; each state is
    projected to ``embedding_dim`` and scored against the item embeddings (tied input/output weights, as in
    RecBole's version) to predict the next item. A user's sequence is one session of up to ``max_len + 1`` items,
    left-padded (padding embeds to zero and the GRU has no biases, so leading padding leaves its state at zero);
    ``train_on`` says whether training reads the latest window or the whole history (:class:`SequentialRecommender`).
    ``loss=softmax`` (cross-entropy over the catalogue) is the default; ``loss=bpr`` or ``loss=sampled_softmax``
    sample negatives instead (the 2018 paper's BPR-max / TOP1-max are not included)."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 embedding_dim: int = 64, hidden_dim: int = 128, n_layers: int = 1, dropout: float = 0.25,
                 train_on: str = "latest") -> None:
        super().__init__(n_users, n_items, sequences, max_len, train_on)
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=self.padding_idx)
        self.dropout = nn.Dropout(dropout)
        # no biases: from a zero state, the zero embeddings of leading padding leave the state exactly zero, so a
        # left-padded sequence encodes as if it started at its first item (RecBole's GRU has none either)
        self.gru = nn.GRU(embedding_dim, hidden_dim, num_layers=n_layers, batch_first=True, bias=False)
        self.project = nn.Linear(hidden_dim, embedding_dim)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        for weight in self.gru.parameters():  # Glorot's, as RecBole; PyTorch's default is U(+-1/sqrt(h))
            nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.item_embedding.weight[self.padding_idx].zero_()

    def encode(self, inputs: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.dropout(self.item_embedding(inputs)))
        return self.project(states)
