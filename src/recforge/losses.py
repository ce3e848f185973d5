"""Losses. Each says which feedback it learns from; ranking losses take positive and negative scores.

* Explicit (``feedback = "explicit"``): ``loss(pred, target)`` on ratings.
* Implicit (``feedback = "implicit"``): ``loss(pos, neg)`` with ``pos`` of shape ``(B,)`` and ``neg`` of
  shape ``(B, num_negatives)`` (negatives are sampled on the device by :class:`NegativeSampler`).
* User-row losses (``view = "users"``, e.g. :class:`MultinomialLoss`): ``loss(logits, rows, kl)`` over whole
  rows of a batch of users; the data module then yields each training user once per epoch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recforge.errors import RecForgeError


class MSELoss(nn.Module):
    """Squared error on ratings (biased MF, Koren et al. 2009)."""

    feedback = "explicit"
    num_negatives = 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


class SampledNegativesLoss(nn.Module):
    """A loss of each positive's score against ``num_negatives`` sampled negatives' scores: ``loss(pos, neg)``."""

    feedback = "implicit"

    def __init__(self, num_negatives: int) -> None:
        super().__init__()
        if num_negatives < 1:
            raise RecForgeError(f"loss.num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives


class BCELoss(SampledNegativesLoss):
    """Binary cross-entropy over one positive and ``num_negatives`` sampled negatives (NCF, He et al. 2017)."""

    def __init__(self, num_negatives: int = 4) -> None:
        super().__init__(num_negatives)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        pos_term = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
        neg_term = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")
        return (pos_term + neg_term) / (pos.numel() + neg.numel())


class BPRLoss(SampledNegativesLoss):
    """Bayesian personalised ranking, ``-log sigmoid(s_pos - s_neg)`` averaged over ``num_negatives``
    negatives per positive (Rendle et al. 2009)."""

    def __init__(self, num_negatives: int = 1) -> None:
        super().__init__(num_negatives)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(pos.unsqueeze(-1) - neg).mean()


class SoftmaxLoss(nn.Module):
    """Cross-entropy of the target item under a softmax over the whole catalogue (``full``: the module passes all
    item logits): SASRec-CE / BERT4Rec / GRU4Rec's objective for sequences, and for pair models a softmax over
    ``score_all`` of the batch's users (Klenitskiy & Vasilev 2023 on why full CE beats BCE for SASRec)."""

    feedback = "implicit"
    full = True

    def __init__(self, num_negatives: int = 0) -> None:
        super().__init__()
        self.num_negatives = 0  # every other item is a negative; a model file's num_negatives (for bce) is ignored

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class SampledSoftmaxLoss(SampledNegativesLoss):
    """Cross-entropy of the positive against ``num_negatives`` uniformly sampled negatives (a softmax over the
    positive and the samples; uniform sampling makes the log-Q correction a constant, which cancels). The
    cheap stand-in for :class:`SoftmaxLoss` on large catalogues."""

    def __init__(self, num_negatives: int = 100) -> None:
        super().__init__(num_negatives)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
        return (torch.logsumexp(logits, dim=-1) - pos).mean()


class MultinomialLoss(nn.Module):
    """Multinomial log-likelihood of a user's row under softmax item logits, plus ``beta`` times the KL term of
    a variational model, ``beta`` annealed linearly from 0 to ``anneal_cap`` over ``total_anneal_steps``
    training steps (Mult-VAE, Liang et al. 2018; ``anneal_cap=0`` trains Mult-DAE's objective)."""

    feedback = "implicit"
    view = "users"
    num_negatives = 0

    def __init__(self, anneal_cap: float = 0.2, total_anneal_steps: int = 200_000) -> None:
        super().__init__()
        if anneal_cap < 0 or total_anneal_steps < 1:
            raise RecForgeError(f"loss.anneal_cap={anneal_cap} must be >= 0 and loss.total_anneal_steps="
                                f"{total_anneal_steps} >= 1")
        self.anneal_cap, self.total_anneal_steps = anneal_cap, total_anneal_steps
        self.steps = 0

    @property
    def beta(self) -> float:
        return min(self.anneal_cap, self.steps / self.total_anneal_steps)

    def forward(self, logits: torch.Tensor, rows: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        nll = -(F.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
        loss = nll + self.beta * kl
        if torch.is_grad_enabled():
            self.steps += 1
        return loss


class RowBCELoss(nn.Module):
    """Binary cross-entropy of a user's row (1 for training items, 0 otherwise) against item logits, summed over
    items and averaged over users (CDAE, Wu et al. 2016). Takes the KL argument of the user-row interface and
    ignores it.

    ``negative_ratio=None`` sums over the whole row. A number ``r`` is CDAE's negative sampling: each step keeps
    every positive and each of the user's negatives with probability ``min(1, r * n_pos / n_neg)`` (``r``
    negatives per positive in expectation, redrawn every step), so that the thousands of zeros of a long row do
    not drown its few ones.
    """

    feedback = "implicit"
    view = "users"
    num_negatives = 0

    def __init__(self, negative_ratio: float | None = None) -> None:
        super().__init__()
        if negative_ratio is not None and negative_ratio <= 0:
            raise RecForgeError(f"loss.negative_ratio must be positive or null (whole rows), got {negative_ratio}")
        self.negative_ratio = negative_ratio

    def forward(self, logits: torch.Tensor, rows: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, rows, reduction="none")
        if self.negative_ratio is not None:
            positive = rows > 0
            n_pos = positive.sum(dim=1, keepdim=True)
            keep_prob = (self.negative_ratio * n_pos / (rows.shape[1] - n_pos).clamp(min=1)).clamp(max=1.0)
            # float32 draws: under bf16/fp16 autocast the logits' dtype would round the draws to 1/256 steps and
            # keep small probabilities several times too often
            keep = positive | (torch.rand(logits.shape, device=logits.device) < keep_prob)
            loss = loss * keep
        return loss.sum(dim=1).mean()


_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64: Fibonacci (multiplicative) hashing


class NegativeSampler(nn.Module):
    """Uniform negatives drawn on the device, redrawn where they hit a training positive.

    Positives are found by binary search in the sorted ``user * n_items + item`` keys; after ``retries``
    redraws the rare remaining collisions are kept (no host sync in the training loop on an accelerator). On a
    CPU, where a binary search over a large key array (a cache miss at every level) costs more than a whole
    BPR-MF step's arithmetic, a one-hash Bloom filter of the keys (32 bits per key, mostly in cache; ~3% false
    positives) clears most draws first and only the draws it flags are searched.
    """

    def __init__(self, n_items: int, positive_keys: torch.Tensor, retries: int = 2) -> None:
        super().__init__()
        self.n_items, self.retries = n_items, retries
        self.register_buffer("positive_keys", positive_keys, persistent=False)
        self._bloom: tuple[tuple[int, int, int], torch.Tensor, int] | None = None  # (keys' identity, bits, shift)

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` items -> whether ``(users[b], item)`` is a training positive."""
        keys = users.reshape(-1, *([1] * (items.dim() - 1))) * self.n_items + items
        if keys.device.type != "cpu":
            return self._search(keys)
        bits, shift = self._bloom_filter()
        flat = keys.reshape(-1)
        slot = ((flat * _GOLDEN) >> shift) & ((1 << (64 - shift)) - 1)
        flagged = ((bits[slot >> 3] >> (slot & 7)) & 1).nonzero().squeeze(1)
        found = torch.zeros(flat.shape, dtype=torch.bool)
        found[flagged] = self._search(flat[flagged])
        return found.view(keys.shape)

    def _search(self, keys: torch.Tensor) -> torch.Tensor:
        idx = torch.searchsorted(self.positive_keys, keys).clamp_(max=len(self.positive_keys) - 1)
        return self.positive_keys[idx] == keys

    def _bloom_filter(self) -> tuple[torch.Tensor, int]:
        """The bit array (uint8) and hash shift of the keys' filter, rebuilt whenever the keys change."""
        keys = self.positive_keys
        source = (keys.data_ptr(), keys._version, len(keys))
        if self._bloom is None or self._bloom[0] != source:
            n_bits = max(10, math.ceil(math.log2(max(1, len(keys)) * 32)))
            slot = torch.unique(((keys.long() * _GOLDEN) >> (64 - n_bits)) & ((1 << n_bits) - 1))
            bits = torch.zeros(1 << (n_bits - 3), dtype=torch.int32)  # distinct bits of a byte sum to <= 255
            bits.index_add_(0, slot >> 3, (1 << (slot & 7)).int())
            self._bloom = (source, bits.to(torch.uint8), 64 - n_bits)
        return self._bloom[1], self._bloom[2]

    def forward(self, users: torch.Tensor, num_negatives: int) -> torch.Tensor:
        """``(B, num_negatives)`` negatives: of ``retries + 1`` uniform draws per slot, the first that is not a
        training positive of the slot's user (the last draw when all are), which is what drawing, checking and
        redrawing ``retries`` times gives, in a fixed number of vectorised operations."""
        draws = torch.randint(self.n_items, (len(users), num_negatives, self.retries + 1), device=users.device)
        accept = ~self.is_positive(users, draws)
        accept[..., -1] = True
        first = accept.to(torch.uint8).argmax(dim=-1, keepdim=True)  # argmax returns the first maximum
        return draws.gather(-1, first).squeeze(-1)


class RowMSELoss(nn.Module):
    """Squared error of reconstructed rating rows on the observed entries only (AutoRec, Sedhain et al. 2015).

    ``rows`` are dense rating rows with 0 for "not rated" (models store an observed rating of exactly 0 as a tiny
    non-zero, as the data module's matrices do), so the observed mask is ``rows != 0``. The sum of squared errors
    is divided by the number of observed entries in the batch (a mean per rating, not per row): a rating weighs
    the same whether its row holds 3 ratings or 3,000, and the scale (hence ``lr`` and ``weight_decay``) does not
    change between item rows (I-AutoRec) and user rows (U-AutoRec). The paper's objective is the plain sum, which
    differs from this by the batch's rating count. The ``kl`` argument of the row interface is ignored.
    """

    feedback = "explicit"
    view = "users"
    num_negatives = 0

    def forward(self, output: torch.Tensor, rows: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        observed = rows != 0
        squared = torch.where(observed, output - rows, torch.zeros_like(output)).pow(2)
        return squared.sum() / observed.sum().clamp(min=1)
