"""Wide & Deep's wide part (ids, features and user x item feature crosses) against a hand computation, the logit as
wide plus deep, score_all in small chunks as the pairs, and cold items scored from their features (the shared
contract test covers training and the checkerboard)."""

from __future__ import annotations

import pytest
import torch

from recforge.models.widedeep import WideDeep
from tests.unit.test_models_hybrid import genre_scores, ranks_by_genre


def hand_set_model() -> WideDeep:
    model = WideDeep(2, 3, embedding_dim=2, mlp_layers=[4], user_features=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                     item_features=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).eval()
    with torch.no_grad():
        model.bias.fill_(0.05)
        model.user_side.bias.weight.copy_(torch.tensor([[0.1], [0.2]]))
        model.item_side.bias.weight.copy_(torch.tensor([[0.0], [0.5], [1.0]]))
        model.user_side.feature_bias.copy_(torch.tensor([0.3, -0.3]))
        model.item_side.feature_bias.copy_(torch.tensor([0.2, 0.4]))
        model.cross.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    return model


def test_wide_part_hand_computed():
    model = hand_set_model()
    users, items = torch.tensor([1, 0]), torch.tensor([2, 1])
    with torch.no_grad():
        wide = model.wide(model.user_side(users), model.item_side(items), users, items)
    # (1, 2): 0.05 + (0.2 - 0.3) + (1.0 + 0.2 + 0.4) + [0, 1] W [1, 1] = 0.05 - 0.1 + 1.6 + (3 + 4)
    # (0, 1): 0.05 + (0.1 + 0.3) + (0.5 + 0.4) + [1, 0] W [0, 1] = 0.05 + 0.4 + 0.9 + 2
    torch.testing.assert_close(wide, torch.tensor([8.55, 3.35]))


def test_logit_is_wide_plus_deep_and_score_all_agrees_in_chunks():
    model = hand_set_model()
    users, items = torch.tensor([1, 0]), torch.tensor([2, 1])
    us, its = model.user_side, model.item_side
    fields = torch.cat([us.embedding.weight[users], us.features[users] @ us.feature_embedding,
                        its.embedding.weight[items], its.features[items] @ its.feature_embedding], dim=1)
    with torch.no_grad():
        deep = model.deep_out(model.deep(fields)).squeeze(1)
        torch.testing.assert_close(model(users, items), torch.tensor([8.55, 3.35]) + deep)
        grid = model(torch.arange(2), torch.arange(3).expand(2, -1))
        model.max_activations = 3 * model.pair_width  # one user per chunk
        torch.testing.assert_close(model.score_all(torch.arange(2)), grid)
    assert model.scores_unseen("items") and model.scores_unseen("users")


def test_crosses_need_features_on_both_sides():
    items = torch.rand(3, 2)
    assert WideDeep(2, 3, item_features=items, user_features=torch.rand(2, 4)).cross.shape == (4, 2)
    assert WideDeep(2, 3, item_features=items).cross is None
    assert WideDeep(2, 3, item_features=items, user_features=torch.rand(2, 4), cross_features=False).cross is None
    assert not WideDeep(2, 3, item_features=items, use_features=False).scores_unseen("items")
    with pytest.raises(ValueError, match="mlp_layers"):
        WideDeep(2, 3, mlp_layers=[])


def test_scores_cold_items_from_their_features():
    passed = [seed for seed in range(3)
              if ranks_by_genre(genre_scores(WideDeep, seed, mlp_layers=[16, 16]))]
    assert len(passed) >= 2, f"only seeds {passed} of 0-2 rank the cold items by genre"
