"""The chunked full-ranking evaluator shared by training, benchmarks, serving and ensembles.

One evaluation batch is a chunk of users (sized by a memory budget, ``chunk * n_items <= max_scores``)::

    {"users": (B,) global user indices,
     "exclude_rows", "exclude_cols": (row in [0, B), item) pairs the user must not be recommended
                                     (seen in training; at test time also validation items),
     "relevant_rows", "relevant_cols": the held-out (row, item) pairs,
     "relevant_gains": optional gain per relevant pair (graded NDCG; e.g. the rating),
     "later_rows", "later_cols": optional (row, item) pairs held out for a later stage (a validation user's test
                                 items), never drawn as a sampled protocol's negatives}

:meth:`RankingEvaluator.evaluate` scores the chunk against every item (``score_fn(users) -> (B, n_items)``),
masks the excluded items in place, takes an exact top-K on the scores' device with the documented tie policy
(higher score first, equal scores by lower item index, see :mod:`recforge.metrics.ranking`), and computes every
per-user ranking metric from that one top-K pass: precision, recall, truncated recall, NDCG (binary and
graded), HR, MRR, MAP and F1 at every K. With a sampled protocol configured it also ranks each user's relevant
items against fixed sampled negatives (:mod:`recforge.metrics.sampled`) using the same scores.
:meth:`RankingEvaluator.aggregate` concatenates the per-user results of all chunks and averages them over
users with at least one relevant item, and adds the beyond-accuracy metrics (coverage, Gini, exposure Gini,
novelty, average popularity) computed from all top-K lists at once.

With a :class:`~recforge.metrics.beyond.ListContext` (``beyond``; the test stage's evaluator) the same pass adds
the per-user list metrics (intra-list diversity, miscalibration, long-tail share, popularity-stratified recall,
serendipity) and the ranking metrics of each item slice (``ndcg_at_10/items_tail``), and :meth:`aggregate` every
metric of each user slice (``ndcg_at_10/users_cold``); :mod:`recforge.metrics.beyond` defines them. With a
``reranker`` the top-K lists are the re-ranker's reorderings of each user's top-``n_candidates`` items (the
scores of the listed items stay the model's), and every metric is of those lists.

Every per-user value depends only on that user's row of scores, exclusions and relevant items, and the
average is taken once over the concatenated per-user vector, so results do not depend on the chunk size,
the batch composition or the device (given identical scores: a model whose score for a user changes with
the batch it is computed in, e.g. through BLAS blocking, is outside the evaluator's control).

A model that scores NaN or +inf (a diverged one) gets NaN for every metric of that evaluation, with a warning,
not the near-zero numbers its lists would give: early stopping then ends its training (``check_finite``), and a
sweep's trial fails as diverged, where a finite value would pass for a bad model.

This module imports only torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from recforge.metrics.beyond import ListContext, item_slice_metrics, list_metrics, slice_aggregates
from recforge.metrics.pointwise import group_auc, pointwise_metrics
from recforge.metrics.ranking import beyond_accuracy, mask_scores_, ranking_metrics, relevance_matrix, topk_items
from recforge.metrics.rating import rating_errors
from recforge.metrics.sampled import STRATEGIES, protocol_prefix, sample_negatives

__all__ = ["BEYOND_ACCURACY_NAMES", "NON_METRIC_KEYS", "RANKING_METRIC_NAMES", "RankingEvaluator",
           "rating_batch_errors"]

RANKING_METRIC_NAMES = ("precision", "recall", "trecall", "ndcg", "gndcg", "hr", "mrr", "map", "f1")
BEYOND_ACCURACY_NAMES = ("coverage", "gini", "expgini", "novelty", "avgpop")
NON_METRIC_KEYS = ("users", "topk", "scores", "valid", "broken")  # per-user result keys that are not metrics
PAIR_KEYS = ("pair_users", "pair_scores", "pair_labels")  # per-pair results (point-wise metrics), not per user

log = logging.getLogger(__name__)


def rating_batch_errors(
    pred: Tensor,
    target: Tensor,
    clip: tuple[float, float] | None = None,
    rating_inverse: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-interaction errors on the original rating scale.

    ``rating_inverse`` (e.g. the inverse of a data module's rating normalisation) is applied to predictions
    and targets first; then predictions are clipped to ``clip`` (the original rating range) and
    ``pred - target`` is returned.
    """
    pred = pred.float()
    target = target.to(pred.device, torch.float32)
    if rating_inverse is not None:
        pred, target = rating_inverse(pred), rating_inverse(target)
    return rating_errors(pred, target, clip=clip)


class RankingEvaluator:
    """Full-ranking (and optionally sampled) evaluation of users in chunks; see the module docstring.

    Args:
        ks: the cut-offs, e.g. ``(10, 20)``; one top-``max(ks)`` pass serves all of them.
        item_popularity: (n_items,) training users per item; enables the beyond-accuracy metrics and is the
            sampling weight of the ``popularity`` strategy.
        n_train_users: the number of training users (the novelty normaliser).
        sampled_negatives: N for a sampled protocol (e.g. 99), or None (full ranking only, the default).
        sampled_strategy: ``uniform`` or ``popularity``.
        sampled_seed: fixes the negatives; keep it the same across the models you compare.
        beyond: adds the list metrics and the slices (see the module docstring); needs ``item_popularity``.
        reranker: reorders each user's top-``reranker.n_candidates`` items: ``reranker(users, items, scores, k)``
            returns the (B, k) items and their scores (:class:`recforge.rerank.Reranker`).
        retriever: rank through approximate retrieval: ``retriever(users, n)`` returns (B, n) ``(scores, items)``
            candidates (item -1 for an unfilled slot; :class:`recforge.retrieval.ann.ModelRetriever`). Each user's
            list is then its candidates only (``max(ks)`` plus the user's excluded items are asked for, so masking
            leaves ``max(ks)``), ordered by the model's own scores, and ``ann_recall_at_K`` is the share of the
            exact top-K (over all unmasked items) that the candidates' top-K holds.
        logits: the model's scores are logits (trained with a point-wise log loss): the point-wise metrics
            include ``logloss``.

    Batches may carry labelled pairs (``pair_rows``, ``pair_cols``, ``pair_labels``, and ``pair_scores`` when the
    pairs were scored apart from the ranking, each in its own context; see
    :mod:`recforge.metrics.pointwise`): their scores are read before any masking and :meth:`aggregate` adds
    ``auc``, ``gauc``, ``gauc_skipped_users`` (and ``logloss``), and the per-user results each user's own AUC
    (``user_auc``, a column of the per-user test metrics). A ``candidate_items`` (n_items,) bool mask
    restricts the ranking to those items (the cold-item protocol ranks the held-out items only); with a
    ``candidate_order`` (the candidates' item indices, shuffled) tied scores among them rank in that order rather
    than by item index (exact ranking; the ANN retriever ranks the masked scores as they are)."""

    def __init__(
        self,
        ks: Sequence[int] = (10, 20),
        item_popularity: Tensor | None = None,
        n_train_users: int | None = None,
        sampled_negatives: int | None = None,
        sampled_strategy: str = "uniform",
        sampled_seed: int = 0,
        beyond: ListContext | None = None,
        reranker: Callable[[Tensor, Tensor, Tensor, int], tuple[Tensor, Tensor]] | None = None,
        retriever: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None,
        logits: bool = False,
    ) -> None:
        ks = sorted(set(int(k) for k in ks))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if sampled_strategy not in STRATEGIES:
            raise ValueError(f"sampled_strategy must be one of {STRATEGIES}, got {sampled_strategy!r}")
        if sampled_negatives is not None and int(sampled_negatives) < 1:
            raise ValueError(f"sampled_negatives must be a positive integer or None, got {sampled_negatives}")
        if sampled_negatives is not None and sampled_strategy == "popularity" and item_popularity is None:
            raise ValueError("the popularity sampling strategy needs item_popularity")
        if item_popularity is not None and bool((item_popularity < 0).any()):
            raise ValueError("item_popularity must be non-negative")
        if beyond is not None and item_popularity is None:
            raise ValueError("the list metrics and slices (beyond) need item_popularity")
        self.ks = ks
        self.item_popularity = None if item_popularity is None else item_popularity.detach().float()
        self.n_train_users = n_train_users
        self.sampled_negatives = None if sampled_negatives is None else int(sampled_negatives)
        self.sampled_strategy = sampled_strategy
        self.sampled_seed = int(sampled_seed)
        self.prefix = (protocol_prefix(self.sampled_negatives, sampled_strategy)
                       if self.sampled_negatives is not None else None)
        self.beyond, self.reranker, self.retriever = beyond, reranker, retriever
        self.logits = bool(logits)

    # ------------------------------------------------------------------ names
    def metric_names(self) -> list[str]:
        """Names of the aggregate metrics :meth:`aggregate` returns (without a stage prefix)."""
        names = [f"{m}_at_{k}" for m in RANKING_METRIC_NAMES for k in self.ks]
        if self.item_popularity is not None:
            names += [f"{m}_at_{k}" for m in BEYOND_ACCURACY_NAMES for k in self.ks]
        if self.beyond is not None:
            names += self.beyond.metric_names(self.ks)
        if self.prefix is not None:
            names += [f"{self.prefix}_{m}_at_{k}" for m in RANKING_METRIC_NAMES for k in self.ks]
        if self.retriever is not None:
            names += [f"ann_recall_at_{k}" for k in self.ks]
        return names

    # ------------------------------------------------------------------ one chunk
    @torch.no_grad()
    def evaluate(self, score_fn: Callable[[Tensor], Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Score the chunk's users against every item with ``score_fn`` and evaluate them.

        ``score_fn`` returns a fresh (B, n_items) tensor (as every model's ``score_all`` does): the evaluator
        masks it in place. Broadcast (non-contiguous) or non-float32 results are copied first.
        """
        users = batch["users"]
        return self.evaluate_scores(score_fn(users), batch)

    @torch.no_grad()
    def evaluate_scores(self, scores: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-user results of one chunk from its (B, n_items) score matrix (masked in place if float32).

        Returns ``users``, ``topk`` (B, K) item indices, ``scores`` (B, K) their scores, ``valid`` (B, K)
        (False where a row had fewer than K unmasked items), ``broken`` (B,) (True where a row has a NaN or +inf
        score among its unmasked items), and one (B,) tensor per metric, NaN for users without relevant items.
        """
        users = batch["users"]
        if scores.dim() != 2 or scores.shape[0] != users.numel():
            raise ValueError(f"scores must have shape ({users.numel()}, n_items), got {tuple(scores.shape)}")
        if scores.dtype != torch.float32 or not scores.is_contiguous():
            scores = scores.float().contiguous()  # never write into a model's (possibly shared) tensor
        device = scores.device
        n_rows, n_items = scores.shape
        rel_rows = batch["relevant_rows"].to(device, torch.long)
        rel_cols = batch["relevant_cols"].to(device, torch.long)
        gains = batch.get("relevant_gains")
        gains = None if gains is None else gains.to(device)
        ex_rows = batch["exclude_rows"].to(device, torch.long)
        ex_cols = batch["exclude_cols"].to(device, torch.long)

        pairs = {}
        if "pair_rows" in batch:  # point-wise pairs: their scores before any masking (or given, when each pair
            pair_rows = batch["pair_rows"].to(device, torch.long)   # was scored in its own context)
            given = batch.get("pair_scores")
            pairs = {"pair_users": users.to(device)[pair_rows],
                     "pair_scores": scores[pair_rows, batch["pair_cols"].to(device, torch.long)] if given is None
                     else given.to(device, torch.float32),
                     "pair_labels": batch["pair_labels"].to(device, torch.float32)}
        mask_scores_(scores, ex_rows, ex_cols)
        if "candidate_items" in batch:
            scores[:, ~batch["candidate_items"].to(device)] = float("-inf")
        broken = (~(scores < float("inf"))).any(dim=1)   # NaN or +inf where an item is still ranked
        kmax = max(self.ks)
        ann_recall = None
        if self.retriever is not None:
            scores, ann_recall = self._retrieve(scores, users, ex_rows, kmax)
        width = kmax if self.reranker is None else max(kmax, self.reranker.n_candidates)
        order = batch.get("candidate_order") if self.retriever is None else None
        if order is None:
            values, topk = topk_items(scores, width)
        else:   # the candidates' columns in their shuffled order: ties fall to it, not to the item index
            order = order.to(device)
            values, topk = topk_items(scores[:, order], width)
            topk, short = order[topk], min(width, n_items) - topk.shape[1]
            if short > 0:   # fewer candidates than the list: the rest are no recommendation, as a masked item is
                values = torch.cat([values, values.new_full((n_rows, short), float("-inf"))], 1)
                topk = torch.cat([topk, topk.new_zeros((n_rows, short))], 1)
        if self.reranker is not None:
            topk, values = self.reranker(users.to(device), topk, values, kmax)
        valid = torch.isfinite(values)
        hits, n_relevant, ideal = relevance_matrix(n_rows, topk, rel_rows, rel_cols, gains, valid)
        out = {"users": users.to(device), "topk": topk, "scores": values, "valid": valid, "broken": broken, **pairs}
        out.update(ranking_metrics(hits, n_relevant, self.ks, ideal_gains=ideal))
        if self.beyond is not None:
            if self.beyond.item_groups.device != device:
                self.beyond = self.beyond.to(device)
            out.update(list_metrics(self.beyond, out["users"], topk, valid, hits, rel_rows, rel_cols, ex_rows,
                                    ex_cols, self.ks))
            out.update(item_slice_metrics(self.beyond, n_rows, topk, valid, rel_rows, rel_cols, gains, self.ks))
        if self.prefix is not None:
            later_rows, later_cols = (batch[key].to(device, torch.long) if key in batch else ex_rows[:0]
                                      for key in ("later_rows", "later_cols"))
            sampled = self._sampled(scores, users.to(device), ex_rows, ex_cols, rel_rows, rel_cols, gains, later_rows,
                                    later_cols)
            out.update({f"{self.prefix}_{k}": v for k, v in sampled.items()})
        if ann_recall is not None:
            out.update(ann_recall)
        return out

    def _retrieve(self, scores: Tensor, users: Tensor, ex_rows: Tensor, kmax: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``(the masked scores kept at the retrieved candidates only, -inf elsewhere; per-user ann_recall_at_K)``."""
        n_rows, n_items = scores.shape
        excluded = int(torch.bincount(ex_rows, minlength=n_rows).max()) if len(ex_rows) else 0
        _, candidates = self.retriever(users, min(n_items, kmax + excluded))
        candidates = candidates.to(scores.device, torch.long)
        rows = torch.arange(n_rows, device=scores.device).unsqueeze(1).expand_as(candidates)
        found = candidates >= 0
        kept = torch.full_like(scores, float("-inf"))
        kept[rows[found], candidates[found]] = scores[rows[found], candidates[found]]
        exact_values, exact_top = topk_items(scores, kmax)
        ann_values, ann_top = topk_items(kept, kmax)
        width = exact_top.shape[1]
        # each item's place in the exact top list (width for items outside it; column n_items: an unfilled slot)
        place = torch.full((n_rows, n_items + 1), width, dtype=torch.int32, device=scores.device)
        exact_valid = torch.isfinite(exact_values)
        top_rows = torch.arange(n_rows, device=scores.device).unsqueeze(1).expand_as(exact_top)
        ranks = torch.arange(width, device=scores.device, dtype=torch.int32).expand_as(exact_top)
        place[top_rows[exact_valid], exact_top[exact_valid]] = ranks[exact_valid]
        places = place.gather(1, torch.where(torch.isfinite(ann_values), ann_top, n_items))
        recall = {}
        for k in self.ks:
            denominator = exact_valid[:, :k].sum(1).float()
            hits = (places[:, :k] < k).sum(1).float()
            recall[f"ann_recall_at_{k}"] = torch.where(denominator > 0, hits / denominator.clamp_min(1),
                                                       torch.full_like(denominator, float("nan")))
        return kept, recall

    def _sampled(self, scores: Tensor, users: Tensor, ex_rows: Tensor, ex_cols: Tensor, rel_rows: Tensor,
                 rel_cols: Tensor, gains: Tensor | None, later_rows: Tensor, later_cols: Tensor) -> dict[str, Tensor]:
        """Rank each user's relevant items against its fixed negatives, with the scores already computed. The
        negatives are items the user has no interaction with in any part: not excluded, relevant or ``later``."""
        device = scores.device
        n_rows, n_items = scores.shape
        weights = self.item_popularity if self.sampled_strategy == "popularity" else None
        blocked_rows = torch.cat([ex_rows, rel_rows, later_rows])
        blocked_cols = torch.cat([ex_cols, rel_cols, later_cols])
        negatives, _ = sample_negatives(users, n_items, self.sampled_negatives, blocked_rows, blocked_cols,
                                        self.sampled_seed, weights)
        # the relevant items of each row as a padded (B, R_max) matrix (sentinel n_items)
        keys = torch.unique(rel_rows * n_items + rel_cols)
        rows, cols = torch.div(keys, n_items, rounding_mode="floor"), keys % n_items
        counts = torch.bincount(rows, minlength=n_rows)
        width = int(counts.max()) if counts.numel() and keys.numel() else 0
        relevant = torch.full((n_rows, width), n_items, dtype=torch.long, device=device)
        if keys.numel():
            rank = torch.arange(keys.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[rows]
            relevant[rows, rank] = cols
        # candidates in item order, so that the index tie-break of topk_items is the item-index tie-break
        candidates = torch.cat([relevant, negatives], dim=1).sort(dim=1).values
        real = candidates < n_items
        cand_scores = scores.gather(1, candidates.clamp(max=n_items - 1))
        cand_scores = torch.where(real, cand_scores, torch.full_like(cand_scores, float("-inf")))
        kmax = max(self.ks)
        if candidates.shape[1] == 0:
            values = cand_scores.new_empty(n_rows, 0)
            top = torch.empty(n_rows, 0, dtype=torch.long, device=device)
        else:
            values, top = topk_items(cand_scores, kmax)
            top = candidates.gather(1, top)
        valid = torch.isfinite(values)
        hits, n_relevant, ideal = relevance_matrix(n_rows, top, rel_rows, rel_cols, gains, valid)
        return ranking_metrics(hits, n_relevant, self.ks, ideal_gains=ideal)

    # ------------------------------------------------------------------ all chunks
    def aggregate(self, outputs: Sequence[dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(metrics, per_user)``: averages over users with relevant items (float64 sums, one pass over the
        concatenated per-user vector) plus beyond-accuracy metrics; ``per_user`` is the concatenation."""
        if not outputs:
            return {}, {}
        results = {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}
        metrics: dict[str, Tensor] = {}
        for key, value in results.items():
            if key not in NON_METRIC_KEYS + PAIR_KEYS:
                metrics[key] = value.double().nanmean().float()
        if "pair_scores" in results:
            extra = pointwise_metrics(results["pair_scores"], results["pair_labels"], results["pair_users"],
                                      self.logits)
            metrics.update({k: v.float() for k, v in extra.items()})
            # each evaluated user's own AUC (NaN: no pairs, or one class), a per-user column beside the others
            _, per_user, _ = group_auc(results["pair_scores"], results["pair_labels"], results["pair_users"])
            ids = torch.unique(results["pair_users"])
            at = torch.searchsorted(ids, results["users"]).clamp(max=max(len(ids) - 1, 0))
            found = ids[at] == results["users"] if len(ids) else torch.zeros_like(results["users"], dtype=torch.bool)
            results["user_auc"] = torch.where(found, per_user[at].float(), torch.full_like(at, float("nan"),
                                                                                          dtype=torch.float32))
        if self.item_popularity is not None:
            extra = beyond_accuracy(results["topk"], results["valid"], self.item_popularity,
                                    self.n_train_users or 1, self.ks)
            metrics.update({k: torch.tensor(float(v)) for k, v in extra.items()})
        if self.beyond is not None:
            per_user = [k for k in metrics if "/" not in k and k in results]
            extra = slice_aggregates(self.beyond, results, per_user, self.ks, self.n_train_users or 1)
            metrics.update({k: torch.tensor(v) for k, v in extra.items()})
        broken = int(results["broken"].sum()) if "broken" in results else 0
        if broken:
            log.warning("%d of %d users have NaN or +inf scores: the model diverged (a lower optimizer.lr?); every "
                        "metric of this evaluation is NaN", broken, len(results["broken"]))
            metrics = {key: torch.tensor(float("nan")) for key in metrics}
            results = {key: value if key in NON_METRIC_KEYS + PAIR_KEYS else torch.full_like(value, float("nan"))
                       for key, value in results.items()}
        return metrics, results

    def run(self, score_fn: Callable[[Tensor], Tensor], batches: Iterable[dict[str, Tensor]],
            device: torch.device | str | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Evaluate every batch (moved to ``device`` if given) and aggregate: the loop scripts and services use."""
        outputs = []
        for batch in batches:
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            outputs.append(self.evaluate(score_fn, batch))
        return self.aggregate(outputs)
