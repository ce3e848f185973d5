"""The LightningModule: model + loss + optimizer + metrics."""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Sequence

import pytorch_lightning as pl
import torch

from recforge.errors import RecForgeError
from recforge.metrics.beyond import ListContext, unit_rows
from recforge.metrics.evaluator import (BEYOND_ACCURACY_NAMES, RANKING_METRIC_NAMES, RankingEvaluator,
                                        rating_batch_errors)
from recforge.metrics.pointwise import POINTWISE_NAMES, pointwise_metrics
from recforge.metrics.rating import error_metrics
from recforge.metrics.sampled import check_protocol, protocol_prefix
from recforge.models.base import Recommender, positives_then_shared
from recforge.retrieval.ann import AnnIndex, ModelRetriever, retrieval_items
from recforge.utils.distributed import process_rank

RANKING_METRICS = RANKING_METRIC_NAMES
BEYOND_ACCURACY = BEYOND_ACCURACY_NAMES
RATING_METRICS = ("rmse", "mae")


def metric_names(feedback: str, ks: Sequence[int], stage: str = "val", sampled_negatives: int | None = None,
                 sampled_strategy: str = "uniform", pointwise: bool = False, logits: bool = False) -> list[str]:
    """Every metric a validation or test pass logs, e.g. ``val/ndcg_at_10`` or ``test/sampled99_hr_at_10``;
    with ``pointwise`` also ``val/auc``, ``val/gauc`` and (``logits``: scores are logits) ``val/logloss``."""
    if feedback == "explicit":
        return [f"{stage}/{m}" for m in RATING_METRICS + (POINTWISE_NAMES if pointwise else ())]
    names = [f"{stage}/{m}_at_{k}" for m in RANKING_METRICS + BEYOND_ACCURACY for k in ks]
    if pointwise:
        names += [f"{stage}/{m}" for m in POINTWISE_NAMES + (("logloss",) if logits else ())]
    check_protocol(sampled_negatives, sampled_strategy)
    if sampled_negatives is not None:
        prefix = protocol_prefix(sampled_negatives, sampled_strategy)
        names += [f"{stage}/{prefix}_{m}_at_{k}" for m in RANKING_METRICS for k in ks]
    return names


def train_view(model: Recommender, loss: torch.nn.Module) -> str:
    """What a training batch holds (``RecDataModule.train_view``): the model's own view (sequences, item rows),
    else the loss's (user rows), else interactions."""
    return model.train_view or loss.view


class RecommenderModule(pl.LightningModule):
    """Trains any :class:`~recforge.models.base.Recommender` with any loss from :mod:`recforge.losses`.

    Evaluation is full ranking by :class:`~recforge.metrics.evaluator.RankingEvaluator`: each validation/test
    batch is a chunk of users scored against every item, with seen items masked, a deterministic top-K (ties
    go to the lower item index) and per-user metrics from one pass; ``sampled_negatives`` adds a sampled
    protocol (``*/sampled99_*`` metrics) on the same scores. Rating models are scored by RMSE/MAE on the
    original scale: ``rating_inverse`` (e.g. undoing a rating normalisation) is applied to predictions and
    targets, then predictions are clipped to ``rating_range`` if ``clip_predictions``. Per-user test results
    stay in :attr:`test_results` for export.

    The test stage has its own evaluator (:attr:`test_evaluator`): with ``beyond`` it adds the list metrics and the
    user and item slices, with ``reranker`` it evaluates the re-ranked lists. Validation (early stopping, the best
    checkpoint, sweeps) stays on the model's own top-K, so runs that differ only in the re-ranker train alike.
    With ``item_vectors_from_model`` the list metrics' and the re-ranker's item vectors are the model's, read again
    when the test starts (the trained model's).

    Evaluation batches that carry labelled pairs (``RecDataModule.add_pointwise_pairs``) add the point-wise metrics
    (:mod:`recforge.metrics.pointwise`), with ``logloss`` when ``logits`` (the loss makes scores logits); a rating
    model's rated pairs are labelled ``rating >= rating_threshold`` (original scale) when that is set.
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
        sampled_negatives: int | None = None,
        sampled_strategy: str = "uniform",
        sampled_seed: int = 0,
        rating_inverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
        histories: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_monitor: str | None = None,
        beyond: ListContext | None = None,
        reranker: Callable | None = None,
        item_vectors_from_model: bool = False,
        ann: AnnIndex | None = None,
        logits: bool = False,
        rating_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.model, self.loss, self.optimizer_factory, self.sampler = model, loss, optimizer, sampler
        self.scheduler_factory, self.scheduler_monitor = scheduler, scheduler_monitor
        # ReduceLROnPlateau is stepped by this module, not by Lightning: see configure_optimizers
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._epoch_lr: float | None = None
        self.feedback = loss.feedback
        self.ks = sorted(set(int(k) for k in ks))
        self.clip = tuple(rating_range) if (rating_range is not None and clip_predictions) else None
        if item_popularity is not None:
            self.register_buffer("item_popularity", item_popularity.float(), persistent=False)
        else:
            self.item_popularity = None
        self.n_train_users = n_train_users
        check_protocol(sampled_negatives, sampled_strategy)
        if sampled_negatives is not None and sampled_strategy == "popularity" and item_popularity is None:
            raise RecForgeError("eval.sampled.strategy=popularity needs the training item popularity")
        self.evaluator = RankingEvaluator(self.ks, item_popularity, n_train_users, sampled_negatives,
                                          sampled_strategy, sampled_seed, logits=logits)
        self.beyond, self.reranker, self.item_vectors_from_model = beyond, reranker, item_vectors_from_model
        self.test_evaluator = self.evaluator
        if beyond is not None or reranker is not None:
            self.test_evaluator = RankingEvaluator(self.ks, item_popularity, n_train_users, sampled_negatives,
                                                   sampled_strategy, sampled_seed, beyond, reranker, logits=logits)
        self.ann: AnnIndex | None = None
        self.use_ann(ann)
        self.rating_inverse = rating_inverse
        self.rating_threshold = rating_threshold  # rating models: AUC/GAUC of predictions vs ratings >= threshold
        self.histories = histories
        self.view = train_view(model, loss)
        self._outputs: list[dict[str, torch.Tensor]] = []
        self._loss_sum: torch.Tensor | None = None  # the epoch's size-weighted loss sum, kept on the device
        self._loss_count = 0
        self.test_results: dict[str, torch.Tensor] | None = None
        # the name validation metrics are logged under: "val_best" when the best checkpoint is validated again after
        # training, so that the re-validation stays apart from the epoch series (learning curves end at their last
        # epoch, and MLflow shows the val_best group after the curves)
        self.val_stage = "val"

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch) -> torch.Tensor:
        """The training loss of one batch (negatives sampled on the device). The data module's ``train_view``
        decides what the batch holds: ``(users, items, ratings)`` interactions, or ids of users or items whose
        whole rows (autoencoders) or sequences (sequential models) the model reads itself. Interactions with a
        context (``data.context_columns``) carry it fourth: a model that reads it scores the positive and the
        negatives sampled for it in the positive's context."""
        users, items, ratings, *context = batch
        model = self._with_context(context[0] if context else None)
        if self.view == "sequences":
            return self.sequence_loss(torch.unique(users))
        if self.view in ("users", "items"):  # whole rows of the batch's users or items (autoencoders)
            ids = torch.unique(users)
            rows = self.model.user_rows(ids) if self.view == "users" else self.model.item_rows(ids)
            output, kl = self.model.reconstruct(rows, ids)
            return self.loss(output, rows, kl)
        if self.feedback == "explicit":
            return self._regularized(self.loss(model(users, items), ratings), users, items)
        if self.loss.full:  # softmax over the whole catalogue; the model's penalty on the users and their positives
            return self._regularized(self.loss(model.score_all(users), items), users, items.unsqueeze(1))
        with self.model.one_pass(items):   # the graph models: one propagation for the negatives and the scores
            negatives = self.sampler(users, self.loss.num_negatives, positives=items,
                                     scorer=model if self.sampler.needs_scores else None)
            candidates, scores = scored_candidates(items, negatives, lambda rows: model(users, rows),
                                                   lambda shared: model.score_with_shared(users, items, shared))
            scores = self.sampler.adjust(users, candidates, scores, self.loss.logq_correction)
            return self._regularized(self.loss(scores[:, 0], scores[:, 1:]), users, candidates)

    def _with_context(self, context: torch.Tensor | None) -> ContextScorer | Recommender:
        """The model, scoring in ``context`` (the rows of the batch's users) when it reads context."""
        return ContextScorer(self.model, context) if context is not None and self.model.reads_context else self.model

    def _regularized(self, loss: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        penalty = self.model.regularization(users, items)
        return loss if penalty is None else loss + penalty

    def sequence_loss(self, users: torch.Tensor) -> torch.Tensor:
        """Next-item (or masked-item) prediction at every target position of the users' training sequences:
        the model says which positions predict which items, the loss scores them against the whole catalogue
        (``full`` losses) or against sampled negatives."""
        users, inputs, targets = self.model.training_sequences(users)  # a user may give several rows
        hidden = self.model.encode(inputs, users)
        at = targets >= 0
        if not at.any():  # only one-item histories in this batch: nothing to predict (a zero loss, not a NaN)
            return hidden.sum() * 0
        hidden, targets = hidden[at], targets[at]
        if self.loss.full:
            return self.loss(self.model.item_logits(hidden), targets)
        owners = users.unsqueeze(1).expand_as(at)[at]  # negatives avoid each position's user's training items
        scorer = (lambda _, items: self.model.item_logits(hidden.detach(), items)) if self.sampler.needs_scores \
            else None
        negatives = self.sampler(owners, self.loss.num_negatives, positives=targets, scorer=scorer)
        logits = functools.partial(self.model.item_logits, hidden)  # takes (N, k) candidates or a shared (k,) set

        def with_shared(shared: torch.Tensor) -> torch.Tensor:  # each position's target, then the shared set
            return torch.cat([logits(targets.unsqueeze(1)), logits(shared)], dim=1)

        candidates, scores = scored_candidates(targets, negatives, logits, with_shared)
        scores = self.sampler.adjust(owners, candidates, scores, self.loss.logq_correction)
        return self.loss(scores[:, 0], scores[:, 1:])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        # accumulated here and logged once per epoch: a per-step self.log costs ~1.8 ms of Lightning bookkeeping,
        # more than a whole BPR-MF step on a CPU (scripts/bench.py)
        n = len(batch[0])
        weighted = loss.detach().float() * n  # float32 sums, whatever the precision (bf16 would round them)
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += n
        return loss

    def epoch_loss(self) -> float | None:
        """The mean training loss per example of the epoch so far (this process), or None before the first step."""
        return float(self._loss_sum / self._loss_count) if self._loss_count else None

    def on_train_epoch_end(self) -> None:
        """Log ``train/loss``, the epoch's mean loss per example (averaged over processes under DDP)."""
        if self._loss_count:
            self.log("train/loss", self._loss_sum / self._loss_count, sync_dist=True)
        if self._epoch_lr is not None:  # the rate this epoch trained at
            self.log("train/lr", self._epoch_lr)
        self._loss_sum, self._loss_count = None, 0

    def configure_optimizers(self):
        """The optimizer, and the learning-rate schedule if one is configured, stepped once per epoch by Lightning.
        ``ReduceLROnPlateau`` is stepped here instead, on ``scheduler_monitor`` at each validation of a fit and before
        that validation's checkpoint is written (Lightning steps it afterwards, so a resumed run would miss a
        step); its state travels in the checkpoint under ``recforge_plateau``."""
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self._plateau = scheduler
            if self._plateau_state is not None:
                scheduler.load_state_dict(self._plateau_state)
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._plateau is not None:
            checkpoint["recforge_plateau"] = self._plateau.state_dict()
        checkpoint["recforge_loss"] = self.loss.progress()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("recforge_plateau")  # applied when configure_optimizers builds it
        self.loss.restore_progress(checkpoint.get("recforge_loss", {}))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_batch(self, batch, stage: str = "val") -> dict[str, torch.Tensor]:
        """Per-user (ranking) or per-interaction (rating) results of one evaluation batch of ``stage``."""
        if self.feedback == "explicit":
            users, items, ratings, *context = batch
            predictions = self._with_context(context[0] if context else None)(users, items)
            errors = rating_batch_errors(predictions, ratings, self.clip, self.rating_inverse)
            out = {"users": users, "errors": errors}
            if self.rating_threshold is not None:  # point-wise: the rated pairs, labelled on the original scale
                original = self.rating_inverse(ratings) if self.rating_inverse is not None else ratings
                out.update(pair_users=users, pair_scores=predictions.float(),
                           pair_labels=(original >= self.rating_threshold).float())
            return out
        evaluator = self.test_evaluator if stage == "test" else self.evaluator
        if self.item_popularity is not None and evaluator.item_popularity is not self.item_popularity:
            evaluator.item_popularity = self.item_popularity  # follow the buffer to the module's device
        model = self._with_context(batch.get("context"))
        if "pair_context" in batch and self.model.reads_context:  # each pair scored in its own context
            pairs = batch["pair_rows"].to(self.device)
            batch = {**batch, "pair_scores": ContextScorer(self.model, batch["pair_context"])(
                batch["users"].to(self.device)[pairs], batch["pair_cols"].to(self.device))}
        return evaluator.evaluate(model.score_all, batch)

    def _use_histories(self, stage: str) -> None:
        """Sequential models take each stage's input sequences (validation: training; test: + validation)."""
        if self.histories is not None:
            self.model.set_histories(*(t.to(self.device) for t in self.histories[stage]))

    def on_validation_epoch_start(self) -> None:
        self._use_histories("val")

    def on_test_epoch_start(self) -> None:
        self._use_histories("test")
        self.read_item_vectors()
        if self.ann is not None:  # index the model's item vectors as they are now (after training)
            self.test_evaluator.retriever = ModelRetriever(self.model, self.ann)

    def use_ann(self, ann: AnnIndex | None) -> None:
        """Rank the test users through ``ann`` (built from the model when the test starts; ``eval.retrieval=ann``):
        the test metrics come from the index's candidates and ``test/ann_recall_at_K`` compares them with the exact
        top-K. Validation stays exact. A model that is not a dot product is refused here, in one line."""
        self.ann = ann
        if ann is None:
            return
        if self.feedback == "explicit":
            raise RecForgeError("eval.retrieval=ann ranks items: use it with an implicit-feedback loss")
        if type(self.model).retrieval_items is Recommender.retrieval_items:
            retrieval_items(self.model)  # not a dot-product model: raises the one-line refusal
        if self.test_evaluator is self.evaluator:
            import copy

            self.test_evaluator = copy.copy(self.evaluator)

    def read_item_vectors(self) -> None:
        """With ``item_vectors_from_model``: give the list metrics and the re-ranker the model's current item
        vectors (after training, the trained ones)."""
        if self.item_vectors_from_model:
            vectors = unit_rows(self.model.item_vectors())
            if self.test_evaluator.beyond is not None:
                self.test_evaluator.beyond.item_vectors = vectors
            if hasattr(self.reranker, "item_vectors"):
                self.reranker.item_vectors = vectors

    def on_train_epoch_start(self) -> None:
        self._use_histories("val")  # the training sequences (a test pass may have come before)
        self._loss_sum, self._loss_count = None, 0
        if self.scheduler_factory is not None:  # epoch-interval schedulers step before on_train_epoch_end
            self._epoch_lr = self.optimizers().param_groups[0]["lr"]
        trainer = self._trainer  # None when the hooks are driven by hand (tests)
        dataset = getattr(trainer.train_dataloader, "dataset", None) if trainer is not None else None
        if hasattr(dataset, "set_epoch"):  # the epoch's permutation follows the trainer's epoch, also when resumed
            dataset.set_epoch(self.current_epoch)

    def _eval_step(self, batch, stage: str = "val") -> None:
        self._outputs.append({k: v.detach() for k, v in self.evaluate_batch(batch, stage).items()})

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _gather(self, outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Every process's evaluation results, in the order of the whole stage's batches (under DDP each process
        evaluated every ``world``-th batch; see ``RecDataModule.eval_shard``), so that the metrics equal a
        single-process run's."""
        rank, world = process_rank()
        if world == 1:
            return outputs
        everyone: list = [None] * world
        torch.distributed.all_gather_object(everyone, [{k: v.cpu() for k, v in o.items()} for o in outputs])
        ordered = [everyone[r][k] for k in range(max(map(len, everyone))) for r in range(world) if k < len(everyone[r])]
        return [{k: v.to(self.device) for k, v in o.items()} for o in ordered]

    def _aggregate(self, stage: str) -> dict[str, torch.Tensor]:
        outputs, self._outputs = self._gather(self._outputs), []
        if not outputs:
            return {}
        if self.feedback == "explicit":
            results = {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}
            metrics = error_metrics(results["errors"].double())
            if "pair_scores" in results:
                extra = pointwise_metrics(results["pair_scores"], results["pair_labels"], results["pair_users"], False)
                metrics.update({k: v.float() for k, v in extra.items()})
        else:
            metrics, results = (self.test_evaluator if stage == "test" else self.evaluator).aggregate(outputs)
        metrics = {f"{stage}/{k}": v for k, v in metrics.items()}
        if stage == "test":
            self.test_results = {k: v.cpu() for k, v in results.items()}
        # every process aggregated the same gathered results: the values agree without a reduction
        self.log_dict({k: v.float() for k, v in metrics.items()}, prog_bar=False, sync_dist=False)
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._aggregate(self.val_stage)
        if self._plateau is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            if self.scheduler_monitor in metrics:
                self._plateau.step(float(metrics[self.scheduler_monitor]))

    def on_test_epoch_end(self) -> None:
        self._aggregate("test")


def scored_candidates(positives: torch.Tensor, negatives: torch.Tensor, score_rows: Callable,
                      score_shared: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1 + n)`` candidates (the positive first) and their scores, for ``(B, n)`` negatives drawn per row
    (``score_rows`` scores ``(B, k)`` candidates) or one ``(n,)`` set shared by the batch (``sampler.shared``:
    ``score_shared(negatives)`` scores the positives and then the set against every row, the set by one
    ``(B, d) x (d, n)`` product, not a ``(B, n, d)`` gather)."""
    if negatives.dim() == 2:
        candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
        return candidates, score_rows(candidates)
    return torch.cat([positives.unsqueeze(1), negatives.expand(len(positives), -1)], dim=1), score_shared(negatives)


class ContextScorer:
    """``model`` with ``context`` bound: ``(users, items)`` and ``score_all(users)`` as every model takes them, the
    users' ``(B, n_context)`` context rows passed on (what the samplers' scorers and the evaluator call)."""

    def __init__(self, model: Recommender, context: torch.Tensor) -> None:
        self.model, self.context = model, context

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model(users, items, context=self.context.to(users.device))

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_all(users, context=self.context.to(users.device))

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self(users, items.expand(len(users), -1))

    def score_with_shared(self, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return positives_then_shared(self, users, positives, shared)
