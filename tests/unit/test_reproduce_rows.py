"""Every row of ``scripts/reproduce.py``'s tables composes into a valid run config (a typo in a row's overrides
would otherwise surface only after an hour of reproduction runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recforge.config import check_target
from tests.conftest import compose_train

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)

ROWS = (
    [(label, [*overrides, "split=predefined", "split.name=u1"]) for label, overrides in reproduce.RATING_MODELS.items()]
    + [(label, ["data=ml-100k", "split=leave_one_out", *overrides]) for label, overrides in reproduce.RANKING_MODELS.items()]
    + [(f"{data} {split}", [f"data={data}", f"split={split}", *reproduce.RANKING_MODELS["fm"]])  # fm reads features
       for data in ("ml-100k", "lastfm-hetrec") for split in ("leave_one_out", "random")]
    + [(f"gowalla {label}", overrides) for label, overrides in reproduce.GOWALLA_MODELS.items()]
)


@pytest.mark.parametrize("overrides", [o for _, o in ROWS], ids=[label for label, _ in ROWS])
def test_row_composes_with_valid_targets(overrides, tmp_path):
    cfg = compose_train([*overrides, "tracking=none"], tmp_path)
    OmegaConf.resolve(cfg)
    for key in ("data", "split", "loss", "model", "optimizer"):
        check_target(cfg, key)


def test_gowalla_rows_report_the_papers_cutoff(tmp_path):
    for label in reproduce.GOWALLA_DEFAULT:
        cfg = compose_train(reproduce.GOWALLA_MODELS[label], tmp_path)
        assert 20 in cfg.eval.ks and cfg.monitor == "val/recall_at_20", label
