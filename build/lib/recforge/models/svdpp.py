"""SVD++: biased matrix factorisation with the implicit feedback of which items each user rated.

Koren. 2008. Factorization Meets the Neighborhood: a Multifaceted Collaborative Filtering Model. KDD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import broadcast_users
from recforge.models.mf import MatrixFactorization
from recforge.utils.sparse import csr_indices, row_entries


class SVDpp(MatrixFactorization):
    """``r(u, i) = mu + b_u + b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)``: biased MF whose user vector
    adds the implicit factors ``y_j`` of the items ``u`` rated in training (``interactions``, kept as
    non-persistent CSR buffers; a user without training ratings has only ``p_u``). ``l2_reg`` is the paper's
    per-pair penalty on ``p_u``, ``q_i``, the biases and the ``y_j`` of the user's items (averaged over the
    batch). Trained with ``loss=mse``."""

    feedbacks = ("explicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 embedding_dim: int = 64, init_std: float = 0.01, global_mean: float = 0.0,
                 l2_reg: float = 0.0) -> None:
        super().__init__(n_users, n_items, embedding_dim, use_bias=True, init_std=init_std, global_mean=global_mean,
                         l2_reg=l2_reg)
        pairs = interactions if interactions is not None else torch.zeros(2, 0, dtype=torch.long)
        indptr, indices = csr_indices(pairs[0], pairs[1], n_users, n_items)
        self.register_buffer("history_indptr", indptr, persistent=False)
        self.register_buffer("history_indices", indices, persistent=False)
        self.implicit_embedding = nn.Embedding(n_items, embedding_dim)  # y_j
        nn.init.normal_(self.implicit_embedding.weight, std=init_std)

    def implicit_sum(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(|N(u)|^-1/2 sum_j y_j, sum_j ||y_j||^2 / |N(u)|)`` for each user: one ``embedding_bag`` over the
        users' CSR rows."""
        lengths, positions = row_entries(self.history_indptr, users)
        offsets = torch.cumsum(lengths, 0) - lengths
        items = self.history_indices[positions]
        scale = lengths.clamp(min=1).float().rsqrt().unsqueeze(1)
        summed = F.embedding_bag(items, self.implicit_embedding.weight, offsets, mode="sum")
        squares = F.embedding_bag(items, self.implicit_embedding.weight.pow(2), offsets, mode="sum").sum(1)
        return summed * scale, squares / lengths.clamp(min=1)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(users, return_inverse=True)
        return (self.user_embedding(unique) + self.implicit_sum(unique)[0])[inverse]

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Biased MF's per-pair penalty plus ``l2_reg * sum_j ||y_j||^2 / |N(u)|``, averaged over the pairs."""
        penalty = super().regularization(users, items)
        if not self.l2_reg:
            return penalty
        unique, inverse = torch.unique(broadcast_users(users, items).reshape(-1), return_inverse=True)
        return penalty + self.l2_reg * self.implicit_sum(unique)[1][inverse].mean()
