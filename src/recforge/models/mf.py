"""Matrix factorisation: biased MF for ratings and plain MF for implicit feedback (BPR-MF).

Koren, Bell and Volinsky. 2009. Matrix Factorization Techniques for Recommender Systems. IEEE Computer
42(8). Rendle et al. 2009. BPR: Bayesian Personalized Ranking from Implicit Feedback. UAI.
"""

from __future__ import annotations

import torch
from torch import nn

from recforge.models.base import Recommender, broadcast_users, init_embeddings, with_ones
from recforge.utils.linalg import candidates_by_product, inner_products


class MatrixFactorization(Recommender):
    """``score(u, i) = p_u . q_i`` plus, with ``use_bias``, ``mu + b_u + b_i`` (``mu`` starts at the
    training mean rating ``global_mean``). With ``loss=mse`` it is biased MF for ratings; with
    ``loss=bpr`` and ``use_bias=false`` it is BPR-MF.

    ``similarity="cosine"`` scores by the cosine of the two vectors instead of their dot product (no biases),
    the scores SimpleX's cosine contrastive loss (``loss=ccl``) expects: MF-CCL in Mao et al. 2021.

    ``init="normal"`` draws the factors from N(0, ``init_std``); ``init="xavier_normal"`` or ``"xavier_uniform"``
    from Glorot's, whose std ``sqrt(2 / (rows + embedding_dim))`` is set per table by its size (``init_std``
    unused), as RecBole initialises its embeddings: larger for a small catalogue, smaller for a large one.

    ``l2_reg`` adds the per-pair L2 penalty of :meth:`regularization` to the loss. ``sparse_grad`` makes the
    embedding gradients sparse (only the rows of a batch's users and items), for
    ``optimizer=sparse_adam``: a step then touches B rows instead of the whole tables, which on a CPU is most
    of an epoch's time for large catalogues."""

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64, use_bias: bool = True,
                 init_std: float = 0.1, global_mean: float = 0.0, sparse_grad: bool = False,
                 l2_reg: float = 0.0, similarity: str = "dot", init: str = "normal") -> None:
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must not be negative, got {l2_reg}")
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        if similarity == "cosine" and use_bias:
            raise ValueError("similarity='cosine' scores in [-1, 1] and takes no biases: set use_bias=false")
        self.n_users, self.n_items, self.use_bias, self.l2_reg = n_users, n_items, use_bias, l2_reg
        self.cosine = similarity == "cosine"
        self.user_embedding = nn.Embedding(n_users, embedding_dim, sparse=sparse_grad)
        self.item_embedding = nn.Embedding(n_items, embedding_dim, sparse=sparse_grad)
        init_embeddings([self.user_embedding, self.item_embedding], init, init_std)
        if use_bias:
            self.user_bias = nn.Embedding(n_users, 1, sparse=sparse_grad)
            self.item_bias = nn.Embedding(n_items, 1, sparse=sparse_grad)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``p_u``, the users' factors (SVD++ adds its implicit-feedback term)."""
        return self.user_embedding(users)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if candidates_by_product(items, self.n_items) and not self.item_embedding.sparse:
            # several negatives per positive, not shared (sparse gradients keep the gather: they touch B rows)
            score = self.products(users).gather(1, items)
        else:
            u, q = self._unit(self.user_vectors(users)), self._unit(self.item_embedding(items))
            score = ((u.unsqueeze(1) if items.dim() == 2 else u) * q).sum(-1)
        if self.use_bias:
            score = score + self.global_bias + self.user_bias(broadcast_users(users, items)).squeeze(-1) \
                + self.item_bias(items).squeeze(-1)
        return score

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = inner_products(self._unit(self.user_vectors(users)), self._unit(self.item_embedding(items)))
        if self.use_bias:
            score = score + self.global_bias + self.user_bias(users) + self.item_bias(items).squeeze(-1)
        return score

    def regularization(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``l2_reg * (||p_u||^2 + ||q_i||^2 + b_u^2 + b_i^2)`` averaged over the batch's pairs: the classic SGD
        regularisation of biased MF (Koren et al. 2009, Eq. 5), on the rows a batch touches only (unlike an
        optimizer's weight decay, which shrinks every row at every step)."""
        if not self.l2_reg:
            return users.new_zeros((), dtype=self.user_embedding.weight.dtype)
        # summed per distinct item, weighted by its count: with hundreds of negatives per row (many of them shared)
        # a gather of every pair's vector and its sparse gradient would cost more than the scores themselves
        pairs_per_user = items.numel() // len(users)
        items, counts = torch.unique(items, return_counts=True)
        total = pairs_per_user * self.user_embedding(users).pow(2).sum() \
            + (counts * self.item_embedding(items).pow(2).sum(-1)).sum()
        if self.use_bias:
            total = total + pairs_per_user * self.user_bias(users).pow(2).sum() \
                + (counts * self.item_bias(items).squeeze(-1).pow(2)).sum()
        return self.l2_reg * total / (pairs_per_user * len(users))

    def _unit(self, vectors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(vectors, dim=-1) if self.cosine else vectors

    def products(self, users: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)``: the users' vectors times every item's (the scores without biases)."""
        return inner_products(self._unit(self.user_vectors(users)), self.item_vectors())

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        score = self.products(users)
        if self.use_bias:
            score = score + self.global_bias + self.user_bias(users) + self.item_bias.weight.T
        return score

    def item_vectors(self) -> torch.Tensor:
        return self._unit(self.item_embedding.weight)

    def retrieval_items(self) -> torch.Tensor:
        """``q_i``; with biases ``[q_i, b_i, 1]`` against queries ``[p_u, 1, mu + b_u]``, so that the inner product
        is the score itself."""
        items = self.item_vectors()
        return with_ones(torch.cat([items, self.item_bias.weight], dim=1)) if self.use_bias else items

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        queries = self._unit(self.user_vectors(users))
        if not self.use_bias:
            return queries
        return torch.cat([with_ones(queries), self.global_bias + self.user_bias(users)], dim=1)
