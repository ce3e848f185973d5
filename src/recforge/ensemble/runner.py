"""Tune an ensemble's weights on validation, evaluate it once on test, compare it with its best member, log it.

Every member scores each evaluation chunk of users once; its masked scores are turned into the fusion method's
per-user values (:mod:`recforge.models.fusion`), and each candidate weight vector is then only a weighted sum
of those values plus the evaluator's top-K: a trial costs a fraction of a member's evaluation. The values of
the validation chunks are kept in memory when they fit in ``max_cache_mb``, else recomputed per trial.

The members' own metrics come out of the same pass, so they equal their training runs' logged metrics, and
the best member is chosen on validation, like the weights. The test stage may have its own evaluator (list
metrics, slices, a re-ranker), used for the ensemble and every member alike.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recforge.metrics.names import metric_mode
from recforge.models.fusion import fuse, normalize_weights, simplex_grid, transform
from recforge.ensemble.members import Member
from recforge.errors import RecForgeError
from recforge.metrics.beyond import ListContext
from recforge.metrics.evaluator import RankingEvaluator
from recforge.metrics.ranking import mask_scores_

log = logging.getLogger("recforge")
SEARCHES = ("optuna", "grid", "none")


@dataclass
class StageResult:
    metrics: dict[str, float]
    per_user: dict[str, torch.Tensor]


class FusionEvaluator:
    """Evaluates weight vectors for fixed members, method and data stage (``val`` or ``test``)."""

    def __init__(self, models: Sequence[torch.nn.Module], batches: dict[str, list], evaluator: RankingEvaluator,
                 method: str, normalization: str, rrf_k: float, vote_depth: int, max_cache_mb: float = 2048,
                 histories: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 test_evaluator: RankingEvaluator | None = None) -> None:
        self.models, self.batches, self.evaluator = list(models), batches, evaluator
        self.evaluators = {"val": evaluator, "test": test_evaluator or evaluator}
        self.histories = histories  # each stage's inputs for members that read them, as training evaluated them
        self.options = {"method": method, "normalization": normalization, "rrf_k": rrf_k, "vote_depth": vote_depth}
        self.max_cache_mb = max_cache_mb
        self._cache: dict[str, list] = {}
        self.member_results: dict[str, list[StageResult]] = {}

    @torch.no_grad()
    def _compute(self, stage: str) -> Iterator[tuple[dict, torch.Tensor]]:
        outputs: list[list[dict]] = [[] for _ in self.models]
        for model in self.models:
            if self.histories is not None and model.reads_histories:
                model.set_histories(*self.histories[stage])
        for batch in self.batches[stage]:
            values = []
            for m, model in enumerate(self.models):
                scores = model.score_all(batch["users"]).float()
                mask_scores_(scores, batch["exclude_rows"], batch["exclude_cols"])
                if stage not in self.member_results:
                    outputs[m].append(self.evaluators[stage].evaluate_scores(scores.clone(), batch))
                values.append(transform(scores, **self.options))
            yield batch, torch.stack(values)
        if stage not in self.member_results:
            self.member_results[stage] = [StageResult(*self._aggregate(out, stage)) for out in outputs]

    def _aggregate(self, outputs: list[dict], stage: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        metrics, per_user = self.evaluators[stage].aggregate(outputs)
        return {k: float(v) for k, v in metrics.items()}, per_user

    def stage(self, stage: str) -> list | Iterator[tuple[dict, torch.Tensor]]:
        """The (batch, (M, B, n_items) values) pairs of a stage: cached if they fit in ``max_cache_mb``."""
        if stage in self._cache:
            return self._cache[stage]
        n_rows = sum(len(b["users"]) for b in self.batches[stage])
        n_items = self.models[0].n_items
        size_mb = len(self.models) * n_rows * n_items * 4 / 2**20
        if size_mb <= self.max_cache_mb:
            self._cache[stage] = list(self._compute(stage))
            return self._cache[stage]
        log.info("fusion values of %s need %.0f MB > max_cache_mb=%s: recomputed per trial", stage, size_mb,
                 self.max_cache_mb)
        return self._compute(stage)

    def evaluate(self, weights: Sequence[float], stage: str) -> StageResult:
        outputs = [self.evaluators[stage].evaluate_scores(fuse(values, weights), batch)
                   for batch, values in self.stage(stage)]
        return StageResult(*self._aggregate(outputs, stage))

    def members(self, stage: str) -> list[StageResult]:
        if stage not in self.member_results:
            for _ in self._compute(stage):
                pass
        return self.member_results[stage]


def search_weights(score, n_members: int, search: str = "optuna", n_trials: int = 50, grid_step: float = 0.1,
                   weights: Sequence[float] | None = None, direction: str = "max", seed: int = 0) -> pd.DataFrame:
    """Evaluate candidate weight vectors with ``score(weights) -> float``; one row per trial, best first.

    ``optuna``: TPE over one weight in [0, 1] per member, starting from equal weights and from each member
    alone (so the chosen ensemble is never worse on validation than its best member); ``grid``: every point of
    the simplex in steps of ``grid_step``; ``none``: ``weights`` (default equal) only.
    """
    if search not in SEARCHES:
        raise RecForgeError(f"search={search!r} is not one of {list(SEARCHES)}")
    one_hots = [[float(i == j) for j in range(n_members)] for i in range(n_members)]
    rows = []

    def record(w: Sequence[float]) -> float:
        w = normalize_weights(w)
        value = float(score(w))
        rows.append({"trial": len(rows), "value": value, **{f"w{i}": x for i, x in enumerate(w)}})
        return value if math.isfinite(value) else (-math.inf if direction == "max" else math.inf)

    if search == "none":
        record(weights if weights is not None else [1.0] * n_members)
    elif search == "grid":
        for w in simplex_grid(n_members, grid_step):
            record(w)
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize" if direction == "max" else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))
        for start in [[1.0] * n_members, *one_hots]:
            study.enqueue_trial({f"w{i}": x for i, x in enumerate(start)})

        def objective(trial) -> float:
            w = [trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(n_members)]
            return record(w) if sum(w) > 0 else (-math.inf if direction == "max" else math.inf)

        study.optimize(objective, n_trials=max(n_trials, n_members + 1))
    table = pd.DataFrame(rows)
    return table.sort_values("value", ascending=direction == "min", kind="stable").reset_index(drop=True)


@dataclass
class EnsembleOutcome:
    weights: list[float]
    val: dict[str, float]
    test: dict[str, float]
    per_user: dict[str, torch.Tensor]
    members: pd.DataFrame
    trials: pd.DataFrame
    significance: pd.DataFrame
    best_member: int


def tune_and_test(fusion: FusionEvaluator, members: Sequence[Member], metric: str, search: str, n_trials: int,
                  grid_step: float, weights: Sequence[float] | None, seed: int, user_ids: np.ndarray,
                  n_bootstrap: int = 10000) -> EnsembleOutcome:
    """Weights by ``search`` on validation ``metric`` (e.g. ``val/ndcg_at_10``); then one test evaluation."""
    from recforge.analysis.significance import paired_tests
    from recforge.pipeline import ranking_results_frame

    stage, _, name = metric.partition("/")
    if stage != "val" or name not in fusion.evaluator.metric_names():
        raise RecForgeError(f"metric={metric} is not a validation metric; e.g. val/ndcg_at_10 (one of val/"
                            f"{', val/'.join(fusion.evaluator.metric_names()[:6])}, ...)")
    direction = metric_mode(metric)
    trials = search_weights(lambda w: fusion.evaluate(w, "val").metrics[name], len(members), search, n_trials,
                            grid_step, weights, direction, seed)
    best = [float(trials.loc[0, f"w{i}"]) for i in range(len(members))]
    val = fusion.evaluate(best, "val").metrics
    test = fusion.evaluate(best, "test")
    member_val, member_test = fusion.members("val"), fusion.members("test")
    pick = max if direction == "max" else min
    best_member = pick(range(len(members)), key=lambda i: member_val[i].metrics[name])
    table = pd.DataFrame({
        "member": [m.name for m in members] + ["ensemble"],
        "run_id": [m.run_id for m in members] + [""],
        "weight": best + [1.0],
        f"val/{name}": [r.metrics[name] for r in member_val] + [val[name]],
        f"test/{name}": [r.metrics[name] for r in member_test] + [test.metrics[name]],
    })
    frames = {"ensemble": ranking_results_frame(test.per_user, user_ids),
              members[best_member].name: ranking_results_frame(member_test[best_member].per_user, user_ids)}
    significance = paired_tests({k: f.set_index("user")[name].astype(float) for k, f in frames.items()},
                                f"test/{name}", n_bootstrap, seed=seed)
    return EnsembleOutcome(best, {f"val/{k}": v for k, v in val.items()},
                           {f"test/{k}": v for k, v in test.metrics.items()}, test.per_user, table, trials,
                           significance, best_member)


def write_outputs(outcome: EnsembleOutcome, output_dir: Path, user_ids: np.ndarray,
                  context: ListContext | None = None) -> dict[str, Path]:
    from recforge.pipeline import ranking_results_frame, write_parquet
    from recforge.utils.io import atomic_path, atomic_write_text

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"per_user": write_parquet(ranking_results_frame(outcome.per_user, user_ids, context),
                                       output_dir / "per_user_test_metrics.parquet")}
    for name in ("members", "trials", "significance"):
        with atomic_path(output_dir / f"{name}.csv") as tmp:
            getattr(outcome, name).to_csv(tmp, index=False)
        paths[name] = output_dir / f"{name}.csv"
    metrics = {**outcome.val, **outcome.test}
    atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    paths["metrics"] = output_dir / "metrics.json"
    return paths
