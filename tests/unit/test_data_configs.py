"""Every data and split option composes and instantiates with keys matching its target's signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recforge.config import CONFIG_DIR, check_target
from recforge.data.preprocess import Deduplicate, KCore

DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
SPLITS = sorted(p.stem for p in (Path(CONFIG_DIR) / "split").glob("*.yaml"))


def cfg_for(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["paths.data_dir=/nonexistent", "paths.cache_dir=/tmp/unused",
                                                       *overrides])


@pytest.mark.parametrize("name", DATA)
def test_data_options_instantiate(name):
    extra = ["data.path=/nonexistent.csv"] if name == "custom" else []
    cfg = cfg_for(f"data={name}", *extra)
    check_target(cfg, "data")
    source = instantiate(cfg.data)  # constructing reads nothing
    assert source.name


@pytest.mark.parametrize("name", SPLITS)
def test_split_options_instantiate(name):
    cfg = cfg_for(f"split={name}")
    check_target(cfg, "split")
    assert callable(instantiate(cfg.split))


def test_preprocess_steps_from_config_and_overrides():
    cfg = cfg_for("datamodule.preprocess.1.keep=mean")
    check_target(cfg, "datamodule", fixed=("source", "splitter", "feedback"))
    steps = [instantiate(s) for s in cfg.datamodule.preprocess]
    assert isinstance(steps[1], Deduplicate) and steps[1].keep == "mean"
    cfg = cfg_for("datamodule.preprocess=[{_target_:recforge.data.preprocess.DropMissing},"
                  "{_target_:recforge.data.preprocess.KCore,user_k:3,item_k:2}]")
    steps = [instantiate(s) for s in cfg.datamodule.preprocess]
    assert isinstance(steps[1], KCore) and (steps[1].user_k, steps[1].item_k) == (3, 2)
