"""The two-tower model: scores are cosines over the temperature and its retrieval vectors reproduce them, the
in-batch softmax with the log-Q correction (model=twotower's loss and sampler) against a hand formula, candidates
scored once per distinct item, and cold items scored from their features (the shared contract test covers training
and the checkerboard; tests/unit/test_ann.py its ANN index)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from recforge.losses import SampledSoftmaxLoss
from recforge.models.twotower import TwoTower
from recforge.samplers import InBatchSampler
from recforge.training.module import RecommenderModule
from tests.unit.test_models_hybrid import genre_scores, ranks_by_genre


def test_scores_are_cosines_over_the_temperature():
    torch.manual_seed(0)
    model = TwoTower(4, 6, embedding_dim=5, tower_layers=[32, 3], temperature=0.1,
                     user_features=torch.rand(4, 2), item_features=torch.rand(6, 3)).eval()
    users = torch.arange(4)
    with torch.no_grad():
        u, v = model.user_tower(users), model.item_tower(torch.arange(6))
        torch.testing.assert_close(u.norm(dim=1), torch.ones(4))
        scores = model.score_all(users)
        torch.testing.assert_close(scores, (u @ v.T) / 0.1)
        assert scores.abs().max() <= 10 + 1e-5
        torch.testing.assert_close(model.retrieval_queries(users) @ model.retrieval_items().T, scores)
        # (B, n) candidates with repeats go through the item tower once per distinct item
        candidates = torch.tensor([[5, 5, 0], [1, 5, 2], [0, 0, 0], [3, 4, 5]])
        torch.testing.assert_close(model(users, candidates), scores.gather(1, candidates))
        torch.testing.assert_close(model(users, torch.tensor([2, 0, 5, 1])), scores[users, [2, 0, 5, 1]])
    assert model.scores_unseen("items") and not TwoTower(4, 6, use_features=False).scores_unseen("users")
    with pytest.raises(ValueError, match="temperature"):
        TwoTower(4, 6, temperature=0.0)


@pytest.mark.parametrize("logq", [True, False])
def test_in_batch_softmax_with_logq_correction_matches_the_hand_formula(logq):
    torch.manual_seed(0)
    model = TwoTower(3, 3, embedding_dim=4, tower_layers=[4], temperature=0.5)
    # training pairs (0, 0), (1, 1), (2, 2), (1, 0): item shares q = [2/4, 1/4, 1/4]
    train_users, train_items = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 0])
    sampler = InBatchSampler(3, torch.sort(train_users * 3 + train_items).values,
                             item_counts=torch.bincount(train_items, minlength=3))
    module = RecommenderModule(model, SampledSoftmaxLoss(num_negatives=2, logq_correction=logq),
                               partial(torch.optim.Adam, lr=0.01), sampler=sampler, ks=[1])
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    loss = module.compute_loss((users, items, torch.ones(3)))
    with torch.no_grad():
        s = model.score_all(users)
    log_q = [math.log(0.5), math.log(0.25), math.log(0.25)] if logq else [0.0, 0.0, 0.0]
    # with 2 negatives in a batch of 3, each row's negatives are the other two rows' positives (in some order);
    # row 1's negative item 0 is its own training item (pair (1, 0)), masked: rows 0 and 2 see items {0, 1, 2},
    # row 1 sees {1, 2}
    seen = {0: [0, 1, 2], 1: [1, 2], 2: [0, 1, 2]}
    terms = []
    for b, positive in enumerate([0, 1, 2]):
        logits = {j: float(s[b, j]) - log_q[j] for j in seen[b]}
        terms.append(math.log(sum(math.exp(x) for x in logits.values())) - logits[positive])
    assert float(loss) == pytest.approx(sum(terms) / 3, rel=1e-5)


def test_config_selects_the_in_batch_softmax_with_logq(tmp_path):
    from tests.conftest import compose_train

    cfg = compose_train(["model=twotower"], tmp_path)
    assert cfg.loss._target_.endswith("SampledSoftmaxLoss") and cfg.loss.logq_correction
    assert cfg.sampler._target_.endswith("InBatchSampler")
    assert cfg.loss.num_negatives == cfg.datamodule.batch_size - 1


def test_scores_cold_items_from_their_features():
    passed = [seed for seed in range(3) if ranks_by_genre(genre_scores(TwoTower, seed, warm_negatives=True,
                                                                       tower_layers=[16, 8]))]
    assert len(passed) >= 2, f"only seeds {passed} of 0-2 rank the cold items by genre"
