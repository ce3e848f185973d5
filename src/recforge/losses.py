"""Losses. Each says which feedback it learns from; ranking losses take positive and negative scores.

* Explicit (``feedback = "explicit"``): ``loss(pred, target)`` on ratings.
* Implicit (``feedback = "implicit"``): ``loss(pos, neg)`` with ``pos`` of shape ``(B,)`` and ``neg`` of
  shape ``(B, num_negatives)`` (negatives are sampled on the device by :mod:`recforge.samplers`).
* User-row losses (``view = "users"``, e.g. :class:`MultinomialLoss`): ``loss(logits, rows, kl)`` over whole
  rows of a batch of users; the data module then yields each training user once per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recforge.errors import RecForgeError


class Loss(nn.Module):
    """What every loss declares, read by the training module and the data module:

    * ``feedback``: ``"explicit"`` (ratings) or ``"implicit"``;
    * ``view``: what a training batch holds for models that do not choose (``interactions``, or ``users``: whole
      user rows);
    * ``full``: scores every item (a softmax over the catalogue) instead of sampled negatives;
    * ``num_negatives``: sampled negatives per positive (0: none);
    * ``logq_correction``: sampled scores arrive minus the log-probability of drawing each item;
    * ``logits``: the loss is a point-wise log loss, so the trained model's scores are logits of a probability
      (``sigmoid(score)``); the point-wise evaluation then also logs ``logloss``.
    """

    feedback: str = "implicit"
    view: str = "interactions"
    full: bool = False
    num_negatives: int = 0
    logq_correction: bool = False
    logits: bool = False

    def progress(self) -> dict:
        """Training progress a resumed run must get back (a schedule's step count); most losses have none. The
        training module saves it in every checkpoint and gives it back through :meth:`restore_progress`."""
        return {}

    def restore_progress(self, progress: dict) -> None:
        """Take back what :meth:`progress` returned when the checkpoint was written."""


class MSELoss(Loss):
    """Squared error on ratings (biased MF, Koren et al. 2009)."""

    feedback = "explicit"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


class SampledNegativesLoss(Loss):
    """A loss of each positive's score against ``num_negatives`` sampled negatives' scores: ``loss(pos, neg)``.
    A negative scored ``-inf`` (a positive of the row's user: every sampler's ``adjust`` masks them) is no pair:
    it adds no term and does not count in the mean (BPR and BCE: every kept pair weighs the same; the cosine
    contrastive loss: each row's negatives are averaged over its kept ones)."""

    def __init__(self, num_negatives: int) -> None:
        super().__init__()
        if num_negatives < 1:
            raise RecForgeError(f"loss.num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives


class BCELoss(SampledNegativesLoss):
    """Binary cross-entropy over one positive and ``num_negatives`` sampled negatives (NCF, He et al. 2017),
    averaged over the terms. A masked negative (``-inf``) is no term, as in the other sampled losses (PyTorch's
    own gives NaN for a logit of ``-inf``)."""

    logits = True

    def __init__(self, num_negatives: int = 4) -> None:
        super().__init__(num_negatives)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        pos_term = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
        kept = neg > float("-inf")
        neg_term = F.binary_cross_entropy_with_logits(neg.masked_fill(~kept, 0.0), torch.zeros_like(neg),
                                                      weight=kept.to(neg.dtype), reduction="sum")
        return (pos_term + neg_term) / (pos.numel() + kept.sum())


class BPRLoss(SampledNegativesLoss):
    """Bayesian personalised ranking, ``-log sigmoid(s_pos - s_neg)`` averaged over the (positive, negative)
    pairs, ``num_negatives`` per positive less the masked ones (Rendle et al. 2009)."""

    def __init__(self, num_negatives: int = 1) -> None:
        super().__init__(num_negatives)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        kept = neg > float("-inf")  # a masked pair's term is -log sigmoid(+inf) = 0; it must not count either
        return -F.logsigmoid(pos.unsqueeze(-1) - neg).sum() / kept.sum().clamp(min=1)


class SoftmaxLoss(Loss):
    """Cross-entropy of the target item under a softmax over the whole catalogue (``full``: the module passes all
    item logits): SASRec-CE / BERT4Rec / GRU4Rec's objective for sequences, and for pair models a softmax over
    ``score_all`` of the batch's users (Klenitskiy & Vasilev 2023 on why full CE beats BCE for SASRec)."""

    full = True

    def __init__(self, num_negatives: int = 0) -> None:
        super().__init__()
        self.num_negatives = 0  # every other item is a negative; a model file's num_negatives (for bce) is ignored

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class SampledSoftmaxLoss(SampledNegativesLoss):
    """Cross-entropy of the positive against ``num_negatives`` sampled negatives (a softmax over the positive and
    the samples): the cheap stand-in for :class:`SoftmaxLoss` on large catalogues. With ``logq_correction`` each
    logit loses the log-probability of drawing its item (a constant, which cancels, for uniform negatives; the
    correction that makes popularity and in-batch negatives estimate the full softmax; Yi et al. 2019)."""

    def __init__(self, num_negatives: int = 100, logq_correction: bool = True) -> None:
        super().__init__(num_negatives)
        self.logq_correction = logq_correction

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
        return (torch.logsumexp(logits, dim=-1) - pos).mean()


class CosineContrastiveLoss(SampledNegativesLoss):
    """SimpleX's cosine contrastive loss (Mao et al. 2021, "SimpleX: A Simple and Strong Baseline for
    Collaborative Filtering", CIKM): ``(1 - s_pos) + negative_weight * mean_j max(0, s_neg_j - margin)`` for cosine
    scores ``s`` in [-1, 1]; negatives already below the margin cost nothing, so many negatives (hundreds) can
    be used without the easy ones drowning the hard ones. Pair it with a model that scores by cosine similarity
    (``model=simplex``, or ``model.similarity=cosine`` for MF)."""

    def __init__(self, num_negatives: int = 256, margin: float = 0.9, negative_weight: float = 150.0) -> None:
        super().__init__(num_negatives)
        if not -1.0 <= margin <= 1.0:
            raise RecForgeError(f"loss.margin={margin} must lie in [-1, 1] (cosine scores), e.g. loss.margin=0.9")
        if negative_weight < 0:
            raise RecForgeError(f"loss.negative_weight={negative_weight} must be >= 0")
        self.margin, self.negative_weight = margin, negative_weight

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        kept = (neg > float("-inf")).sum(dim=-1).clamp(min=1)  # the mean over a row's unmasked negatives
        return ((1 - pos) + self.negative_weight * F.relu(neg - self.margin).sum(dim=-1) / kept).mean()


class MultinomialLoss(Loss):
    """Multinomial log-likelihood of a user's row under softmax item logits, plus ``beta`` times the KL term of
    a variational model, ``beta`` annealed linearly from 0 to ``anneal_cap`` over ``total_anneal_steps``
    training steps (Mult-VAE, Liang et al. 2018; ``anneal_cap=0`` trains Mult-DAE's objective)."""

    view = "users"

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

    def progress(self) -> dict:
        return {"steps": self.steps}  # the KL weight's schedule goes on from here when a run resumes

    def restore_progress(self, progress: dict) -> None:
        self.steps = progress.get("steps", 0)

    def forward(self, logits: torch.Tensor, rows: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        nll = -(F.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
        loss = nll + self.beta * kl
        if torch.is_grad_enabled():
            self.steps += 1
        return loss


class RowBCELoss(Loss):
    """Binary cross-entropy of a user's row (1 for training items, 0 otherwise) against item logits, summed over
    items and averaged over users (CDAE, Wu et al. 2016). Takes the KL argument of the user-row interface and
    ignores it.

    ``negative_ratio=None`` sums over the whole row. A number ``r`` is CDAE's negative sampling: each step keeps
    every positive and each of the user's negatives with probability ``min(1, r * n_pos / n_neg)`` (``r``
    negatives per positive in expectation, redrawn every step), so that the thousands of zeros of a long row do
    not drown its few ones.
    """

    view = "users"
    logits = True

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


class RowMSELoss(Loss):
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

    def forward(self, output: torch.Tensor, rows: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        observed = rows != 0
        squared = torch.where(observed, output - rows, torch.zeros_like(output)).pow(2)
        return squared.sum() / observed.sum().clamp(min=1)
