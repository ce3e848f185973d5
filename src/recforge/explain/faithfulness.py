"""Faithfulness of explanations: removing an item's top reasons should lower its rank more than removing as
many random ones of the reasons the method weighed (history items, or non-zero variables).

For each user: the model's top-``k`` (history items excluded), each item's top-``remove`` reasons, then the
item's rank among the items outside the history under the counterfactual (:mod:`recforge.explain.counterfactual`)
with nothing removed, with the top reasons removed, and with ``draws`` random draws of ``remove`` candidates
removed. A rank drop is the rank after minus the rank before (positive: the item fell).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from recforge.explain.base import Explainer, Histories, history_of, model_device
from recforge.explain.counterfactual import Counterfactual


@dataclass
class Faithfulness:
    """Means over the (user, recommended item) pairs measured."""

    method: str
    counterfactual: str
    pairs: int
    rank_drop_reasons: float  # mean rank drop when the top reasons are removed
    rank_drop_random: float  # mean rank drop when as many random candidates are removed (mean over the draws)
    wins: float  # share of pairs whose top reasons lowered the rank more than the random draws did on average
    score_drop_ratio: float  # mean score drop of the top reasons over that of the random draws (nan unless > 0)
    base_overlap: float  # share of the model's top-k that the counterfactual with nothing removed ranks top-k
    explain_ms: float  # median time of one explain() call (k items), a rough figure
    score_ms: float  # median time of the user's score_all beside it, for scale
    per_pair: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def rank_in(scores: torch.Tensor, item: int, excluded: torch.Tensor) -> int:
    """1 + how many items outside ``excluded`` score above ``item``."""
    above = scores > scores[item]
    above[excluded] = False
    return 1 + int(above.sum())


def measure(model, explainer: Explainer, counterfactual: Counterfactual, users: list[int],
            histories: Histories | None, k: int = 10, remove: int = 3, draws: int = 5,
            seed: int = 0) -> Faithfulness:
    """Measure ``explainer``'s faithfulness on ``users`` (indices) with ``counterfactual``; see the module."""
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    before, after_reasons, after_random, drop_reasons, drop_random, overlap = [], [], [], [], [], []
    seconds, scoring = [], []
    for user in users:
        excluded = history_of(model, user, histories)
        started = time.perf_counter()
        with torch.no_grad():
            scores = explainer.score_all(torch.tensor([user], device=device))[0].float()   # in its context
        scoring.append(time.perf_counter() - started)
        scores[excluded] = -torch.inf
        items = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices
        started = time.perf_counter()
        explanation = explainer.explain(user, items, remove)
        seconds.append(time.perf_counter() - started)
        base = counterfactual.scores(user, -1, excluded[:0]).float()
        base_top = base.clone()
        base_top[excluded] = -torch.inf
        overlap.append(len(np.intersect1d(torch.topk(base_top, len(items)).indices.cpu(), items.cpu())) / len(items))
        for j, item in enumerate(explanation.items.tolist()):
            reasons = explanation.reasons[j][explanation.reasons[j] >= 0]
            candidates = explanation.candidates
            if explanation.eligible is not None:
                candidates = candidates[explanation.eligible[j]]
            if len(reasons) < remove or len(candidates) < 2 * remove:  # too few for random ones to differ
                continue
            rank = rank_in(base, item, excluded)
            removed = counterfactual.scores(user, item, reasons).float()
            random_ranks, random_drops = [], []
            for _ in range(draws):
                drawn = candidates[torch.randperm(len(candidates), generator=generator)[:remove]]
                shuffled = counterfactual.scores(user, item, drawn).float()
                random_ranks.append(rank_in(shuffled, item, excluded))
                random_drops.append(float(base[item] - shuffled[item]))
            before.append(rank)
            after_reasons.append(rank_in(removed, item, excluded))
            after_random.append(float(np.mean(random_ranks)))
            drop_reasons.append(float(base[item] - removed[item]))
            drop_random.append(float(np.mean(random_drops)))
    before_, reasons_, random_ = np.asarray(before), np.asarray(after_reasons), np.asarray(after_random)
    random_score_drop = float(np.mean(drop_random)) if drop_random else float("nan")
    return Faithfulness(
        method=explainer.method, counterfactual=counterfactual.name, pairs=len(before),
        rank_drop_reasons=float(np.mean(reasons_ - before_)) if len(before) else float("nan"),
        rank_drop_random=float(np.mean(random_ - before_)) if len(before) else float("nan"),
        wins=float(np.mean(reasons_ - before_ > random_ - before_)) if len(before) else float("nan"),
        score_drop_ratio=float(np.mean(drop_reasons)) / random_score_drop if drop_random and random_score_drop > 0
        else float("nan"),
        base_overlap=float(np.mean(overlap)) if overlap else float("nan"),
        explain_ms=1000 * float(np.median(seconds)) if seconds else float("nan"),
        score_ms=1000 * float(np.median(scoring)) if scoring else float("nan"),
        per_pair={"rank": before_, "rank_reasons": reasons_, "rank_random": random_})
