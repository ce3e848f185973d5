"""``Recommender.add_items``: every model that scores unseen items from their features takes new items whose id part
is zero. After a few training steps on the checkerboard, the grown model scores exactly as the same class built for
the grown catalogue (the new items' feature rows appended, their id rows zero) with the trained weights, and the
old items' scores do not move; a session (SASRecF) may hold new items."""

from __future__ import annotations

import pytest
import torch

from recforge.config import build_model
from recforge.testing import N, build, checkerboard, sequences, train_steps

FEATURE_MODELS = ["fm", "deepfm", "dcnv2", "widedeep", "autoint", "din", "twotower", "sasrecf"]
NEW = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # parity 0, parity 1, half of each


def reference(cfg, trained: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model class built for ``N + 3`` items from the constructor, the trained weights copied in, every row past
    the trained items' zero (the new items' id rows; a padding row was zero already)."""
    (_, ti), _ = checkerboard()
    features = torch.nn.functional.one_hot(torch.arange(N) % 2, 2).float()
    fresh = build_model(cfg, {"n_users": N, "n_items": N + len(NEW), "global_mean": 1.0, "sequences": sequences(),
                              "item_features": torch.cat([features, NEW]),
                              "item_popularity": torch.cat([torch.bincount(ti, minlength=N),
                                                            torch.zeros(len(NEW), dtype=torch.long)])})
    state = {}
    for name, fresh_value in fresh.state_dict().items():
        old = trained[name]
        if old.shape == fresh_value.shape:
            state[name] = old
        else:  # an item table: the trained rows, then zeros
            assert old.shape[1:] == fresh_value.shape[1:] and not old[N:].any(), name
            state[name] = torch.cat([old[:N], old.new_zeros(fresh_value.shape[0] - N, *old.shape[1:])])
    fresh.load_state_dict(state)
    return fresh.eval()


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_new_items_score_as_the_model_built_for_them(name):
    cfg, model, loss = build(name)
    train_steps(cfg, model, loss, 5)
    model.eval()
    users = torch.arange(N)
    trained = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        before = model.score_all(users)
        assert model.scores_unseen("items")
        model.add_items(NEW)
        after = model.score_all(users)
        expected = reference(cfg, trained).score_all(users)
    assert model.n_items == N + len(NEW) and after.shape == (N, N + len(NEW))
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after[:, :N], before, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, N], after[:, N + 1])  # the new items differ by their features
    if model.answers_histories:  # SASRecF: a session holding new items reads them as the reference does
        indptr, history = torch.tensor([0, 3, 5]), torch.tensor([1, N, N + 2, N + 1, 4])
        with torch.no_grad():
            torch.testing.assert_close(model.score_histories(indptr, history),
                                       reference(cfg, trained).score_histories(indptr, history), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_id_only_models_refuse_new_items(name):
    _, model, _ = build(name)
    assert not model.scores_unseen("items")
    with pytest.raises(NotImplementedError, match="cannot score items it never trained on"):
        model.add_items(NEW)
