"""CDAE: a denoising autoencoder of the user's row with a per-user latent offset.

Wu, DuBois, Zheng and Ester. 2016. Collaborative Denoising Auto-Encoders for Top-N Recommender Systems. WSDM.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import RowInputRecommender, row_linear
from recforge.models.mlp import xavier_init_


class CDAE(RowInputRecommender):
    """``h = sigmoid(W drop(x_u) + v_u + b)``, item logits ``W' h + b'``: one hidden layer of ``hidden_dim``
    units, ``dropout`` corrupting the input row during training, and a user embedding ``v_u`` added to the
    hidden layer (what makes it *collaborative*). Trained with ``loss=row_bce`` on batches of users: binary
    cross-entropy of the user's observed items and, as in the paper, sampled negatives (``loss.negative_ratio``,
    5 per positive by default; null for the whole row); ``score_all`` decodes the user's uncorrupted training
    row."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None, hidden_dim: int = 200,
                 dropout: float = 0.5) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        super().__init__(n_users, n_items, interactions)
        self.user_embedding = nn.Embedding(n_users, hidden_dim)
        self.encoder = nn.Linear(n_items, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, n_items)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.user_embedding.weight)
        xavier_init_(self.encoder, self.decoder)

    def reconstruct(self, x: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(item logits, 0)`` for input rows ``x`` of ``users`` (no KL term: a deterministic model)."""
        hidden = torch.sigmoid(row_linear(self.dropout(x), self.encoder) + self.user_embedding(users))
        return self.decoder(hidden), x.new_zeros(())

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(self.user_rows(users), users)[0]
