"""ConvNCF: a CNN over the outer product of user and item embeddings (outer product-based NCF).

He, Du, Wang, Tian, Tang and Chua. 2018. Outer Product-based Neural Collaborative Filtering. IJCAI.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.errors import RecForgeError
from recforge.models.base import Recommender, broadcast_users, candidate_sq_norms
from recforge.models.mf import MatrixFactorization
from recforge.models.pretrained import pretrained_source


class ConvNCF(Recommender):
    """The interaction map ``E = p_u q_i^T`` (``embedding_dim`` x ``embedding_dim``, a one-channel image) goes
    through ``log2(embedding_dim)`` conv layers with 2x2 kernels, stride 2, ``channels`` channels and ReLU,
    which halve it down to 1x1; a linear layer maps the ``channels`` values to the score. Trained with BPR.

    The paper's setting: 64-d embeddings (a 64x64 map, 6 conv layers to 1x1), 32 channels, BPR, and L2 on the
    batch's embeddings (``reg_embedding``) and on the network's weights and biases (``reg_weight``), see
    :meth:`regularization`; the authors' code initialises embeddings N(0, 0.01), conv and output weights with a
    truncated N(0, 0.1) and the conv biases at 0.1, and starts the embeddings from a trained MF-BPR model:
    ``mf_from`` is the bundle folder of a ``model=bpr`` (or any ``MatrixFactorization``) run on the same data and
    split with the same ``embedding_dim``, whose user and item embeddings are copied in."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, channels: int = 32,
                 reg_embedding: float = 0.0, reg_weight: float = 0.0, init_std: float = 0.01,
                 mf_from: str | None = None) -> None:
        super().__init__()
        if embedding_dim < 2 or embedding_dim & (embedding_dim - 1):
            raise ValueError(f"ConvNCF embedding_dim must be a power of two >= 2 (the 2x2 stride-2 conv tower halves "
                             f"the embedding_dim x embedding_dim map down to 1x1), got {embedding_dim}; use e.g. 64")
        if channels < 1:
            raise ValueError(f"ConvNCF channels must be >= 1, got {channels}")
        self.n_users, self.n_items = n_users, n_items
        self.embedding_dim, self.channels = embedding_dim, channels
        self.reg_embedding, self.reg_weight = reg_embedding, reg_weight
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        layers: list[nn.Module] = []
        for depth in range(embedding_dim.bit_length() - 1):  # log2(embedding_dim) halvings
            layers += [nn.Conv2d(1 if depth == 0 else channels, channels, kernel_size=2, stride=2),
                       nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*layers)
        self.predict = nn.Linear(channels, 1)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        for layer in [*self.tower, self.predict]:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(layer.bias, 0.1 if isinstance(layer, nn.Conv2d) else 0.0)
        mf = pretrained_source(mf_from, "mf_from", MatrixFactorization, self)
        if mf is not None:
            if mf.user_embedding.embedding_dim != embedding_dim:
                raise RecForgeError(f"model.mf_from={mf_from} has embedding_dim={mf.user_embedding.embedding_dim} "
                                    f"but model.embedding_dim={embedding_dim}; pre-train MF with "
                                    f"model.embedding_dim={embedding_dim}")
            with torch.no_grad():
                self.user_embedding.weight.copy_(mf.user_embedding.weight)
                self.item_embedding.weight.copy_(mf.item_embedding.weight)
        self.pair_width = embedding_dim * embedding_dim * max(1, channels // 4)  # the first conv layer's output

    @property
    def chunk_pairs(self) -> int:
        """Pairs per chunk in ``forward``: the first layer's output, the largest, within ``max_activations`` (at
        128 MiB rather than 16, with ReLUs that allocated, full ranking ran 4.5x slower:
        ``scripts/bench_score_chunks.py``)."""
        return max(1, self.max_activations // self.pair_width)

    def interaction_map(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(P, 1, k, k)`` outer products ``p_u q_i^T`` of flat ``(P,)`` user and item indices."""
        p, q = self.user_embedding(users), self.item_embedding(items)
        return (p.unsqueeze(2) * q.unsqueeze(1)).unsqueeze(1)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of flat ``(P,)`` pairs: the map, the tower (to ``(P, channels, 1, 1)``), the linear layer."""
        return self.predict(self.tower(self.interaction_map(users, items)).flatten(1)).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        flat_users, flat_items = broadcast_users(users, items).reshape(-1), items.reshape(-1)
        if len(flat_items) <= self.chunk_pairs:
            return self.score_pairs(flat_users, flat_items).view(items.shape)
        chunks = zip(flat_users.split(self.chunk_pairs), flat_items.split(self.chunk_pairs))
        return torch.cat([self.score_pairs(u, i) for u, i in chunks]).view(items.shape)

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The paper's L2 terms per training example: ``(reg_embedding * (sum ||p_u||^2 + sum ||q_i||^2) +
        reg_weight * ||network||^2) / B`` over the batch's users and their candidates (positive and sampled
        negative; several negatives count as their mean, :func:`~recforge.models.base.candidate_sq_norms`; the
        positive alone under ``loss=softmax``); the paper sums its BPR loss over the batch, this module averages
        it."""
        total = users.new_zeros((), dtype=self.predict.weight.dtype)
        if self.reg_embedding:
            total = total + self.reg_embedding * candidate_sq_norms(users, items, self.user_embedding,
                                                                    self.item_embedding)
        if self.reg_weight:
            network = [p for name, p in self.named_parameters() if not name.endswith("_embedding.weight")]
            total = total + self.reg_weight * sum(p.pow(2).sum() for p in network)
        return total / len(users)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight
