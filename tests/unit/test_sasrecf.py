"""SASRecF: items are their id embedding fused with their features' embedding, at the input and as the vectors the
states are scored against; ``use_features=false`` is SASRec; items without training interactions are their features.
The shared contract test covers shapes, determinism and learning."""

from __future__ import annotations

import pytest
import torch

from recforge.config import build_model
from recforge.errors import RecForgeError
from recforge.models.sasrec import SASRec
from recforge.models.sasrecf import SASRecF
from tests.conftest import compose_train

# user 0: 3 -> 1 -> 4, user 1: nothing, user 2: 0 -> 2 -> 3 -> 1 -> 4 -> 0; item 5 has no training interaction
N_ITEMS = 6
SEQUENCES = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 2], [3, 1, 4, 0, 2, 3, 1, 4, 0]])
POPULARITY = torch.bincount(SEQUENCES[1], minlength=N_ITEMS)
FEATURES = torch.tensor([[1.0, 0, 0.2], [0, 1, 0.4], [1, 0, 0.6], [0, 1, 0.8], [0.5, 0.5, 1.0], [1, 0, 0.1]])


def sasrecf(features: torch.Tensor = FEATURES, **kwargs) -> SASRecF:
    torch.manual_seed(0)
    return SASRecF(3, N_ITEMS, SEQUENCES, max_len=4, embedding_dim=8, n_heads=2, item_features=features,
                   item_popularity=POPULARITY, **kwargs).eval()


def with_features_of(model: SASRecF, item: int, row: list[float]) -> SASRecF:
    features = FEATURES.clone()
    features[item] = torch.tensor(row)
    other = sasrecf(features, use_features=model.use_features)
    other.load_state_dict(model.state_dict())
    return other


@torch.no_grad()
def test_an_items_score_depends_on_its_features_and_only_its_own():
    model, user = sasrecf(), torch.tensor([0])  # item 2 is not in user 0's history
    before = model.score_all(user)[0]
    changed = (with_features_of(model, 2, [0.0, 1.0, 0.9]).score_all(user)[0] - before).abs() > 1e-6
    assert changed.tolist() == [False, False, True, False, False, False]
    # in user 2's history item 2 is an input: the state, and so every score, moves with its features
    assert not torch.allclose(with_features_of(model, 2, [0.0, 1.0, 0.9]).score_all(torch.tensor([2])),
                              model.score_all(torch.tensor([2])))


@torch.no_grad()
def test_without_features_the_scores_ignore_them_and_equal_sasrecs():
    model = sasrecf(use_features=False)
    users = torch.arange(3)
    torch.testing.assert_close(with_features_of(model, 2, [0.0, 1.0, 0.9]).score_all(users), model.score_all(users))
    torch.manual_seed(0)
    plain = SASRec(3, N_ITEMS, SEQUENCES, max_len=4, embedding_dim=8, n_heads=2).eval()
    assert model.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(model.score_all(users), plain.score_all(users))
    assert not model.scores_unseen("items") and not model.scores_unseen("users")


@torch.no_grad()
def test_an_item_without_training_interactions_is_its_features_alone():
    model = sasrecf()
    assert model.scores_unseen("items") and not model.scores_unseen("users")
    users = torch.arange(3)
    before = model.score_all(users)
    model.item_embedding.weight[5] += 1.0  # item 5's untrained id embedding: left out
    torch.testing.assert_close(model.score_all(users), before)
    model.item_embedding.weight[4] += 1.0  # a trained item's id embedding counts
    assert not torch.allclose(model.score_all(users)[:, 4], before[:, 4])


@torch.no_grad()
def test_the_fused_vectors_are_the_retrieval_vectors_and_the_features_are_not_checkpoint_state():
    model = sasrecf()
    users = torch.arange(3)
    torch.testing.assert_close(model.retrieval_queries(users) @ model.retrieval_items().T, model.score_all(users))
    assert "item_features" not in model.state_dict() and "id_mask" not in model.state_dict()
    assert {"feature_embedding", "fusion.weight"} <= set(model.state_dict())


def test_data_without_item_features_is_refused_in_one_line_naming_the_key(tmp_path):
    cfg = compose_train(["model=sasrecf"], tmp_path)
    data = {"n_users": 3, "n_items": N_ITEMS, "sequences": SEQUENCES, "item_popularity": POPULARITY}
    with pytest.raises(RecForgeError, match=r"^model: model.use_features=true, but the data has no item features: "
                                            r".* or set model.use_features=false \(SASRec on item ids\)$"):
        build_model(cfg, data)
    with pytest.raises(ValueError, match=r"item_features must be a \(6, d\) matrix"):
        SASRecF(3, N_ITEMS, item_features=torch.ones(5, 2))


def test_the_config_composes_with_features_on_and_off(tmp_path):
    data = {"n_users": 3, "n_items": N_ITEMS, "sequences": SEQUENCES, "item_popularity": POPULARITY,
            "item_features": FEATURES}
    cfg = compose_train(["model=sasrecf"], tmp_path)
    assert cfg.model.use_features is True and cfg.split._target_.endswith("LeaveOneOutSplit")
    sasrec = compose_train(["model=sasrec"], tmp_path)  # SASRec's chosen settings, so ids only is SASRec's run
    assert cfg.loss == sasrec.loss and cfg.optimizer == sasrec.optimizer and cfg.datamodule == sasrec.datamodule
    assert {k: v for k, v in cfg.model.items() if k not in ("_target_", "use_features")} == \
        {k: v for k, v in sasrec.model.items() if k != "_target_"}
    model = build_model(cfg, data)
    assert model.use_features and torch.equal(model.item_features[:N_ITEMS], FEATURES)
    model = build_model(compose_train(["model=sasrecf", "model.use_features=false"], tmp_path), data)
    assert not model.use_features and not hasattr(model, "fusion")
