"""LightGCN: linear neighbourhood propagation over the user-item graph, no transforms or non-linearities.

He, Deng, Wang, Li, Zhang and Wang. 2020. LightGCN: Simplifying and Powering Graph Convolution Network
for Recommendation. SIGIR.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from recforge.models.base import Recommender, candidate_sq_norms, check_init, init_embeddings
from recforge.utils.linalg import candidates_by_product, inner_products
from recforge.utils.sparse import to_csr


def normalized_adjacency(interactions: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph ``A = [[0, R], [R^T, 0]]`` as a coalesced sparse COO
    tensor of size ``n_users + n_items`` (users first, then items). Duplicate pairs count once; isolated
    nodes get zero rows."""
    users, items = interactions[0].long(), interactions[1].long() + n_users
    n = n_users + n_items
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows)), (n, n),
                                    check_invariants=False).coalesce()
    index = graph.indices()
    degree = torch.bincount(index[0], minlength=n).float()
    inv_sqrt = degree.pow(-0.5).masked_fill_(degree == 0, 0.0)
    values = inv_sqrt[index[0]] * inv_sqrt[index[1]]
    return torch.sparse_coo_tensor(index, values, (n, n), is_coalesced=True, check_invariants=False)


def sparse_mm(adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A @ X`` for a sparse CSR ``A``. On the CPU, ``A @ X`` zero-fills its result and copies it once
    more; ``addmm`` into an uninitialised buffer with ``beta=0`` (which ignores the buffer's contents)
    skips both: 12 -> 10 ms per product on the Gowalla graph, 131 -> 115 ms per 3-layer training step."""
    if dense.device.type != "cpu" or dense.dtype != adjacency.dtype:
        return adjacency @ dense
    out = torch.empty(adjacency.shape[0], dense.shape[1], dtype=dense.dtype)
    return torch.addmm(out, adjacency, dense.contiguous(), beta=0, out=out)


class SymmetricSparseMM(torch.autograd.Function):
    """``A @ X`` for a symmetric sparse ``A``: the backward pass reuses ``A`` (``A^T = A``) instead of
    transposing and re-coalescing it on every step, as the generic sparse backward does."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return sparse_mm(adjacency, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, sparse_mm(ctx.adjacency, grad)


def propagate_layer(adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """One propagation step ``A @ X`` over the symmetric normalised adjacency."""
    return SymmetricSparseMM.apply(adjacency, dense)


class GraphRecommender(Recommender):
    """Shared plumbing of the graph models: the normalised adjacency as a non-persistent CSR buffer (it moves
    with the module and is rebuilt from ``interactions``), pairwise scores from propagated embeddings, and
    a cache of the propagated embeddings while evaluating (``not self.training`` and no autograd), keyed
    on the parameters' versions so an optimizer step or a loaded checkpoint invalidates it. Subclasses keep
    their ego embeddings in ``user_embedding`` and ``item_embedding`` and their L2 weight in ``reg_weight``."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        adjacency = to_csr(normalized_adjacency(interactions, n_users, n_items))
        self.register_buffer("adjacency", adjacency, persistent=False)
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._step: list[tuple[torch.Tensor, torch.Tensor]] | None = None   # within one_pass(): its propagation

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _state_key(self) -> tuple:
        return (self.adjacency.device,) + tuple((p.data_ptr(), p._version) for p in self.parameters())

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final ``(user, item)`` representations; cached while evaluating, and within :meth:`one_pass` in training
        (computed with their gradient's graph even when the first call, a hard negative's scoring, has none)."""
        if self._step is not None and self.training:
            if not self._step:
                with torch.enable_grad():
                    self._step.append(self.propagate())
            return self._step[0]
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.propagate()
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.propagate())
        return self._cache[1]

    @contextlib.contextmanager
    def one_pass(self, positives: torch.Tensor | None = None):
        self._step = []
        try:
            yield
        finally:
            self._step = None

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.embeddings()
        u = user_emb[users]
        if candidates_by_product(items, self.n_items):  # many candidates a row (sampled softmax, the CCL)
            return inner_products(u, item_emb).gather(1, items)
        if items.dim() == 2:
            u = u.unsqueeze(1)
        return (u * item_emb[items]).sum(-1)

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.embeddings()
        return inner_products(user_emb[users], item_emb[items])

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.embeddings()
        return inner_products(user_emb[users], item_emb)

    def item_vectors(self) -> torch.Tensor:
        return self.embeddings()[1]

    def retrieval_items(self) -> torch.Tensor:
        return self.embeddings()[1]

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        return self.embeddings()[0][users]

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``reg_weight / 2 * (||e_u^0||^2 + ||e_i^0||^2 + ||e_j^0||^2) / B`` on the batch's ego embeddings, as in
        LightGCN's loss (Eq. 15) and NGCF's: with several negatives a row's term is the mean over its triples
        (:func:`~recforge.models.base.candidate_sq_norms`); under ``loss=softmax`` the user and positive alone."""
        return self.reg_weight * 0.5 * candidate_sq_norms(users, items, self.user_embedding,
                                                          self.item_embedding) / len(users)


class LightGCN(GraphRecommender):
    """``E^(k+1) = D^-1/2 A D^-1/2 E^(k)`` for ``n_layers`` layers from the ego embeddings ``E^(0)``; the
    final representation is the mean of ``E^(0..K)`` and the score an inner product. The paper's setting:
    64-d, 3 layers, BPR, Adam lr 0.001, batch 2048, L2 ``reg_weight`` 1e-4 on the batch's ego embeddings
    (see :meth:`regularization`). ``init`` is ``normal`` (N(0, ``init_std``), the paper's) or Glorot's
    ``xavier_normal`` / ``xavier_uniform`` (RecBole's), scaled per table by its size."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor, embedding_dim: int = 64,
                 n_layers: int = 3, reg_weight: float = 1e-4, init_std: float = 0.1, init: str = "normal") -> None:
        if n_layers < 0:
            raise ValueError("n_layers must be >= 0")
        check_init(init)  # before the graph is built, not after
        super().__init__(n_users, n_items, interactions)
        self.n_layers, self.reg_weight = n_layers, reg_weight
        self.user_embedding = nn.Embedding(n_users, embedding_dim)
        self.item_embedding = nn.Embedding(n_items, embedding_dim)
        init_embeddings([self.user_embedding, self.item_embedding], init, init_std)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        layer = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = layer
        for _ in range(self.n_layers):
            layer = propagate_layer(self.adjacency, layer)
            total = total + layer
        final = total / (self.n_layers + 1)
        return final[: self.n_users], final[self.n_users :]
