"""The LightningModule: model + loss + optimizer + metrics."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import pytorch_lightning as pl
import torch

from recforge.metrics.ranking import beyond_accuracy, mask_scores_, ranking_metrics, relevance_matrix, topk_items
from recforge.metrics.rating import rating_errors
from recforge.models.base import Recommender

RANKING_METRICS = ("precision", "recall", "trecall", "ndcg", "gndcg", "hr", "mrr", "map", "f1")
BEYOND_ACCURACY = ("coverage", "gini", "novelty", "avgpop")
RATING_METRICS = ("rmse", "mae")


def metric_names(feedback: str, ks: Sequence[int], stage: str = "val") -> list[str]:
    """Every metric a validation or test pass logs, e.g. ``val/ndcg_at_10``."""
    if feedback == "explicit":
        return [f"{stage}/{m}" for m in RATING_METRICS]
    return [f"{stage}/{m}_at_{k}" for m in RANKING_METRICS + BEYOND_ACCURACY for k in ks]


class RecommenderModule(pl.LightningModule):
    """Trains any :class:`~recforge.models.base.Recommender` with any loss from :mod:`recforge.losses`.

    Evaluation is full ranking: each validation/test batch is a chunk of users scored against every item,
    with seen items masked, a deterministic top-K (ties go to the lower item index) and per-user metrics
    from one pass. Per-user test results stay in :attr:`test_results` for export.
    """

    def __init__(
        self,
        model: Recommender,
        loss: torch.nn.Module,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        sampler: torch.nn.Module | None = None,
        ks: Sequence[int] = (10, 20),
        rating_range: tuple[float, float] | None = None,
        clip_predictions: bool = True,
        item_popularity: torch.Tensor | None = None,
        n_train_users: int | None = None,
    ) -> None:
        super().__init__()
        self.model, self.loss, self.optimizer_factory, self.sampler = model, loss, optimizer, sampler
        self.feedback = loss.feedback
        self.ks = sorted(set(int(k) for k in ks))
        self.clip = tuple(rating_range) if (rating_range is not None and clip_predictions) else None
        if item_popularity is not None:
            self.register_buffer("item_popularity", item_popularity.float(), persistent=False)
        else:
            self.item_popularity = None
        self.n_train_users = n_train_users
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.test_results: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        users, items, ratings = batch
        if self.feedback == "explicit":
            loss = self.loss(self.model(users, items), ratings)
        else:
            negatives = self.sampler(users, self.loss.num_negatives)
            scores = self.model(users, torch.cat([items.unsqueeze(1), negatives], dim=1))
            loss = self.loss(scores[:, 0], scores[:, 1:])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(users))
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_batch(self, batch) -> dict[str, torch.Tensor]:
        """Per-user (ranking) or per-interaction (rating) results of one evaluation batch."""
        if self.feedback == "explicit":
            users, items, ratings = batch
            errors = rating_errors(self.model(users, items).float(), ratings, clip=self.clip)
            return {"users": users, "errors": errors}
        users = batch["users"]
        scores = self.model.score_all(users).float()
        mask_scores_(scores, batch["exclude_rows"], batch["exclude_cols"])
        values, topk = topk_items(scores, max(self.ks))
        valid = torch.isfinite(values)
        hits, n_relevant, ideal = relevance_matrix(
            len(users), topk, batch["relevant_rows"], batch["relevant_cols"], batch["relevant_gains"], valid
        )
        per_user = ranking_metrics(hits, n_relevant, self.ks, ideal_gains=ideal)
        return {"users": users, "topk": topk, "scores": values, "valid": valid, **per_user}

    def _eval_step(self, batch) -> None:
        self._outputs.append({k: v.detach() for k, v in self.evaluate_batch(batch).items()})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def _aggregate(self, stage: str) -> dict[str, torch.Tensor]:
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return {}
        results = {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}
        metrics: dict[str, torch.Tensor] = {}
        if self.feedback == "explicit":
            errors = results["errors"]
            metrics[f"{stage}/rmse"] = errors.pow(2).mean().sqrt()
            metrics[f"{stage}/mae"] = errors.abs().mean()
        else:
            for key, value in results.items():
                if key not in ("users", "topk", "scores", "valid"):
                    metrics[f"{stage}/{key}"] = value.nanmean()
            if self.item_popularity is not None:
                extra = beyond_accuracy(results["topk"], results["valid"], self.item_popularity,
                                        self.n_train_users or 1, self.ks)
                metrics.update({f"{stage}/{k}": torch.tensor(float(v)) for k, v in extra.items()})
        if stage == "test":
            self.test_results = {k: v.cpu() for k, v in results.items()}
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False)
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._aggregate("val")

    def on_test_epoch_end(self) -> None:
        self._aggregate("test")
