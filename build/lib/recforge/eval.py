"""``recforge-eval``: reload a trained model and reproduce its test metrics."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from recforge.config import CONFIG_DIR, OmegaConfBaseException
from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment, finite
from recforge.train import run_cli
from recforge.utils.trust import require_trusted_config


def fetch_checkpoint(run_id: str, tracking_uri: str | None, log_dir: str, into: Path) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from recforge.tracking.tracker import sqlite_store_uri

    uri = tracking_uri or sqlite_store_uri(log_dir)
    try:
        local = MlflowClient(uri).download_artifacts(run_id, "checkpoints", str(into))
    except MlflowException as exc:
        raise RecForgeError(f"run_id={run_id}: no checkpoint artifact in {uri} ({exc.message})") from None
    found = sorted(Path(local).glob("*.ckpt"))
    if not found:
        raise RecForgeError(f"run_id={run_id}: the run logged no checkpoint")
    return found[0]


def checkpoint_config(checkpoint: dict, where: str, data_dir: str | None = None,
                      max_scores_in_memory: int | None = None) -> DictConfig:
    """The training config stored in a RecForge checkpoint, pointed at ``data_dir`` and an evaluation chunk
    budget if given (neither changes the split)."""
    if "recforge_config" not in checkpoint:
        raise RecForgeError(f"{where}: not a RecForge checkpoint (no stored config)")
    try:
        cfg = OmegaConf.create(checkpoint["recforge_config"])
        require_trusted_config(OmegaConf.to_container(cfg, resolve=True), f"{where} (its stored config)")
    except OmegaConfBaseException as exc:
        raise RecForgeError(f"{where}: its stored config cannot be read ({str(exc).splitlines()[0]})") from None
    if data_dir and "data_dir" in cfg.data:
        cfg.data.data_dir = data_dir
    if max_scores_in_memory:
        cfg.datamodule.max_scores_in_memory = int(max_scores_in_memory)
    return cfg


def load_checkpoint(path: str | Path, data_dir: str | None = None, max_scores_in_memory: int | None = None):
    """The experiment (data, model with the checkpoint's weights, module) a RecForge checkpoint was trained in,
    rebuilt from its stored config; refused if the data no longer gives the same split."""
    path = Path(path)
    if not path.is_file():
        raise RecForgeError(f"ckpt_path={path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a checkpoint at all
        raise RecForgeError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise RecForgeError(f"{path}: not a RecForge checkpoint")
    exp = build_experiment(checkpoint_config(checkpoint, str(path), data_dir, max_scores_in_memory))
    if exp.datamodule.fingerprint != checkpoint.get("recforge_split_fingerprint"):
        raise RecForgeError(
            f"{path}: the data now gives split {exp.datamodule.fingerprint}, but the model was trained on "
            f"{checkpoint.get('recforge_split_fingerprint')}; the raw data or the split code changed"
        )
    exp.module.load_state_dict(checkpoint["state_dict"])
    return exp


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test metrics of the checkpoint ``cfg.ckpt_path`` (or of MLflow run ``cfg.run_id``)."""
    if not cfg.ckpt_path and not cfg.run_id:
        raise RecForgeError("give ckpt_path=<file.ckpt> or run_id=<mlflow run id>")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(cfg.ckpt_path) if cfg.ckpt_path else fetch_checkpoint(cfg.run_id, cfg.tracking_uri,
                                                                           cfg.paths.log_dir, Path(tmp))
        exp = load_checkpoint(path, cfg.data_dir, cfg.max_scores_in_memory)
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        metrics = finite(trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0])
    for name, value in sorted(metrics.items()):
        print(f"{name:<28} {value:.6f}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    metrics = run_cli(evaluate, cfg)
    out = Path(cfg.paths.output_dir) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
