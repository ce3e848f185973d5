"""Feature-aware and convolutional models: the factorization machine against the naive O(n^2) pairwise sum,
cold items scored from their features, DeepFM as FM + DNN, ConvNCF's outer-product map and conv tower. The
shared contract test covers shapes, determinism and learning on the checkerboard (without features)."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recforge.config import CONFIG_DIR, build_model
from recforge.errors import RecForgeError
from recforge.losses import BPRLoss
from recforge.samplers import NegativeSampler
from recforge.models.convncf import ConvNCF
from recforge.models.deepfm import DeepFM
from recforge.models.fm import FactorizationMachine
from recforge.models.mf import MatrixFactorization
from recforge.tracking.bundle import save_bundle
from recforge.training.module import RecommenderModule
from tests.conftest import compose_train

N_USERS, N_ITEMS, D_USER, D_ITEM = 3, 5, 2, 3


def tiny_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-valued features with some exact zeros (inactive variables)."""
    g = torch.Generator().manual_seed(seed)
    user = torch.rand(N_USERS, D_USER, generator=g) * (torch.rand(N_USERS, D_USER, generator=g) > 0.3)
    item = torch.rand(N_ITEMS, D_ITEM, generator=g) * (torch.rand(N_ITEMS, D_ITEM, generator=g) > 0.3)
    return user, item


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter (biases too) drawn at a scale where all terms matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def naive_fm(fm: FactorizationMachine, user: int, item: int, user_x: torch.Tensor | None,
             item_x: torch.Tensor | None) -> float:
    """``w0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l`` over the input vector ``[one-hot user, one-hot
    item, user features, item features]``, pair by pair in float64."""
    us, its = fm.user_side, fm.item_side
    one_hot = torch.nn.functional.one_hot
    x = [one_hot(torch.tensor(user), fm.n_users), one_hot(torch.tensor(item), fm.n_items)]
    v = [us.embedding.weight, its.embedding.weight]
    w = [us.bias.weight.squeeze(1), its.bias.weight.squeeze(1)]
    if user_x is not None:
        x.append(user_x[user]), v.append(us.feature_embedding), w.append(us.feature_bias)
    if item_x is not None:
        x.append(item_x[item]), v.append(its.feature_embedding), w.append(its.feature_bias)
    x, v, w = (torch.cat([t.detach().double() for t in ts]) for ts in (x, v, w))
    total = float(fm.global_bias.detach()) + float(w @ x)
    for j in range(len(x)):
        for m in range(j + 1, len(x)):
            total += float(v[j] @ v[m]) * float(x[j]) * float(x[m])
    return total


def all_pairs(n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    users, items = torch.meshgrid(torch.arange(n_users), torch.arange(n_items), indexing="ij")
    return users.reshape(-1), items.reshape(-1)


# ---------------------------------------------------------------------------------------------- FM
@pytest.mark.parametrize("with_user, with_item", [(True, True), (False, True), (True, False), (False, False)])
def test_fm_forward_equals_the_naive_pairwise_sum(with_user, with_item):
    user_x, item_x = tiny_features()
    user_x, item_x = (user_x if with_user else None), (item_x if with_item else None)
    fm = randomised(FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=4, user_features=user_x,
                                         item_features=item_x)).double()
    users, items = all_pairs(N_USERS, N_ITEMS)
    expected = torch.tensor([naive_fm(fm, int(u), int(i), user_x, item_x) for u, i in zip(users, items)],
                            dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fm(users, items), expected, rtol=0, atol=1e-10)  # (B,) pairs, gathered rows
        grid = fm(torch.arange(N_USERS), torch.arange(N_ITEMS).expand(N_USERS, -1))  # (B, n): projected table
        torch.testing.assert_close(grid, expected.view(N_USERS, N_ITEMS), rtol=0, atol=1e-10)
        torch.testing.assert_close(fm.score_all(torch.arange(N_USERS)), grid, rtol=0, atol=1e-10)
    assert abs(float(expected.std())) > 0.1  # the example is not degenerate


def test_fm_without_features_is_biased_mf():
    fm = randomised(FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=4))
    users, items = all_pairs(N_USERS, N_ITEMS)
    expected = (fm.global_bias + fm.user_side.bias.weight[users, 0] + fm.item_side.bias.weight[items, 0]
                + (fm.user_side.embedding.weight[users] * fm.item_side.embedding.weight[items]).sum(1))
    torch.testing.assert_close(fm(users, items), expected)


def test_fm_use_features_false_ignores_them():
    user_x, item_x = tiny_features()
    fm = FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=4, use_features=False, user_features=user_x,
                              item_features=item_x)
    assert not fm.user_side.has_features and not fm.item_side.has_features
    assert not any("feature" in name for name, _ in fm.named_parameters())


def test_fm_score_all_agrees_with_forward_with_features():
    torch.manual_seed(0)
    n_users, n_items = 7, 40
    fm = randomised(FactorizationMachine(n_users, n_items, embedding_dim=8, user_features=torch.rand(n_users, 5),
                                         item_features=torch.rand(n_items, 6)))
    users = torch.tensor([0, 3, 6, 3])
    with torch.no_grad():
        scores = fm.score_all(users)
        grid = fm(users, torch.arange(n_items).expand(len(users), -1))
        few = fm(users, torch.tensor([1, 2, 39, 0]))  # fewer ids than rows: the gathered-rows path
    assert scores.shape == (4, n_items)
    torch.testing.assert_close(scores, grid, rtol=0, atol=1e-5)
    torch.testing.assert_close(few, scores[torch.arange(4), torch.tensor([1, 2, 39, 0])], rtol=0, atol=1e-5)
    torch.testing.assert_close(fm.item_vectors(), fm.item_side.embedding.weight
                               + fm.item_side.features @ fm.item_side.feature_embedding)


def test_fm_rejects_misaligned_features():
    with pytest.raises(ValueError, match=r"item_features must be a \(5, d\) matrix"):
        FactorizationMachine(N_USERS, N_ITEMS, item_features=torch.rand(4, 2))


def test_fm_features_are_data_not_checkpoint_state():
    user_x, item_x = tiny_features()
    fm = randomised(FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=4, user_features=user_x, item_features=item_x))
    assert not any("features" == name.rsplit(".", 1)[-1] for name in fm.state_dict())
    fresh = FactorizationMachine(N_USERS, N_ITEMS, embedding_dim=4, user_features=user_x, item_features=item_x)
    fresh.load_state_dict(fm.state_dict())
    torch.testing.assert_close(fresh.eval().score_all(torch.arange(N_USERS)), fm.score_all(torch.arange(N_USERS)))


def train_bpr(model, users: torch.Tensor, items: torch.Tensor, steps: int, lr: float = 0.01,
              warm_negatives: bool = False) -> None:
    """Full-batch BPR steps through the training module, as the contract test's ``train_steps`` does; with
    ``warm_negatives`` negatives are drawn from the trained items only, as under ``split=cold_items``."""
    sampler = NegativeSampler(model.n_items, torch.sort(users * model.n_items + items).values)
    if warm_negatives:
        sampler.restrict_to(torch.unique(items))
    module = RecommenderModule(model, BPRLoss(), partial(torch.optim.Adam, lr=lr), sampler=sampler, ks=[1])
    optimizer = module.configure_optimizers()
    ratings = torch.ones(len(users))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        module.compute_loss((users, items, ratings)).backward()
        optimizer.step()
    model.eval()


def genre_scores(cls, seed: int, warm_negatives: bool = False, **kwargs) -> torch.Tensor:
    """Users 0-3 like the items of genre A (0-3), users 4-7 those of genre B (4-7); items 8-10 (genre A) and
    11-13 (genre B) have no interactions (only their id embeddings' random start, and being sampled as
    negatives unless ``warm_negatives``, as the cold-item split does). Returns every user's scores after BPR
    training of ``cls(..., **kwargs)`` (a model that reads ``sequences`` gets the training pairs)."""
    genre = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    item_features = torch.cat([torch.nn.functional.one_hot(genre, 2).float(),
                               torch.full((14, 1), 0.5)], dim=1)  # and a feature every item shares
    users, items = all_pairs(8, 4)
    items = items + 4 * (users >= 4)
    torch.manual_seed(seed)
    extra = {"mlp_layers": [16, 16], "dropout": 0.0} if cls is DeepFM else {}
    if "sequences" in inspect.signature(cls).parameters:
        extra["sequences"] = torch.stack([users, items])
    model = cls(n_users=8, n_items=14, embedding_dim=8, item_features=item_features, **extra, **kwargs)
    train_bpr(model, users, items, steps=150, warm_negatives=warm_negatives)
    with torch.no_grad():
        return model.score_all(torch.arange(8))


def ranks_by_genre(scores: torch.Tensor) -> bool:
    """Every user ranks the cold items of their genre above the others, and the warm items the same way."""
    cold_a, cold_b = scores[:, 8:11], scores[:, 11:14]
    return bool((cold_a[:4].min(1).values > cold_b[:4].max(1).values).all()
                and (cold_b[4:].min(1).values > cold_a[4:].max(1).values).all()
                and (scores[:4, :4].min(1).values > scores[:4, 4:8].max(1).values).all()
                and (scores[4:, 4:8].min(1).values > scores[4:, :4].max(1).values).all())


def test_fm_scores_cold_items_from_their_features():
    for seed in range(3):
        scores = genre_scores(FactorizationMachine, seed)
        assert ranks_by_genre(scores), f"seed {seed}: {scores[:, 8:]}"


def test_deepfm_scores_cold_items_from_their_features_in_most_runs():
    # DeepFM's MLP also sees the cold items' random id embeddings, and on this tiny problem about one start in
    # five leaves a cold item on the wrong side (13 of 16 seeds pass since the samplers mask the positives their
    # redraws leave, 2.3% of this problem's negatives; one in eight before); FM above never does
    passed = [seed for seed in range(8) if ranks_by_genre(genre_scores(DeepFM, seed))]
    assert len(passed) >= 6, f"only seeds {passed} of 0-7 rank the cold items by genre"


# ---------------------------------------------------------------------------------------------- DeepFM
@pytest.mark.parametrize("with_features", [True, False])
def test_deepfm_logit_is_fm_plus_dnn(with_features):
    user_x, item_x = tiny_features() if with_features else (None, None)
    model = randomised(DeepFM(N_USERS, N_ITEMS, embedding_dim=4, mlp_layers=[8, 6], dropout=0.5,
                              user_features=user_x, item_features=item_x))
    assert model.dnn[0].in_features == (4 if with_features else 2) * 4  # one embedding per field
    users, items = all_pairs(N_USERS, N_ITEMS)
    fm_part = torch.tensor([naive_fm(model.fm, int(u), int(i), user_x, item_x) for u, i in zip(users, items)])
    us, its = model.fm.user_side, model.fm.item_side
    fields = [us.embedding.weight[users], its.embedding.weight[items]]
    if with_features:
        fields[1:1] = [user_x[users] @ us.feature_embedding]
        fields.append(item_x[items] @ its.feature_embedding)
    with torch.no_grad():
        dnn_part = model.dnn_out(model.dnn(torch.cat(fields, dim=1))).squeeze(1)
        torch.testing.assert_close(model(users, items), fm_part.float() + dnn_part, rtol=1e-5, atol=1e-5)
        fm_logit, dnn_logit = model.components(users, items)
        torch.testing.assert_close(fm_logit, fm_part.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dnn_logit, dnn_part)
        assert dnn_part.abs().mean() > 0.01 and fm_part.abs().mean() > 0.01  # both parts contribute


def test_deepfm_score_all_agrees_with_forward_in_small_chunks(monkeypatch):
    from recforge.models import deepfm

    chunks = []
    real = deepfm.tower_over_all_pairs
    monkeypatch.setattr(deepfm, "tower_over_all_pairs", lambda tower, u, i: chunks.append(len(u)) or real(tower, u, i))
    torch.manual_seed(0)
    n_users, n_items = 6, 30
    model = randomised(DeepFM(n_users, n_items, embedding_dim=4, mlp_layers=[16, 8],
                              user_features=torch.rand(n_users, 3), item_features=torch.rand(n_items, 5)))
    users = torch.tensor([5, 0, 2, 2, 4])
    with torch.no_grad():
        grid = model(users, torch.arange(n_items).expand(len(users), -1))
        model.max_activations = 2 * n_items * 16  # two users per chunk (the tower is at most 16 wide)
        torch.testing.assert_close(model.score_all(users), grid, rtol=1e-5, atol=1e-5)
        assert chunks == [2, 2, 1]
        assert model.score_all(users[:0]).shape == (0, n_items)
    torch.testing.assert_close(model.item_vectors(), model.fm.item_vectors())


# ---------------------------------------------------------------------------------------------- ConvNCF
def test_convncf_map_is_the_outer_product_and_the_tower_reaches_one_by_one():
    torch.manual_seed(0)
    model = ConvNCF(n_users=4, n_items=6, embedding_dim=16, channels=8).eval()
    users, items = torch.tensor([0, 3, 1]), torch.tensor([5, 2, 2])
    grid = model.interaction_map(users, items)
    assert grid.shape == (3, 1, 16, 16)
    for b in range(3):
        outer = torch.outer(model.user_embedding.weight[users[b]], model.item_embedding.weight[items[b]])
        torch.testing.assert_close(grid[b, 0], outer)
    shapes = []
    hooks = [layer.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
             for layer in model.tower if isinstance(layer, torch.nn.Conv2d)]
    with torch.no_grad():
        model(users, items)
    for hook in hooks:
        hook.remove()
    assert shapes == [(3, 8, 8, 8), (3, 8, 4, 4), (3, 8, 2, 2), (3, 8, 1, 1)]  # log2(16) halvings
    assert ConvNCF(2, 2, embedding_dim=64, channels=32).tower[-2].out_channels == 32
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ConvNCF(2, 2, embedding_dim=64).tower) == 6  # the paper's


def test_convncf_starts_from_an_mf_bpr_bundle(tmp_path):
    """The paper's pre-training: the embeddings of a trained MF-BPR run are copied in; bad sources are named."""
    torch.manual_seed(0)
    mf = MatrixFactorization(5, 7, embedding_dim=8, use_bias=False)
    folder = save_bundle(tmp_path / "bpr", mf, "recforge.models.mf.MatrixFactorization",
                         {"n_users": 5, "n_items": 7, "embedding_dim": 8, "use_bias": False}, np.arange(5),
                         np.arange(7), sp.csr_matrix((5, 7)), {})
    model = ConvNCF(5, 7, embedding_dim=8, channels=4, mf_from=str(folder))
    assert torch.equal(model.user_embedding.weight, mf.user_embedding.weight)
    assert torch.equal(model.item_embedding.weight, mf.item_embedding.weight)
    assert not torch.equal(ConvNCF(5, 7, embedding_dim=8, channels=4).user_embedding.weight, mf.user_embedding.weight)
    with pytest.raises(RecForgeError, match=r"model\.mf_from.*embedding_dim=8 but model\.embedding_dim=4"):
        ConvNCF(5, 7, embedding_dim=4, mf_from=str(folder))
    with pytest.raises(RecForgeError, match=r"model\.mf_from.*5 users x 7 items but ConvNCF has 6 x 7"):
        ConvNCF(6, 7, embedding_dim=8, mf_from=str(folder))
    with pytest.warns(UserWarning, match="does not exist"):  # a trained ConvNCF reloaded after its source is gone
        ConvNCF(5, 7, embedding_dim=8, mf_from=str(tmp_path / "gone"))


def test_convncf_scores_pairs_of_any_shape_in_chunks():
    torch.manual_seed(0)
    model = randomised(ConvNCF(n_users=5, n_items=7, embedding_dim=8, channels=4))
    users = torch.tensor([4, 0, 2])
    items = torch.tensor([[6, 0, 3, 3], [1, 2, 5, 0], [0, 0, 4, 6]])
    with torch.no_grad():
        grid = model(users, items)
        assert grid.shape == (3, 4)
        one_by_one = torch.stack([torch.stack([model(users[b:b + 1], items[b, j:j + 1])[0] for j in range(4)])
                                  for b in range(3)])
        torch.testing.assert_close(grid, one_by_one)
        model.max_activations = 5 * model.pair_width  # 12 pairs in three chunks
        assert model.chunk_pairs == 5
        torch.testing.assert_close(model(users, items), grid)
        torch.testing.assert_close(model.score_all(users)[torch.arange(3).unsqueeze(1), items], grid)


@pytest.mark.parametrize("dim", [0, 1, 12, 48])
def test_convncf_rejects_an_embedding_dim_that_is_not_a_power_of_two(dim):
    with pytest.raises(ValueError, match=rf"embedding_dim must be a power of two >= 2 .* got {dim}"):
        ConvNCF(n_users=2, n_items=2, embedding_dim=dim)


def test_convncf_regularization_is_the_papers_l2_per_example():
    model = ConvNCF(n_users=3, n_items=4, embedding_dim=4, channels=2, reg_embedding=0.1, reg_weight=0.01)
    users, candidates = torch.tensor([0, 2]), torch.tensor([[1, 3], [0, 1]])
    embeddings = model.user_embedding.weight[users].pow(2).sum() + model.item_embedding.weight[candidates].pow(2).sum()
    network = sum(p.pow(2).sum() for p in [*model.tower.parameters(), *model.predict.parameters()])
    torch.testing.assert_close(model.regularization(users, candidates), (0.1 * embeddings + 0.01 * network) / 2)
    assert float(ConvNCF(3, 4, embedding_dim=4).regularization(users, candidates)) == 0.0
    # several negatives count as their mean: the (user, positive, negative) triple's terms, averaged over the row's
    several = torch.tensor([[1, 3, 0, 2], [0, 1, 3, 3]])
    user_sq, item_sq = (t.weight.pow(2).sum(-1) for t in (model.user_embedding, model.item_embedding))
    per_row = user_sq[users] + item_sq[several[:, 0]] + item_sq[several[:, 1:]].mean(1)
    torch.testing.assert_close(model.regularization(users, several), (0.1 * per_row.sum() + 0.01 * network) / 2,
                               rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name, target, loss", [("fm", FactorizationMachine, "BPRLoss"), ("deepfm", DeepFM, "BCELoss"),
                                                ("convncf", ConvNCF, "BPRLoss")])
def test_configs_compose_and_build_with_features(name, target, loss, tmp_path):
    cfg = compose_train([f"model={name}"], tmp_path)
    assert cfg.loss._target_.endswith(loss)
    user_x, item_x = tiny_features()
    data = {"n_users": N_USERS, "n_items": N_ITEMS, "global_mean": 3.5, "item_popularity": torch.ones(N_ITEMS),
            "interactions": torch.stack(all_pairs(N_USERS, 2)), "user_features": user_x, "item_features": item_x}
    model = build_model(cfg, data)
    assert isinstance(model, target)
    if target is not ConvNCF:
        fm = model if target is FactorizationMachine else model.fm
        assert fm.user_side.has_features and fm.item_side.has_features
        torch.testing.assert_close(fm.user_side.features, user_x)
    model.eval()
    with torch.no_grad():
        scores = model.score_all(torch.arange(N_USERS))
        assert scores.shape == (N_USERS, N_ITEMS)
        torch.testing.assert_close(scores, model(torch.arange(N_USERS), torch.arange(N_ITEMS).expand(N_USERS, -1)),
                                   rtol=1e-4, atol=1e-5)


def test_fm_config_learns_ratings_from_the_global_mean(tmp_path):
    cfg = compose_train(["model=fm", "loss=mse"], tmp_path)
    model = build_model(cfg, {"n_users": 2, "n_items": 3, "global_mean": 3.5})
    assert cfg.loss._target_.endswith("MSELoss") and float(model.global_bias.detach()) == 3.5
    assert "explicit" in FactorizationMachine.feedbacks


def test_the_cold_start_refusal_names_exactly_the_models_that_score_unseen_ids(tmp_path):
    """``pipeline.FEATURE_MODELS`` (the options a refused cold-start run is pointed to) are the model files whose
    models, given features, score unseen users and items from them, and ``ITEM_FEATURE_MODELS`` those that score
    only unseen items from them."""
    from recforge.pipeline import FEATURE_MODELS, ITEM_FEATURE_MODELS
    from recforge.testing import N, checkerboard, sequences

    (tu, ti), _ = checkerboard()
    data = {"n_users": N, "n_items": N, "global_mean": 1.0, "interactions": torch.stack([tu, ti]),
            "sequences": sequences(), "item_popularity": torch.bincount(ti, minlength=N),
            "user_features": torch.rand(N, 2), "item_features": torch.rand(N, 3),
            "user_time_features": torch.rand(N, 3), "item_time_features": torch.rand(N, 3)}
    scoring = {"items": set(), "users": set()}
    for path in sorted((Path(CONFIG_DIR) / "model").glob("*.yaml")):
        model = build_model(compose_train([f"model={path.stem}"], tmp_path), data)
        for side, names in scoring.items():
            if model.scores_unseen(side):
                names.add(path.stem)
    assert scoring["users"] == {*FEATURE_MODELS, "pop"}  # the message names pop apart, as the reference
    assert scoring["items"] == {*FEATURE_MODELS, *ITEM_FEATURE_MODELS, "pop"}
