"""Negative samplers: which items a positive is contrasted with, drawn on the device in a few vectorised steps.

``sampler(users, n, positives=..., scorer=...)`` gives ``(B, n)`` negatives; ``sampler.adjust`` then corrects the
candidates' scores for how they were drawn. The options (``sampler=...`` in the config):

* :class:`NegativeSampler` (``uniform``): every item equally likely; draws that hit a training positive of the
  user are redrawn ``retries`` times, and a negative that is still one scores ``-inf`` (no term).
* :class:`PopularitySampler` (``popularity``): items in proportion to ``count ** alpha`` (word2vec's 0.75; Mikolov
  et al. 2013), so popular items, the ones a model most needs to learn to push down, come more often.
* :class:`InBatchSampler` (``in_batch``): the other positives of the batch, i.e. items by their popularity at no
  sampling cost (Covington et al. 2016; Yi et al. 2019). A negative that is a positive of the row's user is
  masked; with ``loss.logq_correction`` the scores lose ``log q(item)``, the item's share of the positives.
* :class:`HardNegativeSampler` (``hard``): dynamic negative sampling (Zhang et al. 2013, "Optimizing top-n
  collaborative filtering via dynamic negative item sampling", SIGIR): of ``pool_size`` uniform candidates per
  negative, the one the current model scores highest.

``shared=True`` (``uniform`` and ``popularity``) draws one set of ``n`` negatives for the whole batch instead of
``n`` per row: every row is scored against the same items, one ``(B, d) x (d, n)`` product for the models that
score by inner products (:meth:`~recforge.models.base.Recommender.score_items`), which makes hundreds of
negatives per positive affordable on a CPU (as TensorFlow's sampled softmax shares its draws). A shared negative
that is a training positive of a row's user scores ``-inf`` for that row (no term), as in-batch negatives do.

Whatever the sampler, :meth:`~NegativeSampler.adjust` gives every negative that is a training positive of its row's
user the score ``-inf``, so no loss ever trains a user's positive as its negative: the sampled losses average over the
terms left. After two redraws such collisions are rare under uniform draws (on MovieLens 100K's random split 0.26% of
the negatives, at most 4% of one user's) but not under popularity draws, which seek out the popular items that heavy
users have (alpha 0.75: 1.9%, up to about 14% of one user's). RecBole redraws until none is left, which costs a host
sync a step and, for a user with most of the items, many redraws. One exception: UltraGCN's constraint loss
(:meth:`~recforge.models.ultragcn.UltraGCN.regularization`) reads the drawn candidates themselves, as its reference
code does, which draws its negatives without checking them at all.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from recforge.errors import RecForgeError

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``scorer(users (B,), items (B, n)) -> (B, n)`` scores of the model being trained."""

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64: Fibonacci (multiplicative) hashing


class NegativeSampler(nn.Module):
    """Uniform negatives drawn on the device, redrawn where they hit a training positive.

    Positives are found by binary search in the sorted ``user * n_items + item`` keys; after ``retries``
    redraws a remaining collision is kept as a draw (no host sync in the training loop on an accelerator) and
    masked by :meth:`adjust`. On a
    CPU, where a binary search over a large key array (a cache miss at every level) costs more than a whole
    BPR-MF step's arithmetic, a one-hash Bloom filter of the keys (32 bits per key, mostly in cache; ~3% false
    positives) clears most draws first and only the draws it flags are searched.
    """

    needs_scores = False  # True: forward wants a ``scorer`` (hard negatives)
    can_share = True  # one draw for the whole batch makes sense (not for per-row pools or the batch's positives)

    def __init__(self, n_items: int, positive_keys: torch.Tensor, item_counts: torch.Tensor | None = None,
                 retries: int = 2, shared: bool = False) -> None:
        super().__init__()
        if retries < 0:
            raise RecForgeError(f"sampler.retries must be >= 0, got {retries}")
        if shared and not self.can_share:
            raise RecForgeError(f"sampler.shared=true draws one set of negatives for the whole batch, which "
                                f"{type(self).__name__} cannot do (it picks per row): set sampler.shared=false, or "
                                "use sampler=uniform or sampler=popularity")
        self.n_items, self.retries, self.shared = n_items, retries, shared
        self.register_buffer("positive_keys", positive_keys, persistent=False)
        counts = item_counts.float() if item_counts is not None else torch.ones(n_items)
        if len(counts) != n_items:
            raise ValueError(f"item_counts has {len(counts)} entries for {n_items} items")
        # log of each item's share of the training positives: the probability that an in-batch negative is it
        self.register_buffer("log_item_share", (counts / counts.sum().clamp(min=1)).log(), persistent=False)
        self._bloom: tuple[tuple[int, int, int], torch.Tensor, int] | None = None  # (keys' identity, bits, shift)
        self.register_buffer("drawable", None, persistent=False)  # see restrict_to
        # the last per-row draw's (users, which negatives are still positives), so that adjust masks them unsearched
        self._drawn: tuple[torch.Tensor, torch.Tensor] | None = None

    def restrict_to(self, items: torch.Tensor) -> None:
        """Draw uniform negatives from ``items`` only: the cold-start splits keep their held-out items out of
        training altogether, also as negatives (a model would otherwise learn that they are never positive).
        The popularity sampler keeps its weights over these items; the in-batch sampler draws only training
        positives anyway."""
        if len(items) == 0:
            raise RecForgeError("no item has a training interaction to draw negatives from")
        self.drawable = items.to(self.log_item_share.device, torch.long)

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

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Items drawn independently from the proposal distribution (here uniform, over :meth:`restrict_to`'s
        items when set)."""
        if self.drawable is not None:
            return self.drawable[torch.randint(len(self.drawable), shape, device=device)]
        return torch.randint(self.n_items, shape, device=device)

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        """Log-probability that a draw is each of ``items`` (the log-Q of sampled-softmax corrections)."""
        n = self.n_items if self.drawable is None else len(self.drawable)
        return torch.full(items.shape, -math.log(n), device=items.device)

    def forward(self, users: torch.Tensor, num_negatives: int, positives: torch.Tensor | None = None,
                scorer: Scorer | None = None) -> torch.Tensor:
        """``(B, num_negatives)`` negatives: of ``retries + 1`` draws per slot, the first that is not a training
        positive of the slot's user (the last draw when all are), which is what drawing, checking and redrawing
        ``retries`` times gives, in a fixed number of vectorised operations. ``positives`` (the batch's positive
        items) and ``scorer`` are for the samplers that use them. With ``shared``: ``(num_negatives,)`` items
        drawn once for every row (collisions with a row's positives are masked by :meth:`adjust`)."""
        if self.shared:
            return self.draw((num_negatives,), users.device)
        draws = self.draw((len(users), num_negatives, self.retries + 1), users.device)
        accept = ~self.is_positive(users, draws)
        self._drawn = (users, ~accept.any(-1))   # every draw of the slot a positive: the last one is kept
        accept[..., -1] = True
        first = accept.to(torch.uint8).argmax(dim=-1, keepdim=True)  # argmax returns the first maximum
        return draws.gather(-1, first).squeeze(-1)

    def _hits(self, users: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Which ``negatives`` are training positives of their row's user: known without a search when they are
        the draw :meth:`forward` just made for these ``users`` (the same tensor), searched otherwise."""
        drawn, self._drawn = self._drawn, None
        if drawn is not None and drawn[0] is users and drawn[1].shape == negatives.shape:
            return drawn[1]
        return self.is_positive(users, negatives)

    def adjust(self, users: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor,
               logq_correction: bool) -> torch.Tensor:
        """The scores a loss sees for ``(B, 1 + n)`` candidates (positive first): minus each candidate's
        log-probability of being drawn when ``logq_correction`` (Bengio & Senecal 2008; Yi et al. 2019), so
        that a sampled softmax estimates the full one whatever the proposal. Negatives that are training positives
        of the row's user (shared draws, in-batch positives, draws the redraws left on one) score ``-inf``."""
        if logq_correction:
            scores = scores - self.log_prob(candidates).to(scores.dtype)
        hits = self._hits(users, candidates[:, 1:])
        return torch.cat([scores[:, :1], scores[:, 1:].masked_fill(hits, float("-inf"))], dim=1)


class PopularitySampler(NegativeSampler):
    """Negatives drawn with probability ``count_i ** alpha / sum_j count_j ** alpha`` (``alpha=0``: uniform;
    ``alpha=1``: as often as the item is a positive), by inverse-CDF lookup of uniform draws on the device.
    Items never seen in training are never drawn when ``alpha > 0``, nor at ``alpha=0`` after :meth:`restrict_to`."""

    def __init__(self, n_items: int, positive_keys: torch.Tensor, item_counts: torch.Tensor | None = None,
                 alpha: float = 0.75, retries: int = 2, shared: bool = False) -> None:
        super().__init__(n_items, positive_keys, item_counts, retries, shared)
        if alpha < 0:
            raise RecForgeError(f"sampler.alpha={alpha} must be >= 0 (0: uniform, 1: by popularity)")
        if item_counts is None:
            raise ValueError("PopularitySampler needs item_counts")
        self.alpha = alpha
        self.weights = item_counts.double().pow(alpha) if alpha > 0 else torch.ones(n_items, dtype=torch.float64)
        self.register_buffer("log_probs", None, persistent=False)
        self.register_buffer("cdf", None, persistent=False)
        self._draw_by(self.weights)

    def _draw_by(self, weights: torch.Tensor) -> None:
        if weights.sum() <= 0:
            raise RecForgeError("sampler=popularity: no item has a training interaction to draw from")
        # an integer CDF of exactly 2^52 ticks, drawn by integer uniforms: exact at any catalogue size and on any
        # device (a float32 CDF of a million items rounds shares to its step, and items came 0.6x to 1.3x as often
        # as the logQ correction says; MPS has no float64, and draws its integers as int32: see draw)
        ticks = torch.floor(weights.double() / weights.double().sum() * 2.0**52).long()
        ticks[ticks.argmax()] += 2**52 - int(ticks.sum())
        device = self.log_item_share.device
        self.log_probs = (ticks.double() / 2.0**52).log().float().to(device)
        self.cdf = ticks.cumsum(0).to(device)

    def restrict_to(self, items: torch.Tensor) -> None:
        """Draw from ``items`` only, each by its popularity weight (which matters at ``alpha=0``: every item then
        has weight 1, those without training interactions too)."""
        super().restrict_to(items)
        keep = torch.zeros_like(self.weights)
        keep[self.drawable.to(keep.device)] = 1.0
        self._draw_by(self.weights * keep)

    def draw(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        ticks = torch.randint(2**26, shape, device=device) * 2**26 + torch.randint(2**26, shape, device=device)
        return torch.searchsorted(self.cdf, ticks, right=True)   # uniform over the 2^52 ticks

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        return self.log_probs[items]


class InBatchSampler(NegativeSampler):
    """The batch's other positive items as each row's negatives: in a random cyclic order of the rows, a row
    takes the positives of the ``n`` rows after it, ``n`` at most the batch size minus one (so ``n`` distinct
    other rows). A negative that is a training
    positive of the row's user (its own positive included) scores ``-inf``, which every implicit loss reads as
    no term. Its probability of being drawn is its share of the training positives (:meth:`log_prob`)."""

    can_share = False

    def forward(self, users: torch.Tensor, num_negatives: int, positives: torch.Tensor | None = None,
                scorer: Scorer | None = None) -> torch.Tensor:
        if positives is None:
            raise ValueError("InBatchSampler needs the batch's positives")
        n, size = max(0, min(num_negatives, len(positives) - 1)), len(positives)
        # the rows in a random order: a sequential batch holds each user's positions side by side, so the next
        # rows in batch order would mostly be the same user's items (masked), more so at a sequence's start
        order = torch.randperm(size, device=positives.device)
        place = torch.empty_like(order)
        place[order] = torch.arange(size, device=positives.device)
        shift = torch.arange(1, n + 1, device=positives.device)
        return positives[order[(place.unsqueeze(1) + shift) % size]]

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        return self.log_item_share[items]


class HardNegativeSampler(NegativeSampler):
    """Each negative is the highest-scoring of ``pool_size`` uniform draws under the current model (scored
    without gradient), so training concentrates on the items the model still ranks too high. A draw that is a
    training positive of the user is never the pick unless the whole pool is."""

    needs_scores = True
    can_share = False

    def __init__(self, n_items: int, positive_keys: torch.Tensor, item_counts: torch.Tensor | None = None,
                 pool_size: int = 8, retries: int = 2, shared: bool = False) -> None:
        super().__init__(n_items, positive_keys, item_counts, retries, shared)
        if pool_size < 1:
            raise RecForgeError(f"sampler.pool_size={pool_size} must be >= 1 (1: uniform negatives)")
        self.pool_size = pool_size

    def forward(self, users: torch.Tensor, num_negatives: int, positives: torch.Tensor | None = None,
                scorer: Scorer | None = None) -> torch.Tensor:
        pool = super().forward(users, num_negatives * self.pool_size)
        hits = self._hits(users, pool)
        if scorer is None or self.pool_size == 1:
            self._drawn = (users, hits[:, :num_negatives])
            return pool[:, :num_negatives]
        with torch.no_grad():
            scores = scorer(users, pool)
            # a draw the redraws left on a training positive: the model ranks those highest, so the argmax would
            # seek them out (a quarter of the picks for a heavy user at pool 8); never pick one while others remain
            scores = scores.masked_fill(hits, float("-inf"))
        shape = (len(users), num_negatives, self.pool_size)
        pick = scores.view(shape).argmax(-1, keepdim=True)
        self._drawn = (users, hits.view(shape).gather(-1, pick).squeeze(-1))
        return pool.view(shape).gather(-1, pick).squeeze(-1)
