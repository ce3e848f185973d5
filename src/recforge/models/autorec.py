"""AutoRec: an autoencoder of rating rows, item-based (I-AutoRec) or user-based (U-AutoRec).

Sedhain, Menon, Sanner and Xie. 2015. AutoRec: Autoencoders Meet Collaborative Filtering. WWW.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import RowInputRecommender, broadcast_users
from recforge.models.mlp import xavier_init_
from recforge.utils.sparse import csr_indices, dense_rows

OBSERVED_ZERO = 1e-6  # how a rating of exactly 0 appears in a dense row, where 0 means "not rated"


def dense_rating_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                      n_cols: int, observed_zero: float = OBSERVED_ZERO) -> torch.Tensor:
    """``(len(rows), n_cols)``: the stored values of the selected CSR rows, 0 elsewhere; a stored value of exactly
    0 becomes ``observed_zero``, so that ``!= 0`` marks the stored entries."""
    values = torch.where(values == 0, torch.full_like(values, observed_zero), values)
    return dense_rows(indptr, indices, rows, n_cols, values.dtype, values)


class AutoRec(RowInputRecommender):
    """One hidden layer: ``h = sigmoid(V r + mu)``, reconstruction ``W h + b`` (identity decoder), where ``r`` is
    an item's ratings by all users (``item_based=True``: I-AutoRec, the paper's better variant) or a user's
    ratings of all items (``item_based=False``: U-AutoRec), 0 where unrated. Trained with ``loss=row_mse`` (squared
    error on the observed ratings only) on batches of whole rows (``train_view`` is ``items`` or ``users``); the
    paper's L2 penalty ``lambda/2 (|W|^2 + |V|^2)`` is ``optimizer.weight_decay``.

    The training ratings are the data arguments ``interactions`` (``(2, n)`` user/item pairs) and ``ratings``
    (``(n,)`` values in the same order; ``None``: every pair is rated 1), kept as non-persistent CSR buffers by user
    and by item; a pair given twice keeps its last rating. A rating of exactly 0 (normalised data) appears in the
    rows as :data:`OBSERVED_ZERO`, so that ``rows != 0`` is the observed mask. ``forward(u, i)`` reads entry ``u``
    of item ``i``'s reconstructed row (I-AutoRec) or entry ``i`` of user ``u``'s (U-AutoRec); users or items
    without training ratings get ``global_mean`` (the paper uses a default rating of 3 for them)."""

    feedbacks = ("explicit",)
    reads_histories = False  # its rows hold ratings, which stage histories do not carry: always the training ones

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 ratings: torch.Tensor | None = None, global_mean: float = 0.0, hidden_dim: int = 500,
                 item_based: bool = True) -> None:
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
        pairs = interactions if interactions is not None else torch.zeros(2, 0, dtype=torch.long)
        if ratings is None:
            ratings = torch.ones(pairs.shape[1])
        ratings = torch.as_tensor(ratings, dtype=torch.float32).reshape(-1)
        if len(ratings) != pairs.shape[1]:
            raise ValueError(f"ratings has {len(ratings)} values for {pairs.shape[1]} interactions")
        super().__init__(n_users, n_items, pairs)  # history_indptr / history_indices: unique pairs by user
        users, items = pairs[0].long(), pairs[1].long()
        keys = users * n_items + items
        order = torch.sort(keys, stable=True).indices
        sorted_keys = keys[order]
        last = torch.ones_like(sorted_keys, dtype=torch.bool)  # the last of each run of equal keys
        last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
        values = ratings[order][last]  # aligned with history_indices (csr_indices sorts the unique keys too)
        self.register_buffer("history_ratings", values, persistent=False)
        unique_users = torch.div(sorted_keys[last], n_items, rounding_mode="floor")
        unique_items = self.history_indices
        by_item = torch.sort(unique_items * n_users + unique_users).indices
        item_indptr, item_indices = csr_indices(unique_items, unique_users, n_items, n_users)
        self.register_buffer("item_history_indptr", item_indptr, persistent=False)
        self.register_buffer("item_history_indices", item_indices, persistent=False)
        self.register_buffer("item_history_ratings", values[by_item], persistent=False)
        self.register_buffer("user_counts", torch.diff(self.history_indptr), persistent=False)
        self.register_buffer("item_counts", torch.diff(item_indptr), persistent=False)

        self.item_based, self.global_mean = item_based, float(global_mean)
        self.train_view = "items" if item_based else "users"
        width = n_users if item_based else n_items
        self.encoder = nn.Linear(width, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, width)
        xavier_init_(self.encoder, self.decoder)
        nn.init.constant_(self.decoder.bias, self.global_mean)  # start at the mean rating, not at 0

    # ---------------------------------------------------------------- rows
    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense ``(B, n_items)`` training ratings of ``users`` (0: not rated)."""
        return dense_rating_rows(self.history_indptr, self.history_indices, self.history_ratings, users, self.n_items)

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """Dense ``(B, n_users)`` training ratings of ``items`` by every user (0: not rated)."""
        return dense_rating_rows(self.item_history_indptr, self.item_history_indices, self.item_history_ratings,
                                 items, self.n_users)

    # ---------------------------------------------------------------- the autoencoder
    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(rows))

    def reconstruct(self, rows: torch.Tensor, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstructed rows, 0)`` for rating rows (item rows for I-AutoRec, user rows for U-AutoRec); the
        ids play no part. The zero stands for the KL term of the row interface (a deterministic model)."""
        return self.decoder(self.encode(rows)), rows.new_zeros(())

    def _fallback(self, pred: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        known = (self.user_counts[users] > 0) & (self.item_counts[items] > 0)
        return torch.where(known, pred, torch.full_like(pred, self.global_mean))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users = broadcast_users(users, items)
        if self.item_based:  # encode each requested item once, decode only the requested users' entries
            rows, inverse = torch.unique(items, return_inverse=True)
            hidden = self.encode(self.item_rows(rows))[inverse]
            out_ids = users
        else:
            rows, inverse = torch.unique(users, return_inverse=True)
            hidden = self.encode(self.user_rows(rows))[inverse]
            out_ids = items
        pred = (self.decoder.weight[out_ids] * hidden).sum(-1) + self.decoder.bias[out_ids]
        return self._fallback(pred, users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        if not self.item_based:
            pred = self.reconstruct(self.user_rows(users))[0]
        else:  # every item's code, in chunks of rows bounded to ~4M ratings, decoded at the users' entries only
            weight, bias = self.decoder.weight[users], self.decoder.bias[users].unsqueeze(1)
            step = max(1, (1 << 22) // max(self.n_users, 1))
            all_items = torch.arange(self.n_items, device=users.device)
            pred = torch.cat([weight @ self.encode(self.item_rows(chunk)).T + bias for chunk in all_items.split(step)],
                             dim=1) if self.n_items else weight.new_zeros(len(users), 0)
        items = torch.arange(self.n_items, device=users.device).expand(len(users), -1)
        return self._fallback(pred, users.unsqueeze(1).expand_as(items), items)
