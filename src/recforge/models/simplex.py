"""SimpleX: MF whose user vector mixes in the mean of the user's items, scored by cosine similarity.

Mao, Zhu, Wang, Dai, Dong, Xiao and He. 2021. SimpleX: A Simple and Strong Baseline for Collaborative Filtering.
CIKM.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import RowInputRecommender, candidate_sq_norms
from recforge.utils.linalg import candidates_by_product, inner_products, with_shared_products
from recforge.utils.sparse import row_entries


class SimpleX(RowInputRecommender):
    """``p_u = gate * e_u + (1 - gate) * V mean_{i in I_u} e_i`` (the mean aggregator; ``V`` a linear map), with
    ``dropout`` on ``p_u`` while training, and ``score(u, i) = cos(p_u, e_i)``: the history items share the
    candidates' embedding table. The paper trains it with its cosine contrastive loss (a margin on the negatives'
    cosines, a negative weight, hundreds of negatives: ``loss=ccl``, which ``model=simplex`` selects); any other
    sampled-negatives loss scores the cosines too.

    The history is the user's row of the training interactions (deduplicated, the whole row: the reference code
    pads or cuts it to a fixed length); like the other row models it is replaced by each evaluation stage's
    inputs, so a user's validation items join its history at test time. ``leave_out_target`` (default, as the
    reference code builds its training data): in a training step each row's history leaves out the positive item
    the row is trained on, so the model cannot score a positive by finding it in its own history, which it never
    can at evaluation (a held-out item is in no history); the whole-catalogue losses (``loss.full``) read whole
    histories.

    ``reg_weight``: an L2 penalty ``reg_weight / 2 * (||e_u||^2 + ||e_i||^2 + mean_j ||e_j||^2) / B`` on the batch's
    user and candidate embeddings (RecBole's SimpleX has one, at 1e-5 in its unsquared form; the paper's reference
    code an embedding regulariser); 0, the default, none."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 embedding_dim: int = 64, gate: float = 0.5, dropout: float = 0.1, init_std: float = 0.1,
                 reg_weight: float = 0.0, leave_out_target: bool = True) -> None:
        if not 0 <= gate <= 1 or not 0 <= dropout < 1:
            raise ValueError(f"need 0 <= gate <= 1 and 0 <= dropout < 1, got gate={gate}, dropout={dropout}")
        super().__init__(n_users, n_items, interactions)
        self.gate, self.reg_weight, self.leave_out_target = gate, reg_weight, leave_out_target
        self._targets: torch.Tensor | None = None   # within one_pass(), while training: each row's positive
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        self.history_map = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor | None:
        if not self.reg_weight:
            return None
        return self.reg_weight * 0.5 * candidate_sq_norms(users, items, self.user_embedding,
                                                          self.item_embedding) / len(users)

    @contextlib.contextmanager
    def one_pass(self, positives: torch.Tensor | None = None):
        self._targets = positives if self.leave_out_target else None
        try:
            yield
        finally:
            self._targets = None

    def history_means(self, users: torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, d)``: the mean embedding of each user's history items (an item counts once; zero for none),
        without row ``b``'s item ``leave_out[b]`` when given."""
        n = self.n_items
        lengths, positions = row_entries(self.history_indptr, users)
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        keys = torch.unique(rows * n + self.history_indices[positions])
        rows, items = torch.div(keys, n, rounding_mode="floor"), keys % n
        if leave_out is not None:
            keep = items != leave_out[rows]
            rows, items = rows[keep], items[keep]
        counts = torch.bincount(rows, minlength=len(users)).clamp_min(1).unsqueeze(1)
        total = self.item_embedding.weight.new_zeros(len(users), self.item_embedding.embedding_dim)
        return total.index_add(0, rows, self.item_embedding(items)) / counts

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``p_u``, unit length (in a training step with ``leave_out_target``, the row's positive left out of its
        history)."""
        leave_out = self._targets if self.training else None
        if leave_out is not None and len(leave_out) != len(users):
            raise ValueError(f"one_pass() was given {len(leave_out)} positives for a step scoring {len(users)} rows")
        history = self.history_map(self.history_means(users, leave_out))
        mixed = self.gate * self.user_embedding(users) + (1 - self.gate) * history
        return F.normalize(self.dropout(mixed), dim=-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user = self.user_vectors(users)
        if items.dim() == 1:
            return (user * F.normalize(self.item_embedding(items), dim=-1)).sum(-1)
        if candidates_by_product(items, self.n_items):   # many candidates (the CCL's hundreds)
            return inner_products(user, self.item_vectors()).gather(1, items)
        return torch.bmm(F.normalize(self.item_embedding(items), dim=-1), user.unsqueeze(-1)).squeeze(-1)

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return inner_products(self.user_vectors(users), F.normalize(self.item_embedding(items), dim=-1))

    def score_with_shared(self, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """One user vector (one dropout draw) for the positive and the shared negatives, as with per-row ones."""
        items = F.normalize(self.item_embedding(torch.cat([positives, shared])), dim=-1)
        return with_shared_products(self.user_vectors(users), items[:len(positives)], items[len(positives):])

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return inner_products(self.user_vectors(users), self.item_vectors())

    def item_vectors(self) -> torch.Tensor:
        return F.normalize(self.item_embedding.weight, dim=-1)

    def retrieval_items(self) -> torch.Tensor:
        return self.item_vectors()

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users)
