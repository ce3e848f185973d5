"""Mult-VAE and Mult-DAE: autoencoders of a user's whole interaction row with a multinomial likelihood.

Liang, Krishnan, Hoffman and Jebara. 2018. Variational Autoencoders for Collaborative Filtering. WWW.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import RowInputRecommender, reparameterize, row_linear


class MultVAE(RowInputRecommender):
    """Encoder ``[n_items] -> hidden_dims -> latent_dim`` (tanh), symmetric decoder back to item logits.

    The input is the user's training row (multi-hot), L2-normalised, with ``dropout`` on it during training.
    ``variational=True`` is Mult-VAE (a Gaussian latent; :meth:`reconstruct` also returns the KL term, which
    ``loss=multinomial`` anneals); ``variational=False`` is Mult-DAE (a deterministic latent; regularise it
    with ``optimizer.weight_decay``). ``noise_scale`` multiplies the posterior's standard deviation in the training
    sample ``z = mu + noise_scale * sigma * eps``: 1 is the paper's reparameterisation, RecBole draws ``eps`` with
    standard deviation 0.01 (its KL term still reads the full ``sigma``). Trained with ``loss=multinomial`` on
    batches of users, each once per epoch. ``score_all`` decodes the user's training row, so users are those of the
    training data (weak generalisation; a user's held-out items are never part of its input)."""

    feedbacks = ("implicit",)
    answers_histories = True  # a history is an input row

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 hidden_dims: Sequence[int] = (600,), latent_dim: int = 200, dropout: float = 0.5,
                 variational: bool = True, noise_scale: float = 1.0) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        super().__init__(n_users, n_items, interactions)
        self.variational, self.noise_scale = variational, noise_scale
        dims = [n_items, *hidden_dims]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.to_latent = nn.Linear(dims[-1], latent_dim * (2 if variational else 1))
        back = [latent_dim, *reversed(hidden_dims), n_items]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(back[:-1], back[1:]))
        self.dropout = nn.Dropout(dropout)
        for layer in [*self.encoder, self.to_latent, *self.decoder]:  # the reference code's initialisation
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    def reconstruct(self, x: torch.Tensor, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(item logits, KL divergence to the prior averaged over the batch)`` for input rows ``x`` (the users
        themselves play no part: Mult-VAE generalises to any row)."""
        h = self.dropout(F.normalize(x, dim=1))
        for k, layer in enumerate(self.encoder):
            h = torch.tanh(row_linear(h, layer) if k == 0 else layer(h))
        latent = self.to_latent(h)
        kl = latent.new_zeros(())
        if self.variational:
            mu, logvar = latent.chunk(2, dim=1)
            z = reparameterize(mu, logvar, self.noise_scale) if self.training else mu
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        else:
            z = latent
        for i, layer in enumerate(self.decoder):
            z = layer(z)
            if i < len(self.decoder) - 1:
                z = torch.tanh(z)
        return z, kl

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_rows(self.user_rows(users))

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(rows)[0]
