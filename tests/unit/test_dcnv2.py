"""DCN-V2's cross layer against hand computations, the low-rank layer as the product of its factors, and the two
structures scoring pairs as score_all does (the shared contract test covers training and the checkerboard)."""

from __future__ import annotations

import pytest
import torch

from recforge.models.dcnv2 import CrossLayer, DCNv2


def test_cross_layer_hand_computed():
    layer = CrossLayer(2)
    with torch.no_grad():
        layer.project.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        layer.project.bias.copy_(torch.tensor([0.5, 0.0]))
    x0, x = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    # W x + b = [3.5, 7]; x0 * that + x = [3.5 + 3, 14 + 4]
    assert layer(x0, x).tolist() == [6.5, 18.0]


def test_low_rank_layer_is_the_full_layer_of_its_product():
    torch.manual_seed(0)
    low = CrossLayer(6, rank=2)
    full = CrossLayer(6)
    with torch.no_grad():
        full.project.weight.copy_(low.project[1].weight @ low.project[0].weight)
        full.project.bias.copy_(low.project[1].bias)
    x0, x = torch.randn(5, 6), torch.randn(5, 6)
    torch.testing.assert_close(low(x0, x), full(x0, x))


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_structures_score_pairs_as_score_all_with_features(structure):
    torch.manual_seed(0)
    model = DCNv2(5, 7, embedding_dim=4, cross_layers=2, mlp_layers=[8], dropout=0.0, structure=structure,
                  user_features=torch.rand(5, 3), item_features=torch.rand(7, 2)).eval()
    users = torch.tensor([0, 3, 4])
    all_items = model.score_all(users)
    pairs = model(users, torch.arange(7).expand(3, -1))
    torch.testing.assert_close(all_items, pairs)
    torch.testing.assert_close(model(users, torch.tensor([1, 2, 6])), all_items[[0, 1, 2], [1, 2, 6]])
    assert model.scores_unseen("items") and model.scores_unseen("users")
    assert not DCNv2(5, 7, use_features=False, item_features=torch.rand(7, 2)).scores_unseen("items")
    with pytest.raises(ValueError, match="structure"):
        DCNv2(5, 7, structure="diagonal")
