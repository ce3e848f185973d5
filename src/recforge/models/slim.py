"""SLIM with an elastic-net penalty: sparse non-negative item-item regression weights.

Ning and Karypis. 2011. SLIM: Sparse Linear Methods for Top-N Recommender Systems. ICDM. (Tuned as the
``SLIMElasticNet`` baseline of Dacrema, Cremonesi and Jannach. 2019. Are We Really Making Much Progress? RecSys.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from recforge.errors import RecForgeError
from recforge.models.ease import product_chunks
from recforge.models.itemknn import ItemNeighbourhood

BLOCK = 256  # source items whose residual rows one matrix product refreshes
CANDIDATE_ELEMENTS = 1 << 25  # floats of one block of fsSLIM targets' candidate Gram matrices (128 MB)


class SLIMElasticNet(ItemNeighbourhood):
    """For every target item ``j``, ``w_j = argmin 1/2 ||X_j - X w||^2 + l2_reg/2 ||w||^2 + l1_reg ||w||_1``
    subject to ``w >= 0`` and ``w_jj = 0`` over binary training rows ``X`` (the paper's Eq. 2); each target keeps
    its ``k_neighbors`` largest weights and ``score(u, j) = sum_{i in I_u} w_ij``. In the scale of scikit-learn's
    ``ElasticNet(alpha, l1_ratio)`` used by Dacrema et al., ``l1_reg = alpha * l1_ratio * n_users`` and ``l2_reg =
    alpha * (1 - l1_ratio) * n_users``.

    Solved by cyclic coordinate descent on all targets at once, from the Gram matrix ``G = X^T X``: one step
    updates coefficient ``i`` of every target, ``w_ij = max(0, G_ij - sum_{k != i} G_ik w_kj - l1_reg) / (G_ii +
    l2_reg)`` (exact coordinate descent for each target's problem, which are independent). The sums ``(G W)_i`` of
    ``BLOCK`` coefficients are refreshed by one matrix product and kept current by rank-one updates inside the
    block. A sweep over all ``n`` coefficients costs about ``n^3`` multiply-adds; sweeps stop after ``max_iter``
    or when no weight moved by more than ``tol`` times the largest weight.

    Memory: ``G`` and ``W`` (two ``n x n`` float32 matrices, 8 n^2 bytes). Time, estimated from the flop count
    at 50-100 GFLOPS for the 2-core machine's float32 products: about 10-20 s per sweep at 10,000 items, 1.5-3
    minutes at 20,000, 12-25 minutes at Gowalla's 40,981 (13 GB, hours for a fit). ``max_items`` (20,000) refuses
    larger catalogues before any work; raise it to fit them anyway.

    ``candidates`` (fsSLIM, the paper's SLIM with feature selection) restricts each target's regression to the
    ``candidates`` items most similar to it by cosine over the training rows (an item is never its own candidate);
    weights outside them are 0. Each target is then a ``candidates x candidates`` problem, solved by the same
    coordinate descent for a block of targets at once, about ``n * candidates^2`` multiply-adds a sweep instead of
    ``n^3``, with ``G`` (4 n^2 bytes: 6.7 GB at Gowalla's 40,981 items) the memory. With every other item a
    candidate it is SLIM itself (``candidates`` above ``n_items - 1`` means all of them). ``max_items`` applies
    to the full solve only."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 l1_reg: float = 1.0, l2_reg: float = 10.0, k_neighbors: int = 100, max_iter: int = 30,
                 tol: float = 1e-4, max_items: int = 20_000, candidates: int | None = None) -> None:
        if candidates is not None:
            if candidates < 1:
                raise RecForgeError(f"model.candidates={candidates}: each item's regression needs at least 1 "
                                    "candidate item; set a positive number (200 by default), or null for full SLIM")
            candidates = min(candidates, n_items - 1)  # more than the other items: all of them, SLIM itself
        if candidates is None and n_items > max_items:
            raise RecForgeError(f"model.max_items={max_items}: SLIM's fit holds two {n_items} x {n_items} matrices "
                                f"and costs about {n_items}^3 multiply-adds a sweep; set model.max_items={n_items} "
                                "to fit it anyway, model.candidates=200 for fsSLIM (each item regressed on its 200 "
                                "nearest items), or model=ease (dtype float32) or model=rp3beta")
        super().__init__(n_users, n_items, interactions, k_neighbors)
        if l1_reg < 0 or l2_reg < 0 or max_iter < 1 or tol < 0:
            raise ValueError("need l1_reg, l2_reg, tol >= 0 and max_iter >= 1")
        self.l1_reg, self.l2_reg, self.max_iter, self.tol = l1_reg, l2_reg, max_iter, tol
        self.candidates = candidates
        self.sweeps = 0  # coordinate-descent sweeps of the last fit()

    @torch.no_grad()
    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        device = self.neighbor_sim.device
        x = self.set_history(users, items, device)
        gram = torch.empty(self.n_items, self.n_items, device=device)
        for cols, block in product_chunks(x.t().coalesce(), x):
            gram[:, cols] = block
        if self.candidates is not None:
            self.keep_neighbours(self.candidate_descent(gram))
            return
        weights = self.coordinate_descent(gram)
        del gram
        self.keep_neighbours((cols, weights[:, cols].T) for cols in torch.arange(self.n_items, device=device)
                             .split(BLOCK * 16))

    def coordinate(self, rho: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
        """The elastic net's exact minimiser along one non-negative coordinate: ``max(0, rho - l1_reg) / (G_ii +
        l2_reg)``, with ``rho = G_ij - sum_{k != i} G_ik w_kj``."""
        return (rho - self.l1_reg).clamp_(min=0) / divisor

    def coordinate_descent(self, gram: torch.Tensor) -> torch.Tensor:
        """``W`` (``W[i, j]``: the weight of source ``i`` for target ``j``) from the Gram matrix."""
        n = len(gram)
        weights = torch.zeros_like(gram)
        diagonal = gram.diagonal()
        # an item without training users has G_ii = 0 and rho = 0: any positive divisor gives it weight 0
        divisor = (diagonal + self.l2_reg).clamp_min(1e-12)
        for sweep in range(1, self.max_iter + 1):
            self.sweeps = sweep
            largest_change = gram.new_zeros(())
            for start in range(0, n, BLOCK):
                stop = min(start + BLOCK, n)
                sums = gram[start:stop] @ weights  # (G W)[i, :] for the block's sources i
                for t, i in enumerate(range(start, stop)):
                    rho = gram[i] - sums[t] + diagonal[i] * weights[i]
                    new = self.coordinate(rho, divisor[i])
                    new[i] = 0.0
                    change = new - weights[i]
                    weights[i] = new
                    sums[t + 1:] += gram[start + t + 1:stop, i, None] * change
                    largest_change = torch.maximum(largest_change, change.abs().max())
            if largest_change <= self.tol * weights.max():
                break
        return weights

    def candidate_descent(self, gram: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """fsSLIM: ``(targets, weights)`` blocks, ``weights[t, i]`` the weight of source ``i`` for target
        ``targets[t]`` (0 outside its candidates), from coordinate descent on each target's candidate block of
        ``G``. A block's sweeps stop as the full solve's do, on the block's largest change."""
        n, c = self.n_items, self.candidates
        norms = gram.diagonal().sqrt().clamp_min(1e-12)
        self.sweeps = 0
        for targets in torch.arange(n, device=gram.device).split(max(1, CANDIDATE_ELEMENTS // max(c * c, n))):
            rows = torch.arange(len(targets), device=gram.device)
            cosine = gram[:, targets].T / (norms[targets, None] * norms)   # (targets, items)
            cosine[rows, targets] = -1.0   # never its own candidate
            chosen = cosine.topk(c, dim=1).indices.sort(dim=1).values   # in item order, as the full solve sweeps
            del cosine
            block = gram[chosen[:, :, None], chosen[:, None, :]]   # G restricted to each target's candidates
            target_gram = gram[chosen, targets[:, None]]           # G_ij for candidates i of target j
            diagonal = block.diagonal(dim1=1, dim2=2)
            divisor = (diagonal + self.l2_reg).clamp_min(1e-12)
            weights = target_gram.new_zeros(len(targets), c)
            sums = torch.zeros_like(weights)   # (G_C w)_i, kept current
            for sweep in range(1, self.max_iter + 1):
                self.sweeps = max(self.sweeps, sweep)
                largest_change = weights.new_zeros(())
                for i in range(c):
                    rho = target_gram[:, i] - sums[:, i] + diagonal[:, i] * weights[:, i]
                    change = self.coordinate(rho, divisor[:, i]) - weights[:, i]
                    weights[:, i] += change
                    sums += block[:, i] * change[:, None]   # row i: contiguous, and G is symmetric
                    largest_change = torch.maximum(largest_change, change.abs().max())
                if largest_change <= self.tol * weights.max():
                    break
            dense = weights.new_zeros(len(targets), n)
            yield targets, dense.scatter_(1, chosen, weights)
