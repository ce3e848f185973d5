"""``recforge-ensemble runs=[id1,id2,id3]``: fuse tracked runs, tune the weights on validation, test once.

    recforge-ensemble runs=[3f2a..,9b1c..,77de..]                        # score fusion, min-max, Optuna weights
    recforge-ensemble runs=[...] method=rrf                              # reciprocal rank fusion
    recforge-ensemble -m runs=[...] method=score,rrf,borda,vote          # one ensemble run per method

The ensemble is logged as its own MLflow run (members as tags, weights as params, val/test metrics, the paired
test against the best member) with a pyfunc model that serves like any other run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from recforge.config import CONFIG_DIR, build, option_names, to_yaml
from recforge.errors import RecForgeError
from recforge.cli import command, quiet_warnings, run_cli


def ensemble(cfg: DictConfig) -> dict[str, float]:
    """Build, tune, test and log the ensemble ``cfg`` describes; return its val/test metrics."""
    from recforge.tracking.client import tracking_client
    from recforge.models.fusion import check_method
    from recforge.ensemble.members import load_members
    from recforge.ensemble.runner import FusionEvaluator, tune_and_test, write_outputs
    from recforge.metrics.evaluator import RankingEvaluator
    from recforge.pipeline import build_reranker, git_commit, list_context, sampled_kwargs

    try:
        check_method(cfg.method, cfg.normalization)
    except ValueError as exc:
        raise RecForgeError(str(exc)) from None
    runs = list(cfg.runs)
    if cfg.weights is not None and len(cfg.weights) != len(runs):
        raise RecForgeError(f"weights has {len(cfg.weights)} values for {len(runs)} runs; give one per run")
    tracker = build(cfg, "tracking") if cfg.get("tracking") else None
    client = tracking_client(tracker.uri if tracker else cfg.tracking_uri)
    members, dm = load_members(client, runs, cfg.data_dir, cfg.max_scores_in_memory)
    first = members[0].config
    ks = list(cfg.ks) if cfg.ks else list(first.eval.ks)
    kwargs = dm.model_kwargs()
    evaluator = RankingEvaluator(ks, kwargs["item_popularity"], dm.n_train_users, **sampled_kwargs(first))
    # the test lists: the first member's eval.beyond settings (item vectors from item features only) and cfg.rerank
    context = list_context(first, dm)
    reranker = build_reranker(cfg, context, dm.raw.name, "Ensemble")
    beyond = context if first.eval.get("beyond") is not None else None
    test_evaluator = RankingEvaluator(ks, kwargs["item_popularity"], dm.n_train_users, **sampled_kwargs(first),
                                      beyond=beyond, reranker=reranker)
    batches = {"val": list(dm.val_dataloader()), "test": list(dm.test_dataloader())}
    fusion = FusionEvaluator([m.model for m in members], batches, evaluator, cfg.method, cfg.normalization,
                             cfg.rrf_k, cfg.vote_depth, cfg.max_cache_mb,
                             histories={stage: dm.histories(stage) for stage in ("val", "test")},
                             test_evaluator=test_evaluator)
    outcome = tune_and_test(fusion, members, cfg.metric, cfg.search, cfg.n_trials, cfg.grid_step, cfg.weights,
                            cfg.seed, dm.id_maps.users, cfg.n_bootstrap)
    output_dir = Path(cfg.paths.output_dir)
    paths = write_outputs(outcome, output_dir, dm.id_maps.users, beyond)
    sig = outcome.significance.iloc[0]
    best = members[outcome.best_member]
    name = cfg.metric.partition("/")[2]
    summary = {"ensemble/best_member_val": float(outcome.members[f"val/{name}"].iloc[outcome.best_member]),
               "ensemble/best_member_test": float(outcome.members[f"test/{name}"].iloc[outcome.best_member]),
               "ensemble/test_diff_vs_best": float(sig["mean_diff"]), "ensemble/t_pvalue": float(sig["t_pvalue"]),
               "ensemble/wilcoxon_pvalue": float(sig["wilcoxon_pvalue"])}
    metrics: dict = {**outcome.val, **outcome.test, **summary}
    bundle = save_ensemble_bundle(output_dir / "model", members, outcome.weights, cfg, dm, reranker)
    if tracker:
        status = "FAILED"
        try:
            params = {"method": cfg.method, "normalization": cfg.normalization, "rrf_k": cfg.rrf_k,
                      "vote_depth": cfg.vote_depth, "search": cfg.search, "n_trials": cfg.n_trials,
                      "grid_step": cfg.grid_step, "metric": cfg.metric, "seed": cfg.seed}
            params.update({f"weight.{i}.{m.name}": round(w, 6) for i, (m, w) in enumerate(zip(members, outcome.weights))})
            params.update({f"member.{i}": m.run_id for i, m in enumerate(members)})
            if cfg.get("rerank"):
                params.update({"rerank": option_names(cfg, ("rerank",)).get("rerank", ""),
                               **{f"rerank.{k}": v for k, v in cfg.rerank.items() if k != "_target_"}})
            tracker.start({k: str(v) for k, v in params.items()},
                          {"model": "Ensemble", "dataset": dm.raw.name, "split_fingerprint": dm.fingerprint,
                           "feedback": "implicit", "git_commit": git_commit(), "ensemble.members": ",".join(runs),
                           "ensemble.best_member": best.run_id, **{f"ensemble.member.{i}": m.run_id
                                                                   for i, m in enumerate(members)}}, to_yaml(cfg))
            tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            tracker.log_artifact(paths["per_user"], "results")
            for name in ("members", "trials", "significance", "metrics"):
                tracker.log_artifact(paths[name], "results")
            import pandas as pd

            from recforge.pipeline import write_parquet

            users, items = dm.id_maps.to_frame()
            tracker.log_artifact(write_parquet(users, output_dir / "user_ids.parquet"), "id_maps")
            tracker.log_artifact(write_parquet(items, output_dir / "item_ids.parquet"), "id_maps")
            tracker.log_pyfunc(bundle, pd.DataFrame({"user": dm.id_maps.users[:2], "k": 10}))
            metrics["run_id"] = tracker.run_id
            status = "FINISHED"
        finally:
            tracker.finish(status)
    print(outcome.members.to_string(index=False))
    print(f"best member on validation: {best.name} ({best.run_id}); ensemble - best on test: "
          f"{sig['mean_diff']:+.4f} (95% CI {sig['ci_low']:+.4f}..{sig['ci_high']:+.4f}), paired t p={sig['t_pvalue']:.3g}, "
          f"Wilcoxon p={sig['wilcoxon_pvalue']:.3g}")
    if "run_id" in metrics:
        print(f"mlflow run: {metrics['run_id']}")
    print(f"outputs: {output_dir}")
    return metrics


def save_ensemble_bundle(directory: Path, members, weights, cfg: DictConfig, dm, reranker=None) -> Path:
    """The servable bundle: an EnsembleRecommender holding every member's weights (and the test's re-ranker)."""
    import torch

    from recforge.models.ensemble import EnsembleRecommender
    from recforge.tracking.bundle import save_bundle
    from recforge.utils.io import atomic_dir

    seen = dm.seen_matrix()
    pairs = seen.tocoo()
    kwargs = {"members": [{"target": m.spec[0], "kwargs": m.spec[1]} for m in members], "weights": list(weights),
              "n_items": dm.n_items, "method": cfg.method, "normalization": cfg.normalization,
              "rrf_k": float(cfg.rrf_k), "vote_depth": int(cfg.vote_depth),
              "exclude": torch.as_tensor(np.stack([pairs.row, pairs.col]).astype("int64"))}
    model = EnsembleRecommender(**kwargs)
    for target, member in zip(model.members, members):
        target.load_state_dict(member.model.state_dict())
    with atomic_dir(directory) as folder:   # readers see no bundle or a whole one
        save_bundle(folder, model, "recforge.models.ensemble.EnsembleRecommender", kwargs, dm.id_maps.users,
                    dm.id_maps.items, seen, {"dataset": dm.raw.name, "fingerprint": dm.fingerprint,
                                             "feedback": "implicit", "members": [m.run_id for m in members]},
                    reranker=reranker)
    return directory


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    quiet_warnings()
    metrics = run_cli(ensemble, cfg)
    if metrics:
        (Path(cfg.paths.output_dir) / "ensemble_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        return metrics.get(f"val/{cfg.metric.partition('/')[2]}")
    return None


entry = command(main, "ensemble")

if __name__ == "__main__":
    entry()
