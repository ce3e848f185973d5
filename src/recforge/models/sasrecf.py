"""SASRecF: SASRec whose items are their id embedding fused with the embedding of their features.

The encoder is SASRec's: Kang and McAuley. 2018. Self-Attentive Sequential Recommendation. ICDM. The fusion is
RecBole's SASRecF (Zhao et al. 2021. RecBole: Towards a Unified, Comprehensive and Efficient Framework for
Recommendation Algorithms. CIKM): the item id embedding and the item's feature embedding, concatenated and projected to
the model width by one linear layer, are the transformer's input. (FDSA, Zhang et al. 2019, IJCAI, runs the features
through a second self-attention stream instead; that is not this model.)
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.fm import feature_matrix, with_zero_rows
from recforge.models.sasrec import SASRec


class SASRecF(SASRec):
    """:class:`SASRec` over fused item vectors ``r_i = W [m_i e_i ; sum_f x_if v_f] + b``: the id embedding ``e_i``
    and the item's encoded features ``x_i`` (``item_features``; each feature's learned embedding ``v_f`` weighted
    by its value, as :class:`~recforge.models.fm.FeatureSide` sums them), concatenated and projected by one linear
    layer. RecBole scores the hidden states against the id embeddings alone; here the fused vectors are also the output
    embeddings, so an item's score depends on its features.

    ``m_i`` is 0 for an item without training interactions (``item_popularity`` 0: a held-out cold item, or one
    seen only in validation or test) and 1 otherwise: such an item's id embedding never trained, so it enters a
    history and is scored from its features alone (:meth:`scores_unseen`).

    ``use_features=false`` ignores ``item_features``: the model is then SASRec (the same parameters, the same scores
    under one seed). With ``use_features=true`` data without item features is refused."""

    def __init__(self, n_users: int, n_items: int, sequences: torch.Tensor | None = None, max_len: int = 50,
                 embedding_dim: int = 64, n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2,
                 use_features: bool = True, item_features: torch.Tensor | None = None,
                 item_popularity: torch.Tensor | None = None, train_on: str = "latest") -> None:
        super().__init__(n_users, n_items, sequences, max_len, embedding_dim, n_blocks, n_heads, dropout, train_on)
        self.use_features = use_features
        if not use_features:
            return
        features = feature_matrix(item_features, n_items, "item_features")
        if features is None:
            raise ValueError("model.use_features=true, but the data has no item features: use data that has them "
                             "(data=ml-100k; data=custom with data.item_features and data.item_columns) or set "
                             "model.use_features=false (SASRec on item ids)")
        trained = torch.ones(n_items) if item_popularity is None else (torch.as_tensor(item_popularity) > 0).float()
        # data, not checkpoint state (as FeatureSide's); the padding row has neither features nor an id part
        self.register_buffer("item_features", torch.cat([features, features.new_zeros(1, features.shape[1])]),
                             persistent=False)
        self.register_buffer("id_mask", torch.cat([trained, trained.new_zeros(1)]).unsqueeze(1), persistent=False)
        self.feature_embedding = nn.Parameter(torch.empty(features.shape[1], embedding_dim))
        self.fusion = nn.Linear(2 * embedding_dim, embedding_dim)
        nn.init.xavier_normal_(self.feature_embedding)
        nn.init.xavier_normal_(self.fusion.weight)
        nn.init.zeros_(self.fusion.bias)

    def fuse(self, items: torch.Tensor, id_vectors: torch.Tensor) -> torch.Tensor:
        """The fused vectors ``(..., d)`` of item indices ``items`` (padding included), given their id embeddings."""
        features = self.item_features[items] @ self.feature_embedding
        return self.fusion(torch.cat([id_vectors * self.id_mask[items], features], dim=-1))

    def input_embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        vectors = self.item_embedding(inputs)  # called as a module: the attention explainer reads the ids here
        return self.fuse(inputs, vectors) if self.use_features else vectors

    def output_embeddings(self) -> torch.Tensor:
        weights = super().output_embeddings()
        if not self.use_features:
            return weights
        return self.fuse(torch.arange(self.n_items, device=weights.device), weights)

    def add_items(self, item_features: torch.Tensor) -> None:
        """New items before the padding row: no id part (``m_i`` 0, as for an item without training interactions),
        their encoded features."""
        if not self.use_features:
            super().add_items(item_features)  # SASRec on ids: refused
        features = feature_matrix(item_features, len(item_features), "item_features").to(self.item_features.device)
        n, m = self.n_items, len(features)
        self.item_embedding = with_zero_rows(self.item_embedding, m, at=n)
        self.item_features = torch.cat([self.item_features[:n], features, self.item_features[n:]])
        self.id_mask = torch.cat([self.id_mask[:n], self.id_mask.new_zeros(m, 1), self.id_mask[n:]])
        self.n_items = self.padding_idx = n + m

    def scores_unseen(self, side: str) -> bool:
        """Items without training interactions are scored (and read in a history) from their features when the
        model reads item features; a user is its history, and a user without one has nothing to be scored from."""
        return side == "items" and self.use_features
