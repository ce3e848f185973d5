"""DCN-V2: a cross network of explicit feature crosses beside (or before) a deep network, over field embeddings.

Wang, Shivanna, Cheng, Jain, Lin, Hong and Chi. 2021. DCN V2: Improved Deep & Cross Network and Practical Lessons
for Web-scale Learning to Rank Systems. WWW.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recforge.models.fields import FieldRecommender, field_embeddings
from recforge.models.fm import SideTerms
from recforge.models.mlp import mlp_tower, xavier_init_


class CrossLayer(nn.Module):
    """``x_{l+1} = x_0 * (W x_l + b) + x_l`` (the paper's equation 1); with ``rank`` the matrix is the low-rank
    ``U V^T`` of section 4.2 (``d x r`` each)."""

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim) if rank is None else nn.Sequential(nn.Linear(dim, rank, bias=False),
                                                                                nn.Linear(rank, dim))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.project(x) + x


class DCNv2(FieldRecommender):
    """DCN-V2 over the fields user id, item id and, when the data has them, user features and item features (each
    feature field the value-weighted sum of its features' embeddings, as in :class:`~recforge.models.fm.FeatureSide`,
    so an id without training interactions is scored from its features). ``x_0`` is the concatenated field
    embeddings; ``cross_layers`` cross layers (full rank, or rank ``rank``) and the ReLU tower ``mlp_layers`` are
    either ``parallel`` (both read ``x_0``; their outputs are concatenated into the logit layer) or ``stacked``
    (the tower reads the cross network's output), the paper's two structures (figure 2).

    The paper's setting on Criteo: embedding 39 fields of dimension 16 (here 2-4 fields), cross layers 2-4, a
    2-layer deep network, Adam, log loss, which is ``loss=bce`` here (sampled negatives stand in for non-clicks)."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 16, cross_layers: int = 3,
                 mlp_layers: Sequence[int] = (256, 128), dropout: float = 0.1, structure: str = "parallel",
                 rank: int | None = None, use_features: bool = True, init_std: float = 0.01,
                 user_features: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None, n_context: int = 0) -> None:
        mlp_layers = list(mlp_layers)
        if structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {structure!r}")
        if not mlp_layers or min(mlp_layers) < 1 or cross_layers < 0 or (rank is not None and rank < 1):
            raise ValueError(f"need mlp_layers of positive widths, cross_layers >= 0 and rank >= 1 or None; got "
                             f"{mlp_layers}, {cross_layers}, {rank}")
        super().__init__(n_users, n_items, embedding_dim, use_features, init_std, user_features, item_features,
                         n_context)
        self.structure = structure
        dim = self.n_fields * embedding_dim
        self.cross = nn.ModuleList(CrossLayer(dim, rank) for _ in range(cross_layers))
        self.deep = mlp_tower([dim, *mlp_layers], dropout)
        self.out = nn.Linear(mlp_layers[-1] + (dim if structure == "parallel" else 0), 1)
        self.pair_width = max(dim, *mlp_layers) * 2
        xavier_init_(self.deep, self.cross, self.out)

    def logits(self, user: SideTerms, item: SideTerms, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x0 = field_embeddings(user, item).flatten(-2)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.structure == "stacked":
            return self.out(self.deep(x)).squeeze(-1)
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)
