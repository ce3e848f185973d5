"""Implicit alternating least squares (iALS / weighted matrix factorisation).

Hu, Koren and Volinsky. 2008. Collaborative Filtering for Implicit Feedback Datasets. ICDM.
Rendle, Krichene, Zhang and Koren. 2022. Revisiting the Performance of iALS on Item Recommendation
Benchmarks. RecSys. (Solver: the conjugate-gradient updates of Takacs, Pilaszy and Tikk. 2011. Applications
of the Conjugate Gradient Method for Implicit Feedback Collaborative Filtering. RecSys.)
"""

from __future__ import annotations

import torch

from recforge.models.base import Recommender, broadcast_users
from recforge.utils.linalg import inner_products


def ials_objective(user_factors: torch.Tensor, item_factors: torch.Tensor, users: torch.Tensor,
                   items: torch.Tensor, alpha: float, reg: float) -> torch.Tensor:
    """``sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2)`` with ``p_ui = 1`` and ``c_ui = 1 +
    alpha`` on the (deduplicated) observed pairs, ``p_ui = 0`` and ``c_ui = 1`` elsewhere, computed without
    the dense matrix: the all-zero-target term is ``<X^T X, Y^T Y>``."""
    keys = torch.unique(users.long() * len(item_factors) + items.long())
    u, i = keys // len(item_factors), keys % len(item_factors)
    dense_term = ((user_factors.T @ user_factors) * (item_factors.T @ item_factors)).sum()
    pred = (user_factors[u] * item_factors[i]).sum(-1)
    observed = ((1 + alpha) * (1 - pred) ** 2 - pred**2).sum()
    return dense_term + observed + reg * (user_factors.pow(2).sum() + item_factors.pow(2).sum())


class IALS(Recommender):
    """Weighted MF for implicit feedback: every (user, item) cell is a target (1 if observed, else 0) with
    confidence ``1 + alpha`` on observed cells and 1 elsewhere; ``factors``-d user and item factors with
    L2 ``reg`` are solved in turn for ``iterations`` sweeps. Each half-sweep solves all users' (items')
    ridge systems ``(Y^T Y + alpha sum_{i in I_u} y_i y_i^T + reg I) x_u = (1 + alpha) sum_{i in I_u} y_i``
    together with ``cg_steps`` warm-started conjugate-gradient steps, vectorised over users: the
    per-interaction term is a scatter-add, never a per-user matrix. Ratings are binarised."""

    requires_training = False
    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, factors: int = 32, alpha: float = 10.0, reg: float = 50.0,
                 iterations: int = 15, cg_steps: int = 3, init_std: float = 0.01) -> None:
        super().__init__()
        if factors < 1 or iterations < 0 or cg_steps < 1 or alpha < 0 or reg < 0:
            raise ValueError("need factors, cg_steps >= 1, iterations >= 0, alpha >= 0 and reg >= 0")
        self.n_users, self.n_items = n_users, n_items
        self.alpha, self.reg, self.iterations, self.cg_steps = alpha, reg, iterations, cg_steps
        self.register_buffer("user_factors", torch.randn(n_users, factors) * init_std)
        self.register_buffer("item_factors", torch.randn(n_items, factors) * init_std)
        self.objective_history: list[float] = []  # objective after each sweep, from the last fit()

    def _solve(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Update ``x`` (one side) given ``y`` (the other), where the observed pairs are ``(rows, cols)``."""
        gram = y.T @ y
        gram.diagonal().add_(self.reg)
        y_obs = y[cols]

        def apply(v: torch.Tensor) -> torch.Tensor:  # A_u v for every row u at once
            coef = self.alpha * (v[rows] * y_obs).sum(-1, keepdim=True)
            return (v @ gram).index_add_(0, rows, coef * y_obs)

        b = torch.zeros_like(x).index_add_(0, rows, (1 + self.alpha) * y_obs)
        residual = b - apply(x)
        direction = residual.clone()
        rs_old = residual.pow(2).sum(-1, keepdim=True)
        for _ in range(self.cg_steps):
            a_dir = apply(direction)
            step = rs_old / (direction * a_dir).sum(-1, keepdim=True).clamp_min(1e-20)
            x = x + step * direction
            residual = residual - step * a_dir
            rs_new = residual.pow(2).sum(-1, keepdim=True)
            direction = residual + (rs_new / rs_old.clamp_min(1e-20)) * direction
            rs_old = rs_new
        return x

    @torch.no_grad()
    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        device = self.user_factors.device
        keys = torch.unique(users.to(device).long() * self.n_items + items.to(device).long())
        u, i = keys // self.n_items, keys % self.n_items
        x, y = self.user_factors.clone(), self.item_factors.clone()
        self.objective_history = []
        for _ in range(self.iterations):
            x = self._solve(x, y, u, i)
            y = self._solve(y, x, i, u)
            self.objective_history.append(float(ials_objective(x, y, u, i, self.alpha, self.reg)))
        self.user_factors, self.item_factors = x, y

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_factors[broadcast_users(users, items)] * self.item_factors[items]).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return inner_products(self.user_factors[users], self.item_factors)

    def item_vectors(self) -> torch.Tensor:
        return self.item_factors

    def retrieval_items(self) -> torch.Tensor:
        return self.item_factors

    def retrieval_queries(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors[users]
