"""Shared fixtures: compose the real configs (the same files the CLI uses) for tiny, fast runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from recforge.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per test worker: two workers with two OpenMP threads each on two cores spin
    # against each other and run several times slower
    import torch

    torch.set_num_threads(1)
TINY = ["data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "trainer.max_epochs=2",
        "datamodule.batch_size=256"]


def shared_datasets() -> Path | None:
    """The real datasets folder (RECFORGE_DATA_DIR, else ../shared/datasets), or None."""
    candidate = Path(os.environ.get("RECFORGE_DATA_DIR", REPO.parent / "shared" / "datasets"))
    return candidate if candidate.is_dir() else None


def compose_train(overrides: list[str], tmp_path: Path, config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """A factory: the train config on tiny synthetic data, outputs under ``tmp_path``, tracking off."""

    def make(*overrides: str, tracking: bool = False) -> DictConfig:
        extra = [] if tracking else ["tracking=none"]
        return compose_train(TINY + extra + list(overrides), tmp_path)

    return make
