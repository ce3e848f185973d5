"""RecVAE: Mult-VAE with a composite prior, a user-specific KL weight and alternating encoder/decoder updates.

Shenbin, Alekseev, Tutubalina, Malykh and Nikolenko. 2020. RecVAE: A New Variational Autoencoder for Top-N
Recommendations with Implicit Feedback. WSDM.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from recforge.models.base import RowInputRecommender, reparameterize, row_linear
from recforge.models.mlp import xavier_init_

# the composite prior's weights: standard normal, the previous encoder's posterior, a wide normal (paper, Eq. 5)
MIXTURE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)
WIDE_LOGVAR = 10.0
LINEAR_INITS = ("torch", "xavier_normal")


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | float) -> torch.Tensor:
    """Elementwise ``log N(z; mu, exp(logvar))``."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())


class Encoder(nn.Module):
    """The L2-normalised row, input dropout, then five densely connected layers (each adds the outputs of the
    ones before it), swish and layer normalisation (eps 0.1), to a Gaussian's mean and log-variance."""

    def __init__(self, n_items: int, hidden_dim: int, latent_dim: int, depth: int = 5) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(n_items if k == 0 else hidden_dim, hidden_dim) for k in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim, eps=0.1) for _ in range(depth))
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.dropout(F.normalize(x, dim=1), p=dropout, training=dropout > 0)
        total = None  # the sum of the previous layers' outputs
        for layer, norm in zip(self.layers, self.norms):
            pre = row_linear(h, layer) if total is None else layer(h) + total
            h = norm(F.silu(pre))
            total = h if total is None else total + h
        return self.mu(h), self.logvar(h)


class RecVAE(RowInputRecommender):
    """A user's row is encoded by :class:`Encoder` (``hidden_dim`` wide, ``latent_dim`` latent) and decoded by one
    linear layer to item logits, trained with ``loss=multinomial`` on batches of users.

    * Composite prior: ``p(z) = 3/20 N(0, I) + 3/4 q_old(z | x) + 1/10 N(0, e^10 I)`` per latent dimension, where
      ``q_old`` is a frozen copy of the encoder taken at the end of its last training phase.
    * User-specific KL weight: the KL term (a one-sample estimate of ``log q(z|x) - log p(z)``) of user ``u`` is
      weighted by ``gamma * |I_u|``; :meth:`reconstruct` returns it already weighted, so the loss's own weight must
      be 1 (``loss.anneal_cap: 1``, ``loss.total_anneal_steps: 1``; the loss gives the first step weight 0).
    * Alternating updates: ``encoder_epochs`` epochs train the encoder (input ``dropout``; the decoder is
      detached), then ``decoder_epochs`` epochs train the decoder (no dropout; the encoder is detached), and so on.
      The training loop has one optimizer over all parameters; a parameter that gets no gradient in a step is
      not touched by it (Adam skips it, momentum included), which gives the paper's two optimizers' updates. The
      model counts the users it has been trained on: an epoch is as many as distinct users in ``interactions``
      (the data module serves each training user once per epoch), so the phases change at epoch boundaries, as
      in the reference code (under DDP each process counts only its share, so a phase lasts as many epochs as
      there are processes). The frozen copy is refreshed at every decoder step (the encoder does not change
      during that phase, so this is the reference's one copy at its start).

    ``init``: ``xavier_normal`` (the default, chosen on validation: ``docs/defaults.md#recvae``) draws every linear
    weight from Glorot's normal and zeroes the biases, as RecBole initialises its RecVAE (Mult-VAE's reference code
    takes Glorot's uniform, the same variance); ``torch`` keeps PyTorch's default (uniform, scale
    ``1/sqrt(fan_in)``), as RecVAE's reference code.
    On 17,600 items Glorot's start makes the decoder's weights about 4x smaller and the first layer's 2.4x larger.

    ``noise_scale`` multiplies the posterior's standard deviation in the training sample ``z = mu + noise_scale *
    sigma * eps``: 1 is the paper's reparameterisation; RecBole draws ``eps`` with standard deviation 0.01 (so its
    decoder trains on ``z`` close to the mean it is scored on, while its KL term still reads the full ``sigma``).

    Scores decode the mean of the posterior. The paper's setting: 600 hidden, 200 latent, dropout 0.5, gamma
    0.005, Adam lr 5e-4, 500 users a batch, 3 encoder epochs per decoder epoch."""

    feedbacks = ("implicit",)
    answers_histories = True  # a history is an input row

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 hidden_dim: int = 600, latent_dim: int = 200, dropout: float = 0.5, gamma: float = 0.005,
                 encoder_epochs: int = 3, decoder_epochs: int = 1, init: str = "xavier_normal",
                 noise_scale: float = 1.0) -> None:
        if not 0 <= dropout < 1 or gamma < 0 or noise_scale < 0 or encoder_epochs < 1 or decoder_epochs < 1:
            raise ValueError("need 0 <= dropout < 1, gamma >= 0, noise_scale >= 0 and encoder_epochs, "
                             "decoder_epochs >= 1")
        if init not in LINEAR_INITS:
            raise ValueError(f"init must be one of {', '.join(LINEAR_INITS)}, got {init!r}")
        super().__init__(n_users, n_items, interactions)
        self.dropout, self.gamma, self.noise_scale = dropout, gamma, noise_scale
        self.encoder_epochs, self.decoder_epochs = encoder_epochs, decoder_epochs
        self.encoder = Encoder(n_items, hidden_dim, latent_dim)
        self.decoder = nn.Linear(latent_dim, n_items)
        if init == "xavier_normal":
            xavier_init_(self, normal=True)
        self.prior_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.users_per_epoch = max(1, int((self.history_indptr.diff() > 0).sum()))
        self.register_buffer("users_seen", torch.zeros((), dtype=torch.long))

    def training_decoder(self) -> bool:
        """Whether this training step is in a decoder phase (from the number of users trained on so far)."""
        epoch = int(self.users_seen) // self.users_per_epoch
        return epoch % (self.encoder_epochs + self.decoder_epochs) >= self.encoder_epochs

    def log_prior(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log p(z)`` of the composite prior for input rows ``x``."""
        with torch.no_grad():
            old_mu, old_logvar = self.prior_encoder(x, 0.0)
        parts = torch.stack([log_normal(z, 0.0, 0.0), log_normal(z, old_mu, old_logvar),
                             log_normal(z, 0.0, WIDE_LOGVAR)], dim=-1)
        return torch.logsumexp(parts + torch.tensor(MIXTURE_WEIGHTS, device=z.device).log(), dim=-1)

    def reconstruct(self, x: torch.Tensor, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(item logits, the weighted KL term averaged over the batch)``; a training step (training mode with
        autograd) trains the encoder or the decoder, as its phase says."""
        step = self.training and torch.is_grad_enabled()
        decoder_step = step and self.training_decoder()
        if decoder_step:
            with torch.no_grad():
                for old, new in zip(self.prior_encoder.parameters(), self.encoder.parameters()):
                    old.copy_(new)
        if step:
            self.users_seen += len(x)
        mu, logvar = self.encoder(x, self.dropout if step and not decoder_step else 0.0)
        if decoder_step:
            mu, logvar = mu.detach(), logvar.detach()
        z = reparameterize(mu, logvar, self.noise_scale) if self.training else mu
        weight, bias = self.decoder.weight, self.decoder.bias
        if step and not decoder_step:
            weight, bias = weight.detach(), bias.detach()
        logits = F.linear(z, weight, bias)
        if not self.training:
            return logits, logits.new_zeros(())
        kl = (log_normal(z, mu, logvar) - self.log_prior(x, z)).sum(dim=1)
        return logits, (kl * self.gamma * x.sum(dim=1)).mean()

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_rows(self.user_rows(users))

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(rows)[0]
