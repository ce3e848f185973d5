"""Caser: convolutional sequence embedding for top-N sequential recommendation.

Tang and Wang. 2018. Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding. WSDM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import SequentialRecommender


class Caser(SequentialRecommender):
    """The ``window`` latest item embeddings as an ``window x d`` image: ``n_h`` horizontal filters of every
    height 1..``window`` (ReLU, max-pooled over time) and ``n_v`` vertical filters, concatenated, through a
    ReLU layer to ``d`` units (``dropout`` before it), then joined with the user embedding (general taste) and
    scored against ``2d``-wide output item vectors plus an item bias.

    Training slides the window along the user's latest ``max_len`` items (or all of them, ``train_on=all``): every
    position predicts the item after it (the paper predicts the next ``T`` items of each window; one target per
    window covers the same targets over the sequence). ``loss=bce`` with sampled negatives is the paper's
    objective (3 negatives per target); ``loss=softmax``, the full cross-entropy, is the YAML's default, chosen
    on validation."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 embedding_dim: int = 64, window: int = 5, n_h: int = 8, n_v: int = 4, dropout: float = 0.4,
                 train_on: str = "latest") -> None:
        super().__init__(n_users, n_items, sequences, max_len, train_on)
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=self.padding_idx)
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, embedding_dim)) for h in range(1, window + 1))
        self.vertical = nn.Conv2d(1, n_v, (window, 1))
        self.hidden = nn.Linear(n_v * embedding_dim + n_h * window, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.output_items = nn.Embedding(n_items, 2 * embedding_dim)
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        for emb in (self.item_embedding, self.user_embedding):
            nn.init.normal_(emb.weight, std=1.0 / embedding_dim)
        nn.init.normal_(self.output_items.weight, std=1.0 / (2 * embedding_dim))
        with torch.no_grad():
            self.item_embedding.weight[self.padding_idx].zero_()

    @property
    def context_length(self) -> int:
        return self.window

    def encode(self, inputs: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """``(B, L, 2d)``; an anonymous history (``users`` None) takes the mean user embedding as its general
        taste."""
        batch, length = inputs.shape
        # the window ending at every position: (B, L, window), left-padded
        padded = F.pad(inputs, (self.window - 1, 0), value=self.padding_idx)
        windows = padded.unfold(1, self.window, 1)
        image = self.item_embedding(windows.reshape(-1, self.window)).unsqueeze(1)  # (B*L, 1, window, d)
        vertical = self.vertical(image).flatten(1)
        horizontal = [F.relu(conv(image)).squeeze(3).amax(dim=2) for conv in self.horizontal]
        z = F.relu(self.hidden(self.dropout(torch.cat([vertical, *horizontal], dim=1))))
        user = (self.user_embedding.weight.mean(0).expand(batch, -1) if users is None
                else self.user_embedding(users)).unsqueeze(1).expand(batch, length, -1)
        return torch.cat([z.view(batch, length, -1), user], dim=-1)

    def output_embeddings(self) -> torch.Tensor:
        return self.output_items.weight

    def item_logits(self, hidden: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().item_logits(hidden, items)
        return logits + (self.output_bias if items is None else self.output_bias[items])
