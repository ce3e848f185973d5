"""``recforge-eval``: reload a trained model and reproduce its test metrics."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from recforge.cli import command, run_cli
from recforge.config import CONFIG_DIR
from recforge.errors import RecForgeError
from recforge.pipeline import finite
from recforge.restore import load_checkpoint
from recforge.tracking.client import fetch_checkpoint


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


entry = command(main, "eval")

if __name__ == "__main__":
    entry()
