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
    counts = torch.bincount(ti, minlength=N).float()
    assert torch.equal(scores[0].floor(), counts)   # the count, plus a tie order below one half
    assert torch.all((scores[0] - counts >= 0) & (scores[0] - counts < 0.5))


def test_popularity_orders_equal_counts_by_a_seeded_shuffle_not_by_item_index():
    """Item indices follow the sorted raw ids (on MovieLens, low ids are older, more rated films): a tie order by
    index would rank held-out items, which all count 0, by that hidden signal. Equal counts get a pseudo-random order
    fixed by the seed instead; different counts keep their order, one seed gives one order in every instance (a saved
    bundle scores as it did), and the order is not part of the state dict (bundles saved before it still load)."""
    from recforge.models.pop import Popularity

    model = Popularity(3, 1000, tie_seed=5)
    model.fit(torch.zeros(6, dtype=torch.long), torch.tensor([7, 7, 7, 3, 3, 500]), torch.ones(6))
    ranked = model.score_all(torch.tensor([0]))[0].argsort(descending=True)
    assert ranked[:3].tolist() == [7, 3, 500]
    zeros = ranked[3:]   # the 997 items that count 0
    assert not torch.equal(zeros, zeros.sort().values)
    assert abs(torch.corrcoef(torch.stack([zeros.float(), torch.arange(997.0)]))[0, 1]) < 0.1
    assert set(model.state_dict()) == {"counts"}
    loaded = Popularity(3, 1000, tie_seed=5)
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded.score_all(torch.tensor([1])), model.score_all(torch.tensor([0])))
    other = Popularity(3, 1000, tie_seed=6)
    other.load_state_dict(model.state_dict())
    reranked = other.score_all(torch.tensor([0]))[0].argsort(descending=True)
    assert reranked[:3].tolist() == [7, 3, 500] and not torch.equal(reranked, ranked)
