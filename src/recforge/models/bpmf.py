"""Bayesian probabilistic matrix factorisation, fitted by Gibbs sampling.

Salakhutdinov and Mnih. 2008. Bayesian Probabilistic Matrix Factorization using Markov Chain Monte Carlo.
ICML. With user and item biases and a sampled noise precision, as the MCMC solver of libFM has them (Rendle.
2012. Factorization Machines with libFM. ACM TIST 3(3)).
"""

from __future__ import annotations

import torch

from recforge.models.base import Recommender, broadcast_users
from recforge.utils.linalg import inner_products


class BPMF(Recommender):
    """Ratings as ``r_ui ~ N(mean + b_u + b_i + p_u . q_i, 1 / alpha)`` with Gaussian user rows ``[p_u, b_u]``
    and item rows ``[q_i, b_i]`` whose means and precision matrices have Normal-Wishart hyperpriors
    (``beta0``; ``nu0`` = the row width; ``W0 = I``), and, with ``sample_noise``, a Gamma(1, 1) prior on the noise
    precision ``alpha`` (libFM's is Gamma(0.5, 0.5); with thousands of ratings the two do not differ), else
    ``alpha = noise_precision`` throughout.

    ``fit`` runs ``burn_in + samples`` Gibbs sweeps. Each sweep draws the hyperparameters, then every user row
    from its Gaussian conditional given the items (one batched Cholesky over users: the per-user precision
    ``Lambda + alpha sum_i x_i x_i^T`` is a scatter-add over ratings), then every item row, then ``alpha``.
    The prediction is the posterior mean, the average over the last ``samples`` draws. Since an average of
    inner products is one inner product of the draws side by side, the kept draws are stored as
    ``(n_users, samples * factors)`` and ``(n_items, samples * factors)`` matrices, and scoring is one matrix
    product. Memory: ``(n_users + n_items) * samples * factors`` floats.

    Having no learning rate, L2 or early stopping to tune, it is a strong rating baseline on small data, where
    point estimates overfit (MovieLens-100K: docs/results.md). Ratings are centred on their mean; ``noise_precision=2``
    is the paper's choice for 1-5 stars.
    """

    requires_training = False
    feedbacks = ("explicit",)

    def __init__(self, n_users: int, n_items: int, factors: int = 10, samples: int = 200, burn_in: int = 20,
                 use_bias: bool = True, noise_precision: float = 2.0, sample_noise: bool = True,
                 beta0: float = 2.0, init_std: float = 0.1) -> None:
        super().__init__()
        if factors < 1 or samples < 1 or burn_in < 0:
            raise ValueError(f"need factors >= 1, samples >= 1 and burn_in >= 0 (got {factors}, {samples}, {burn_in})")
        if noise_precision <= 0 or beta0 <= 0 or init_std < 0:
            raise ValueError("noise_precision and beta0 must be positive and init_std not negative")
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.samples, self.burn_in, self.use_bias = samples, burn_in, use_bias
        self.noise_precision, self.sample_noise, self.beta0, self.init_std = noise_precision, sample_noise, beta0, init_std
        self.register_buffer("user_factors", torch.zeros(n_users, samples * factors))
        self.register_buffer("item_factors", torch.zeros(n_items, samples * factors))
        self.register_buffer("user_bias", torch.zeros(n_users))
        self.register_buffer("item_bias", torch.zeros(n_items))
        self.register_buffer("mean", torch.zeros(()))
        self.noise_history: list[float] = []  # alpha after each sweep of the last fit()

    # ------------------------------------------------------------------ scoring
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        p = self.user_factors[users]
        q = self.item_factors[items]
        if items.dim() == 2:
            p = p.unsqueeze(1)
        return (p * q).sum(-1) + self.mean + self.user_bias[broadcast_users(users, items)] + self.item_bias[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        scores = inner_products(self.user_factors[users], self.item_factors)
        return scores + self.mean + self.user_bias[users].unsqueeze(1) + self.item_bias

    # ------------------------------------------------------------------ Gibbs sampling
    @torch.no_grad()
    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        device = self.user_factors.device
        width_kept = self.samples * self.factors
        if self.user_factors.shape[1] != width_kept:  # samples or factors changed since construction
            self.user_factors = self.user_factors.new_zeros(self.n_users, width_kept)
            self.item_factors = self.item_factors.new_zeros(self.n_items, width_kept)
        users, items = users.to(device).long(), items.to(device).long()
        ratings = ratings.to(device, torch.float64)
        mean = ratings.mean() if len(ratings) else ratings.new_zeros(())
        residual = ratings - mean
        d, width = self.factors, self.factors + int(self.use_bias)
        # each row is [factors, bias]; against the other side it is read as [factors, 1] (or [factors])
        user_rows = torch.randn(self.n_users, width, dtype=torch.float64, device=device) * self.init_std
        item_rows = torch.randn(self.n_items, width, dtype=torch.float64, device=device) * self.init_std
        if self.use_bias:
            user_rows[:, d] = 0.0
            item_rows[:, d] = 0.0
        alpha = float(self.noise_precision)
        bias_sums = [torch.zeros(n, dtype=torch.float64, device=device) for n in (self.n_users, self.n_items)]
        self.noise_history = []
        for sweep in range(self.burn_in + self.samples):
            mu, precision = _normal_wishart_draw(user_rows, self.beta0)
            target = residual - item_rows[items, d] if self.use_bias else residual
            user_rows = _conditional_draw(self.n_users, users, self._design(item_rows)[items], target, alpha, mu,
                                          precision)
            mu, precision = _normal_wishart_draw(item_rows, self.beta0)
            target = residual - user_rows[users, d] if self.use_bias else residual
            item_rows = _conditional_draw(self.n_items, items, self._design(user_rows)[users], target, alpha, mu,
                                          precision)
            if self.sample_noise:
                error = residual - self._predict(user_rows, item_rows, users, items)
                rate = 1.0 + 0.5 * float(error.pow(2).sum())
                alpha = float(torch.distributions.Gamma(torch.tensor(1.0 + 0.5 * len(ratings), dtype=torch.float64),
                                                        torch.tensor(rate, dtype=torch.float64)).sample())
            self.noise_history.append(alpha)
            kept = sweep - self.burn_in
            if kept >= 0:  # draw k fills columns [k d, (k + 1) d); the user side carries the 1 / samples
                self.user_factors[:, kept * d : (kept + 1) * d] = user_rows[:, :d] / self.samples
                self.item_factors[:, kept * d : (kept + 1) * d] = item_rows[:, :d]
                if self.use_bias:
                    bias_sums[0] += user_rows[:, d]
                    bias_sums[1] += item_rows[:, d]
        self.user_bias.copy_(bias_sums[0] / self.samples)
        self.item_bias.copy_(bias_sums[1] / self.samples)
        self.mean.fill_(float(mean))

    def _design(self, rows: torch.Tensor) -> torch.Tensor:
        """The other side's rows as regressors: ``[factors, 1]`` (the 1 carries this side's bias)."""
        if not self.use_bias:
            return rows
        return torch.cat([rows[:, : self.factors], rows.new_ones(len(rows), 1)], dim=1)

    def _predict(self, user_rows, item_rows, users, items) -> torch.Tensor:
        d = self.factors
        score = (user_rows[users, :d] * item_rows[items, :d]).sum(-1)
        if self.use_bias:
            score = score + user_rows[users, d] + item_rows[items, d]
        return score


def _normal_wishart_draw(rows: torch.Tensor, beta0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of the rows' Gaussian prior from their Normal-Wishart posterior (prior mean 0,
    strength ``beta0``, ``nu0`` = width, ``W0 = I``); Salakhutdinov and Mnih 2008, Eq. 14."""
    n, width = rows.shape
    row_mean = rows.mean(0)
    centred = rows - row_mean
    beta, nu = beta0 + n, width + n
    scale_inv = torch.eye(width, dtype=rows.dtype, device=rows.device) + centred.T @ centred \
        + (beta0 * n / beta) * torch.outer(row_mean, row_mean)
    precision = _wishart_draw(torch.linalg.inv(scale_inv), nu)
    chol = torch.linalg.cholesky(beta * precision)  # the mean's precision; draw mean + chol^-T z
    z = torch.randn(width, 1, dtype=rows.dtype, device=rows.device)
    mu = (n * row_mean) / beta + torch.linalg.solve_triangular(chol.T, z, upper=True).squeeze(1)
    return mu, precision


def _wishart_draw(scale: torch.Tensor, df: float) -> torch.Tensor:
    """One draw from Wishart(scale, df) by the Bartlett decomposition: ``L A A^T L^T`` with ``L L^T = scale``,
    ``A`` lower triangular, ``A_kk^2 ~ chi2(df - k)`` and standard normals below the diagonal."""
    width = scale.shape[0]
    scale = (scale + scale.T) / 2
    lower = torch.linalg.cholesky(scale)
    a = torch.randn(width, width, dtype=scale.dtype, device=scale.device).tril(-1)
    dof = torch.tensor([df - k for k in range(width)], dtype=scale.dtype, device=scale.device)
    a.diagonal().copy_(torch.distributions.Chi2(dof).sample().sqrt())
    la = lower @ a
    return la @ la.T


def _conditional_draw(n_rows: int, rows: torch.Tensor, design: torch.Tensor, target: torch.Tensor, alpha: float,
                      mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Every row's draw from ``N(S^-1 (alpha X_r^T y_r + Lambda mu), S^-1)`` with ``S = Lambda + alpha X_r^T X_r``,
    where ``X_r`` are the ``design`` rows of row r's observations and ``y_r`` their targets. The per-row Gram
    matrices are scatter-added in chunks of observations, then solved with one batched Cholesky."""
    width = design.shape[1]
    gram = torch.zeros(n_rows, width, width, dtype=design.dtype, device=design.device)
    chunk = max(1, (1 << 22) // (width * width))
    for start in range(0, len(rows), chunk):
        x = design[start : start + chunk]
        gram.index_add_(0, rows[start : start + chunk], x.unsqueeze(2) * x.unsqueeze(1))
    gram = gram * alpha + precision
    rhs = torch.zeros(n_rows, width, dtype=design.dtype, device=design.device).index_add_(
        0, rows, design * target.unsqueeze(1)) * alpha + precision @ mu
    chol = torch.linalg.cholesky(gram)
    mean = torch.cholesky_solve(rhs.unsqueeze(2), chol)
    noise = torch.linalg.solve_triangular(chol.transpose(1, 2), torch.randn_like(mean), upper=True)
    return (mean + noise).squeeze(2)

