"""``recforge-eval``: reload a trained model and reproduce its test metrics."""

from __future__ import annotations

import inspect
import json
import math
import tempfile
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from recforge.cli import command, run_cli
from recforge.config import CONFIG_DIR
from recforge.errors import RecForgeError
from recforge.pipeline import build_ann, finite
from recforge.restore import load_checkpoint
from recforge.tracking.client import fetch_checkpoint, logged_metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test metrics of the checkpoint ``cfg.ckpt_path`` (or of MLflow run ``cfg.run_id``, printed beside the
    metrics the run logged)."""
    if not cfg.ckpt_path and not cfg.run_id:
        raise RecForgeError("give ckpt_path=<file.ckpt> or run_id=<mlflow run id>")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(cfg.ckpt_path) if cfg.ckpt_path else fetch_checkpoint(cfg.run_id, cfg.tracking_uri,
                                                                           cfg.paths.log_dir, Path(tmp))
        exp = load_checkpoint(path, cfg.data_dir, cfg.max_scores_in_memory)
        exp.module.use_ann(build_ann(cfg))
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        metrics = finite(trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0])
        report = OmegaConf.to_container(cfg.report) if cfg.get("report") else {}
        if report.get("users"):
            from recforge.explain.report import write_report

            unknown = sorted(set(report) - (set(inspect.signature(write_report).parameters) - {"exp", "path"}))
            if unknown:
                raise RecForgeError(f"report.{unknown[0]} is not a key of report; valid keys: users, k, reasons, "
                                    "format, seed")
            fmt = report.get("format", "html")
            path = write_report(exp, Path(cfg.paths.output_dir) / f"explanations.{fmt}", **report)
            print(f"explanations of {report['users']} test user{'s' if report['users'] != 1 else ''}: {path}")
    if cfg.run_id and not cfg.ckpt_path:
        print(against_logged(metrics, logged_metrics(cfg.run_id, cfg.tracking_uri, cfg.paths.log_dir), cfg.run_id))
    else:
        print("\n".join(f"{name:<28} {value:.6f}" for name, value in sorted(metrics.items())))
    return metrics


def against_logged(metrics: dict[str, float], logged: dict[str, float], run_id: str) -> str:
    """Each reproduced test metric beside the one run ``run_id`` logged: ``matches`` (equal to a relative 1e-6)
    or ``differs by <reproduced - logged>``, and a last line saying how many match."""
    lines = [f"{'metric':<28} {'reproduced':>12} {'logged':>12}"]
    matched = 0
    for name, value in sorted(metrics.items()):
        if name not in logged:
            lines.append(f"{name:<28} {value:>12.6f} {'-':>12}  not logged by the run")
            continue
        same = math.isclose(value, logged[name], rel_tol=1e-6, abs_tol=1e-9)
        matched += same
        verdict = "matches" if same else f"differs by {value - logged[name]:+.3g}"
        lines.append(f"{name:<28} {value:>12.6f} {logged[name]:>12.6f}  {verdict}")
    lines.append(f"{matched} of {len(metrics)} test metrics match those logged by run {run_id}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    metrics = run_cli(evaluate, cfg)
    out = Path(cfg.paths.output_dir) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


entry = command(main, "eval")

if __name__ == "__main__":
    entry()
