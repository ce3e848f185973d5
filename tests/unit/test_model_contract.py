"""One contract test over every model in conf/model (the check `implicit`'s recommender_base_test runs).

The checks live in :mod:`recforge.testing`, so that a model added from a user's own repository runs the same ones
(docs/extending.md): shapes, determinism under a seed, a few training steps reduce the loss, and on a checkerboard
dataset (user u likes item i when u + i is even) the held-out item is ranked first after training (7 of 8 users).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recforge.config import CONFIG_DIR
from recforge.testing import (CONTRACT_CHECKS, NOT_PERSONALISED, N, build, check_checkerboard, check_deterministic,
                              check_shapes, check_training_reduces_loss, checkerboard, train_steps)

MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_score_all_agree_with_forward(name):
    check_shapes(name)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name):
    check_deterministic(name)


@pytest.mark.parametrize("name", MODELS)
def test_training_reduces_loss(name):
    if not build(name)[1].requires_training:
        pytest.skip(f"{name} is fitted in closed form (no loss to reduce); its fit is checked by the checkerboard")
    check_training_reduces_loss(name)


@pytest.mark.parametrize("name", [m for m in MODELS if m not in NOT_PERSONALISED])
def test_checkerboard_held_out_item_ranked_first(name):
    check_checkerboard(name)


def test_the_checks_fail_for_a_model_that_breaks_the_contract(monkeypatch):
    """A model whose score_all disagrees with forward, and one that learns nothing, are caught."""
    from recforge.models.mf import MatrixFactorization

    monkeypatch.setattr(MatrixFactorization, "score_all", lambda self, users: torch.zeros(len(users), self.n_items))
    with pytest.raises(AssertionError):
        check_shapes("bpr")
    with pytest.raises(AssertionError):
        check_checkerboard("bpr")
    assert len(CONTRACT_CHECKS) == 4


def test_popularity_is_not_personalised():
    cfg, model, loss = build("pop")
    train_steps(cfg, model, loss, 0)
    scores = model.score_all(torch.arange(N))
    assert torch.equal(scores[0], scores[1])
    (tu, ti), _ = checkerboard()
    assert torch.equal(scores[0], torch.bincount(ti, minlength=N).float())
