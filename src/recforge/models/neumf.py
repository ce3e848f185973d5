"""Neural Collaborative Filtering: GMF and MLP fused into NeuMF, optionally pre-trained from GMF and MLP runs.

He, Liao, Zhang, Nie, Hu and Chua. 2017. Neural Collaborative Filtering. WWW (Sections 3.4 and 3.4.1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.errors import RecForgeError
from recforge.models.base import Recommender, broadcast_users, by_user_chunks
from recforge.models.gmf import GMF
from recforge.models.mlp import MLP, mlp_tower, tower_over_all_pairs, tower_width, xavier_init_
from recforge.models.pretrained import pretrained_source


class NeuMF(Recommender):
    """Generalised MF (element-wise product of ``gmf_dim``-d embeddings) beside an MLP over concatenated
    user and item embeddings (``mlp_layers[0] / 2`` each, then the tower ``mlp_layers``), concatenated and
    mapped to one logit. ``dropout`` applies between MLP layers.

    Pre-training (Section 3.4.1): ``gmf_from`` / ``mlp_from`` are bundle folders (a run's ``<output_dir>/model``)
    of a trained :class:`~recforge.models.gmf.GMF` and :class:`~recforge.models.mlp.MLP` on the same data. Their
    embeddings and MLP tower are copied, and the output layer becomes ``[alpha h_GMF, (1 - alpha) h_MLP]`` with
    bias ``alpha b_GMF + (1 - alpha) b_MLP`` (``alpha = pretrain_alpha``), so that with both given the untrained
    NeuMF's logit is exactly ``alpha GMF(u, i) + (1 - alpha) MLP(u, i)``. With only one given, the other half keeps
    its fresh initialisation and the output layer its default. The paper then trains NeuMF with vanilla SGD
    (``optimizer=sgd optimizer.momentum=0``): Adam's moment estimates are not carried over from the pre-trained
    runs. Both runs must share NeuMF's users and items (the same data and split: rows are matched by index).

    A bundle or checkpoint of a pre-trained NeuMF keeps ``gmf_from`` / ``mlp_from`` among its constructor
    arguments, and reloading it overwrites every weight by ``load_state_dict``. So a folder that no longer exists
    (a reload elsewhere, the pre-training runs deleted) only warns and keeps the fresh initialisation; an existing
    folder that is not a bundle of the right model, or does not fit (sizes, ``gmf_dim``, ``mlp_layers``), raises
    :class:`~recforge.errors.RecForgeError` naming the key."""

    def __init__(self, n_users: int, n_items: int, gmf_dim: int = 8,
                 mlp_layers: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0, gmf_from: str | None = None,
                 mlp_from: str | None = None, pretrain_alpha: float = 0.5) -> None:
        super().__init__()
        if not 0 <= pretrain_alpha <= 1:
            raise RecForgeError(f"model.pretrain_alpha={pretrain_alpha} must lie in [0, 1] (the paper's 0.5)")
        mlp_layers = list(mlp_layers)
        if len(mlp_layers) < 1 or mlp_layers[0] % 2:
            raise ValueError("mlp_layers needs at least one layer and an even first width")
        self.n_users, self.n_items = n_users, n_items
        self.gmf_user = nn.Embedding(n_users, gmf_dim)
        self.gmf_item = nn.Embedding(n_items, gmf_dim)
        self.mlp_user = nn.Embedding(n_users, mlp_layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, mlp_layers[0] // 2)
        self.mlp = mlp_tower(mlp_layers, dropout)
        self.predict = nn.Linear(gmf_dim + mlp_layers[-1], 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.01)
        xavier_init_(self.mlp)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)
        self.load_pretrained(gmf_from, mlp_from, pretrain_alpha)

    def load_pretrained(self, gmf_from: str | None, mlp_from: str | None, alpha: float = 0.5) -> None:
        """Copy the weights of a trained GMF and/or MLP bundle into this model (see the class docstring)."""
        with torch.no_grad():
            self._load_pretrained(gmf_from, mlp_from, alpha)

    def _load_pretrained(self, gmf_from: str | None, mlp_from: str | None, alpha: float) -> None:
        gmf = pretrained_source(gmf_from, "gmf_from", GMF, self)
        mlp = pretrained_source(mlp_from, "mlp_from", MLP, self)
        if gmf is not None:
            dim = gmf.user_embedding.embedding_dim
            if dim != self.gmf_user.embedding_dim:
                raise RecForgeError(f"model.gmf_from={gmf_from} has embedding_dim={dim} but model.gmf_dim="
                                    f"{self.gmf_user.embedding_dim}; set model.gmf_dim={dim}")
            self.gmf_user.weight.copy_(gmf.user_embedding.weight)
            self.gmf_item.weight.copy_(gmf.item_embedding.weight)
        if mlp is not None:
            theirs = [2 * mlp.user_embedding.embedding_dim] + [m.out_features for m in mlp.tower
                                                               if isinstance(m, nn.Linear)]
            ours = [2 * self.mlp_user.embedding_dim] + [m.out_features for m in self.mlp if isinstance(m, nn.Linear)]
            if theirs != ours:
                raise RecForgeError(f"model.mlp_from={mlp_from} has layers={theirs} but model.mlp_layers={ours}; "
                                    f"set model.mlp_layers=[{','.join(map(str, theirs))}]")
            self.mlp_user.weight.copy_(mlp.user_embedding.weight)
            self.mlp_item.weight.copy_(mlp.item_embedding.weight)
            self.mlp.load_state_dict(mlp.tower.state_dict())
        if gmf is not None and mlp is not None:  # h = [alpha h_GMF, (1 - alpha) h_MLP]
            self.predict.weight.copy_(torch.cat([alpha * gmf.predict.weight, (1 - alpha) * mlp.predict.weight], 1))
            self.predict.bias.copy_(alpha * gmf.predict.bias + (1 - alpha) * mlp.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users = broadcast_users(users, items)
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``forward`` over every item: the GMF half's part of the logit is one matrix product, the MLP tower's
        first layer is applied once per user and once per item (:func:`tower_over_all_pairs`)."""
        g = self.gmf_item.embedding_dim
        w_gmf, w_mlp = self.predict.weight[0, :g], self.predict.weight[0, g:]

        def score(chunk: torch.Tensor) -> torch.Tensor:
            gmf = (self.gmf_user(chunk) * w_gmf) @ self.gmf_item.weight.T
            mlp = tower_over_all_pairs(self.mlp, self.mlp_user(chunk), self.mlp_item.weight) @ w_mlp
            return gmf + mlp + self.predict.bias

        width = tower_width(self.mlp, 2 * self.mlp_item.embedding_dim)
        return by_user_chunks(score, users, self.n_items, self.max_activations, width)
