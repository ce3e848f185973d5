"""``recforge-retrain``: fold new interactions into the data, retrain, and promote only a model that is not worse.

    recforge-retrain champion=models:/recforge@champion new_data=interactions_2026-11.csv
    recforge-retrain champion=runs:/3f2a.../model new_data=new.parquet mode=scratch register_name=recforge

Steps, each logged in one MLflow run (task ``retrain``) next to the candidates' own training runs:

1. Resolve the champion (a registry alias or a run), download its model bundle and its training config.
2. Read the new interactions (CSV/TSV/Parquet with user, item, timestamp and optionally rating columns; raw
   ids), merge them into the champion's dataset and write the merged file under the output folder, with the
   dataset's user and item features (``new_items``: a file of new items' raw features, added to them). Declared
   features are encoded by the champion's fitted encoders (its bundle's ``features.json``), so that fine-tuned
   feature embeddings keep their columns.
3. Split the merged data in time so that the newest ``eval_fraction`` of the new interactions is the test set
   and the ``val_fraction`` before it validation: every model is judged on the newest data.
4. Candidates: ``finetune`` warm-starts from the champion's weights (``init_from``: known users and items keep
   their rows, new ones are added) for ``finetune_epochs``; ``scratch`` trains the champion's config anew;
   ``both`` trains the two and keeps the better on validation. Closed-form models are simply refitted.
5. The champion, grown to the new users and items without training, is evaluated on the same test set.
6. The candidate is promoted (registered and given ``alias``) only if its test ``metric`` is not worse than
   the champion's by more than ``tolerance``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from recforge.config import CONFIG_DIR, to_yaml
from recforge.metrics.names import metric_mode
from recforge.errors import RecForgeError
from recforge.cli import command, quiet_warnings, run_cli
from recforge.train import train

MODES = ("finetune", "scratch", "both")


def read_new_interactions(path: str, columns: dict[str, str]) -> pd.DataFrame:
    from recforge.data.readers import read_table, standardise

    if not Path(path).is_file():
        raise RecForgeError(f"new_data={path}: file not found")
    if not columns.get("timestamp"):
        raise RecForgeError("new interactions need a timestamp column (columns.timestamp): retraining is judged "
                            "on the newest of them")
    frame = standardise(read_table(path, columns, key_prefix="columns"))
    if frame.empty:
        raise RecForgeError(f"new_data={path}: no interactions in the file")
    return frame


def merge_interactions(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Old and new (user, item, rating, timestamp) rows, ids in the old data's dtype when the new ones fit it."""
    new = new[["user", "item", "rating", "timestamp"]].copy()
    for column in ("user", "item"):
        if old[column].dtype != new[column].dtype:
            try:
                new[column] = new[column].astype(old[column].dtype)
            except (TypeError, ValueError):
                old = old.assign(**{column: old[column].astype(str)})
                new[column] = new[column].astype(str)
    return pd.concat([old[["user", "item", "rating", "timestamp"]], new], ignore_index=True)


def time_cuts(new_timestamps: np.ndarray, eval_fraction: float, val_fraction: float,
              old_until: int | None = None) -> tuple[int, int]:
    """``(val_start, test_start)``: the newest ``eval_fraction`` of the new interactions is test, the
    ``val_fraction`` before it validation. Both must come after ``old_until`` (the old data's last time), or
    old interactions, which the champion may have trained on, would be judged as new."""
    if not (0 < eval_fraction < 1 and 0 < val_fraction < 1 and eval_fraction + val_fraction < 1):
        raise RecForgeError(f"eval_fraction={eval_fraction} and val_fraction={val_fraction} must be in (0, 1) with "
                            "a sum below 1, so that some new interactions are left for training")
    test_start = int(np.quantile(new_timestamps, 1 - eval_fraction, method="higher"))
    val_start = int(np.quantile(new_timestamps, 1 - eval_fraction - val_fraction, method="higher"))
    if val_start >= test_start:
        raise RecForgeError("the new interactions' timestamps do not spread over time enough to hold out "
                            "validation and test parts; give interactions with distinct times")
    if old_until is not None and val_start <= old_until:
        raise RecForgeError(f"the new interactions overlap the dataset in time: validation would start at "
                            f"{val_start} but the dataset runs to {old_until}; give interactions newer than the "
                            "dataset, or a smaller eval_fraction + val_fraction")
    return val_start, test_start


def read_new_items(path: str, id_column: str, declared: list) -> pd.DataFrame:
    """``new_items``: the new items' raw features (CSV/TSV/Parquet with a header; ``id_column`` holds the raw id),
    indexed by raw id and checked against the champion's ``declared`` item features."""
    from recforge.data.sources.tabular import read_features

    if not Path(path).is_file():
        raise RecForgeError(f"new_items={path}: file not found")
    return read_features(Path(path), id_column, "item", declared, "new_items")


def with_rows(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (indexed by raw id) with ``rows`` added; a row of an id ``frame`` has replaces it."""
    if frame.index.dtype != rows.index.dtype:
        try:
            rows = rows.set_axis(rows.index.astype(frame.index.dtype))
        except (TypeError, ValueError):
            frame, rows = frame.set_axis(frame.index.astype(str)), rows.set_axis(rows.index.astype(str))
    return pd.concat([frame[~frame.index.isin(rows.index)], rows])


def feature_settings(champion_data: DictConfig, declared: dict, raw, new_items: pd.DataFrame | None,
                     folder: Path) -> dict:
    """The ``data`` settings that give the candidates the champion's user and item features: each side's frame (with
    ``new_items`` added to the items') written as Parquet under ``folder``, with the champion's declaration
    (``declared``: the source's declared feature columns per side)."""
    from recforge.pipeline import write_parquet

    if new_items is not None and raw.item_features is None:
        raise RecForgeError(f"new_items: the champion's data ({raw.name}) has no item features to add the new items' "
                            f"to; its model reads none")
    settings = {}
    for side, frame in (("user", raw.user_features), ("item", raw.item_features)):
        if frame is None:
            continue
        if side == "item" and new_items is not None:
            frame = with_rows(frame, new_items)
        path = write_parquet(frame.rename_axis(side).reset_index(), folder / f"{side}_features.parquet")
        columns = champion_data.get(f"{side}_columns") if declared.get(side) else None
        settings.update({f"{side}_features": str(path), f"{side}_features_id": side,
                         f"{side}_columns": OmegaConf.to_container(columns, resolve=True) if columns else None})
    return settings


def candidate_config(champion: DictConfig, merged_path: Path, name: str, rating_range, cuts: tuple[int, int],
                     overrides: list[str], paths: DictConfig, tracking: DictConfig | None,
                     features: dict | None = None, encoders: Path | None = None) -> DictConfig:
    """The champion's training config on the merged data, split at ``cuts``, plus the user's ``overrides``;
    ``features``: the ``data`` settings of the feature files (:func:`feature_settings`), ``encoders``: the champion's
    ``features.json``, whose fitted encoders encode the declared features."""
    cfg = champion.copy()
    context = champion.data.get("context_columns")   # the interactions' context, read from the merged timestamps
    with open_dict(cfg):
        cfg.data = OmegaConf.create({
            "_target_": "recforge.data.sources.tabular.TabularSource", "path": str(merged_path), "name": name,
            "columns": {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"},
            "format": "parquet", "rating_range": list(rating_range) if rating_range else None, "verify": False,
            "cache_dir": paths.cache_dir, **(features or {}),
            "context_columns": OmegaConf.to_container(context, resolve=True) if context else None})
        cfg.datamodule.feature_encoders = str(encoders) if encoders is not None and encoders.is_file() else None
        cfg.split = OmegaConf.create({"_target_": "recforge.data.split.TemporalSplit", "val_start": cuts[0],
                                      "test_start": cuts[1]})
        cfg.paths = OmegaConf.create(OmegaConf.to_container(paths, resolve=True))
        if tracking is None:
            cfg.tracking = None
        else:
            cfg.tracking = OmegaConf.create(OmegaConf.to_container(tracking, resolve=True))
        cfg.init_from = None
    for item in overrides:
        if "=" not in item:
            raise RecForgeError(f"overrides: {item!r} is not key=value, e.g. trainer.max_epochs=5")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))  # values parsed as YAML


def evaluate_champion(cfg: DictConfig, bundle_dir: Path, new_from: int) -> dict[str, float]:
    """Validation and test metrics of the champion on the merged data: its weights grown to the new users and
    items, untrained; a closed-form champion (EASE, ItemKNN, ...) is refitted on the interactions it knew
    (those before ``new_from``), which gives the same model in the new index space."""
    import pytorch_lightning as pl
    import torch

    from recforge.pipeline import build_experiment, finite
    from recforge.training.warm_start import warm_start

    exp = build_experiment(cfg)
    if exp.model.requires_training:
        warm_start(exp.model, bundle_dir, exp.datamodule.id_maps.users, exp.datamodule.id_maps.items)
    else:
        known = torch.as_tensor(exp.datamodule.split.train["timestamp"].to_numpy(np.int64) < new_from)
        exp.model.fit(*(t[known] for t in exp.datamodule.train_tensors))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    val = trainer.validate(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    test = trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    return finite({**val, **test})


def decide(champion_value: float, candidate_value: float, metric: str, tolerance: float) -> tuple[float, bool]:
    """``(improvement, promote)``: improvement is positive when the candidate is better (higher, or lower for
    errors such as ``test/rmse``); promote when it is not worse than ``-tolerance``."""
    improvement = (candidate_value - champion_value if metric_mode(metric) == "max"
                   else champion_value - candidate_value)
    return improvement, bool(improvement >= -tolerance)


def retrain(cfg: DictConfig) -> dict:
    """Run the retraining steps of the module docstring; return the decision and every model's metrics."""
    from recforge.tracking.client import tracking_client
    from recforge.config import build
    from recforge.serving.registry import download_bundle, register, resolve

    if cfg.mode not in MODES:
        raise RecForgeError(f"mode={cfg.mode!r} is not one of {list(MODES)}")
    tracker = build(cfg, "tracking") if cfg.get("tracking") else None
    uri = tracker.uri if tracker else cfg.tracking_uri
    client = tracking_client(uri)
    champion = cfg.champion if str(cfg.champion).startswith(("models:/", "runs:/")) else f"runs:/{cfg.champion}/model"
    ref = resolve(champion, uri)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if client.get_run(ref.run_id).data.tags.get("model") == "Ensemble":
        raise RecForgeError(f"champion {cfg.champion} (run {ref.run_id}) is an ensemble: retrain its members and "
                            "run recforge-ensemble on the new runs")
    with tempfile.TemporaryDirectory(prefix="recforge-retrain-") as tmp:
        champion_cfg = OmegaConf.create(Path(client.download_artifacts(ref.run_id, "config.yaml", tmp)).read_text())
    if "data" not in champion_cfg or "model" not in champion_cfg:
        raise RecForgeError(f"champion run {ref.run_id} was not logged by recforge-train (its config has no "
                            "data/model); give a training run's model")
    bundle_dir = download_bundle(ref, output_dir / "champion", uri)

    new = read_new_interactions(cfg.new_data, dict(cfg.columns))
    source = build(champion_cfg, "data")
    raw = source.load()
    merged = merge_interactions(raw.interactions, new)
    from recforge.pipeline import write_parquet

    merged_path = write_parquet(merged, output_dir / "data" / "interactions.parquet")
    declared = getattr(source, "feature_columns", None) or {}
    new_items = (read_new_items(cfg.new_items, cfg.new_items_id, declared.get("item", []))
                 if cfg.get("new_items") else None)
    features = feature_settings(champion_cfg.data, declared, raw, new_items, output_dir / "data")
    cuts = time_cuts(new["timestamp"].to_numpy(np.int64), cfg.eval_fraction, cfg.val_fraction,
                     int(raw.interactions["timestamp"].max()) if len(raw.interactions) else None)
    from recforge.tracking.bundle import FEATURES_FILE

    base = candidate_config(champion_cfg, merged_path, f"{raw.name}+new", raw.rating_range, cuts,
                            list(cfg.overrides), cfg.paths, cfg.tracking if tracker else None, features,
                            bundle_dir / FEATURES_FILE)
    metric, monitor = cfg.metric, base.monitor

    results = {"champion": evaluate_champion(base, bundle_dir, new["timestamp"].min())}
    if metric not in results["champion"]:
        available = ", ".join(sorted(k for k in results["champion"] if k.startswith("test/")))
        raise RecForgeError(f"metric={metric} is not measured for this model; choose one of {available}")
    runs = {}
    from recforge.config import resolve_target

    trainable = resolve_target(base.model._target_).requires_training
    modes = ["finetune", "scratch"] if cfg.mode == "both" else [cfg.mode]
    if not trainable:
        modes = ["scratch"]  # a closed-form model is refitted: fine-tuning and retraining are the same
    for mode in modes:
        run_cfg = base.copy()
        with open_dict(run_cfg):
            run_cfg.paths.output_dir = str(output_dir / mode)
            if run_cfg.get("tracking"):
                run_cfg.tracking.run_name = f"retrain-{mode}"
            if mode == "finetune":
                run_cfg.init_from = str(bundle_dir)
                run_cfg.trainer.max_epochs = int(cfg.finetune_epochs)
        metrics = train(run_cfg)
        runs[mode] = metrics.pop("run_id", None)
        results[mode] = metrics
    pick = max if metric_mode(monitor) == "max" else min  # candidates are compared on validation
    chosen = pick(modes, key=lambda m: results[m].get(monitor, float("nan")))
    champion_value, candidate_value = results["champion"][metric], results[chosen][metric]
    improvement, promote = decide(champion_value, candidate_value, metric, cfg.tolerance)
    registered = None
    name = cfg.register_name or ref.name
    if promote and runs.get(chosen) and name:
        registered = register(runs[chosen], name, cfg.alias, uri)
    decision = {"promoted": promote, "candidate": chosen, "candidate_run_id": runs.get(chosen),
                "champion_run_id": ref.run_id, "metric": metric, "champion_value": champion_value,
                "candidate_value": candidate_value, "improvement": improvement,
                "registered": registered.to_dict() if registered else None,
                "new_interactions": len(new), "val_start": cuts[0], "test_start": cuts[1],
                "new_items": 0 if new_items is None else len(new_items),
                "new_items_without_interactions": [] if new_items is None else
                new_items.index[~new_items.index.astype(str).isin(merged["item"].astype(str))].tolist()}
    (output_dir / "decision.json").write_text(json.dumps({**decision, "metrics": results}, indent=2, default=str))
    if tracker:
        _log(tracker, cfg, decision, results, runs, base)
    verdict = "promoted" if promote else "kept the champion"
    print(f"{verdict}: {chosen} {metric}={candidate_value:.4f} vs champion {champion_value:.4f} "
          f"(improvement {improvement:+.4f}, tolerance {cfg.tolerance})"
          + (f"; {registered.uri} -> version {registered.version}" if registered else ""))
    if decision["new_items_without_interactions"]:
        print(f"{len(decision['new_items_without_interactions'])} new items have no interaction in new_data, so they "
              f"are not in the retrained catalogue: add them to the served model with POST /admin/items "
              f"(docs/serving.md), or retrain once they have interactions")
    return {**decision, "metrics": results}


def _log(tracker, cfg: DictConfig, decision: dict, results: dict, runs: dict, base: DictConfig) -> None:
    status = "FAILED"
    try:
        tracker.start({k: str(v) for k, v in {"champion": cfg.champion, "new_data": cfg.new_data, "mode": cfg.mode,
                                               "metric": cfg.metric, "tolerance": cfg.tolerance,
                                               "finetune_epochs": cfg.finetune_epochs,
                                               "eval_fraction": cfg.eval_fraction}.items()},
                      {"task": "retrain", "decision": "promoted" if decision["promoted"] else "refused",
                       "champion_run_id": decision["champion_run_id"],
                       **{f"candidate.{mode}": run_id for mode, run_id in runs.items() if run_id}}, to_yaml(base))
        metrics = {f"{who}/{k.replace('/', '_')}": v for who, values in results.items() for k, v in values.items()
                   if k.startswith(("val/", "test/")) and isinstance(v, float)}
        metrics.update({"retrain/improvement": decision["improvement"], "retrain/promoted": float(decision["promoted"]),
                        "retrain/new_interactions": float(decision["new_interactions"])})
        tracker.log_metrics(metrics)
        status = "FINISHED"
    finally:
        tracker.finish(status)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="retrain")
def main(cfg: DictConfig) -> None:
    quiet_warnings()
    run_cli(retrain, cfg)


entry = command(main, "retrain")

if __name__ == "__main__":
    entry()
