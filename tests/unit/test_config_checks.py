"""Config values that would run but should not (issue #29): sizes of zero, cut-offs above the catalogue, wrong
types, a sequential model on a random split. Each is one RecForgeError (or one warning) naming the key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment, check_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, message", [
    (["model.embedding_dim=0"], r"^model.embedding_dim=0 must be a positive integer: a size of the model .*; "
                                r"e.g. model.embedding_dim=64$"),
    (["model=autorec", "model.hidden_dim=-3"], r"^model.hidden_dim=-3 must be a positive integer"),
    (["model=mlp", "model.layers=[64,0,8]"], r"^model.layers=\[64,0,8\] must be positive integers: .* "
                                             r"e.g. model.layers=\[64,32,16,8\]$"),
    (["model=multvae", "model.hidden_dims=[600]", "model.latent_dim=0"], r"^model.latent_dim=0 must be"),
    (["model=sasrec", "model.n_heads=0"], r"^model.n_heads=0 must be a positive integer"),
    (["model=ials", "model.factors=0"], r"^model.factors=0 must be a positive integer"),
])
def test_a_model_size_of_zero_is_refused_with_the_key_and_an_example(tiny_cfg, overrides, message):
    with pytest.raises(RecForgeError, match=message):
        check_config(tiny_cfg(*overrides))


def test_sizes_that_may_be_zero_are_not_sizes(tiny_cfg):
    check_config(tiny_cfg("model=lightgcn", "model.n_layers=0"))  # LightGCN without propagation is MF


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=abc", r"^trainer.max_epochs='abc' must be an integer, e.g. trainer.max_epochs=15$"),
    ("seed=abc", r"^seed='abc' must be an integer, e.g. seed=42$"),
    ("seed=1.5", r"^seed=1.5 must be an integer"),
    ("datamodule.batch_size=big", r"^datamodule.batch_size='big' must be an integer"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(tiny_cfg, override, message):
    with pytest.raises(RecForgeError, match=message):
        check_config(tiny_cfg(override))


def test_train_refuses_a_seed_that_is_not_an_integer_before_seeding(tiny_cfg):
    from recforge.train import train

    with pytest.raises(RecForgeError, match=r"^seed='abc' must be an integer"):
        train(tiny_cfg("seed=abc"))


def test_a_cut_off_above_the_catalogue_is_refused_with_its_size(tiny_cfg):
    cfg = tiny_cfg("eval.ks=[10,100]")  # the tiny synthetic data has 60 items
    check_config(cfg)  # the catalogue size is known once the data is read
    with pytest.raises(RecForgeError, match=r"^eval.ks=\[10, 100\]: 100 is above the catalogue size \(60 items\).* "
                                            r"e.g. eval.ks=\[10\]$"):
        build_experiment(cfg)
    assert build_experiment(tiny_cfg("eval.ks=[10,60]")).datamodule.n_items == 60


def test_rating_models_ignore_the_cut_offs(tiny_cfg):
    build_experiment(tiny_cfg("model=mf", "eval.ks=[100]"))  # explicit feedback: no ranking metrics


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "bert4rec", "caser"])
def test_a_sequential_model_on_a_random_split_is_warned_about_once(tiny_cfg, caplog, model):
    with caplog.at_level(logging.WARNING, logger="recforge"):
        check_config(tiny_cfg(f"model={model}", "split=random"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "holds out interactions from anywhere in a history" in warnings[0]
    assert "split=leave_one_out" in warnings[0]


def test_no_warning_for_a_sequential_model_on_its_own_split_or_for_other_models(tiny_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="recforge"):
        check_config(tiny_cfg("model=sasrec"))  # the model's file picks leave_one_out
        check_config(tiny_cfg("model=bpr", "split=random"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_cli_stops_on_a_seed_that_is_not_an_integer_with_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RECFORGE_CACHE_DIR": str(tmp_path / "cache"),
           "RECFORGE_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-m", "recforge.train", "tracking=none", "seed=abc"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: seed='abc' must be an integer, e.g. seed=42"]
