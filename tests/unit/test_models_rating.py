"""Rating models and NeuMF pre-training: AutoRec and its masked row loss by hand, the MLP rating network's
time features, and NeuMF initialised from GMF and MLP bundles (He et al. 2017, Section 3.4.1)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recforge.config import build_model
from recforge.errors import RecForgeError
from recforge.losses import RowMSELoss
from recforge.models.autorec import OBSERVED_ZERO, AutoRec
from recforge.models.gmf import GMF
from recforge.models.mlp import MLP
from recforge.models.mlp_rating import MLPRating
from recforge.models.neumf import NeuMF
from recforge.tracking.bundle import Bundle, save_bundle
from recforge.training.module import RecommenderModule
from tests.conftest import compose_train


# ---------------------------------------------------------------------------------------------- the row loss
def test_row_mse_counts_observed_entries_only():
    output = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    rows = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    # observed: (2 - 3)^2 + (3 - 1)^2 + (4 - 2)^2 = 1 + 4 + 4 over 3 ratings; the unobserved 1, 5, 6 do not count
    assert float(RowMSELoss()(output, rows, torch.tensor(7.0))) == pytest.approx(3.0)
    assert float(RowMSELoss()(output, torch.zeros_like(rows), torch.tensor(0.0))) == 0.0
    loss = RowMSELoss()
    assert (loss.feedback, loss.view, loss.num_negatives) == ("explicit", "users", 0)


# ---------------------------------------------------------------------------------------------- AutoRec
def tiny_autorec(item_based: bool = True, hidden_dim: int = 2) -> AutoRec:
    # 3 users x 4 items; user 2 rated item 0 twice (the last rating, 5, counts) and item 3 with a rating of 0
    interactions = torch.tensor([[0, 0, 1, 2, 2, 2], [0, 2, 1, 0, 3, 0]])
    ratings = torch.tensor([4.0, 2.0, 3.0, 1.0, 0.0, 5.0])
    return AutoRec(3, 4, interactions, ratings, global_mean=2.5, hidden_dim=hidden_dim, item_based=item_based)


def test_autorec_keeps_rating_rows_and_marks_observed_zeros():
    model = tiny_autorec()
    z = OBSERVED_ZERO
    torch.testing.assert_close(model.user_rows(torch.tensor([0, 1, 2])),
                               torch.tensor([[4, 0, 2, 0], [0, 3, 0, 0], [5, 0, 0, z]]))
    torch.testing.assert_close(model.item_rows(torch.tensor([0, 1, 2, 3])),
                               torch.tensor([[4, 0, 5], [0, 3, 0], [2, 0, 0], [0, 0, z]]))
    assert model.user_rows(torch.tensor([2]))[0, 3] != 0  # the observed 0 stays distinguishable from "unrated"
    assert model.train_view == "items" and tiny_autorec(item_based=False).train_view == "users"
    assert not any("history" in key for key in model.state_dict())  # the data is not part of the weights


def test_i_autorec_reconstruct_by_hand():
    model = tiny_autorec(item_based=True)  # an item's row holds its 3 users' ratings
    with torch.no_grad():
        model.encoder.weight.copy_(torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]]))  # V: hidden x users
        model.encoder.bias.copy_(torch.tensor([0.2, -0.3]))  # mu
        model.decoder.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, 0.0]]))  # W: users x hidden
        model.decoder.bias.copy_(torch.tensor([0.5, 1.0, -0.5]))  # b
    row = [4.0, 0.0, 5.0]  # item 0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    h = [sig(0.1 * 4 + 0.3 * 5 + 0.2), sig(-0.1 * 5 - 0.3)]
    expected = [1.0 * h[0] + 2.0 * h[1] + 0.5, -1.0 * h[0] + 0.5 * h[1] + 1.0, 3.0 * h[0] - 0.5]
    out, kl = model.reconstruct(torch.tensor([row]), torch.tensor([0]))
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(kl) == 0.0


@pytest.mark.parametrize("item_based", [True, False])
def test_autorec_forward_reads_the_reconstruction(item_based):
    torch.manual_seed(0)
    model = tiny_autorec(item_based=item_based, hidden_dim=5).eval()
    with torch.no_grad():
        if item_based:  # (n_items, n_users) reconstructed item rows, read at [item, user]
            full = model.reconstruct(model.item_rows(torch.arange(4)))[0].T
        else:  # (n_users, n_items) reconstructed user rows, read at [user, item]
            full = model.reconstruct(model.user_rows(torch.arange(3)))[0]
        users, items = torch.tensor([0, 2, 1, 2]), torch.tensor([3, 0, 1, 2])
        torch.testing.assert_close(model(users, items), full[users, items])
        grid = torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1], [2, 0, 1, 0], [1, 2, 3, 0]])
        torch.testing.assert_close(model(users, grid), full[users.unsqueeze(1), grid])
        torch.testing.assert_close(model.score_all(torch.tensor([2, 0])), full[[2, 0]])


def test_autorec_falls_back_to_the_global_mean_for_users_and_items_without_ratings():
    model = AutoRec(3, 3, torch.tensor([[0, 1], [0, 1]]), torch.tensor([4.0, 2.0]), global_mean=3.0, hidden_dim=4)
    with torch.no_grad():
        scores = model.score_all(torch.arange(3))
        pairs = model(torch.tensor([2, 0, 0]), torch.tensor([0, 2, 1]))
    assert scores[2].tolist() == [3.0, 3.0, 3.0] and scores[:, 2].tolist() == [3.0, 3.0, 3.0]  # no user 2, item 2
    assert pairs[:2].tolist() == [3.0, 3.0] and float(pairs[2]) != 3.0


def low_rank_ratings(n_users: int = 40, n_items: int = 30, seed: int = 0):
    """Rank-2 ratings around 3 (no noise), 70% of the pairs for training and the rest held out."""
    gen = torch.Generator().manual_seed(seed)
    full = 3.0 + torch.randn(n_users, 2, generator=gen) @ torch.randn(2, n_items, generator=gen)
    users, items = torch.meshgrid(torch.arange(n_users), torch.arange(n_items), indexing="ij")
    users, items, ratings = users.reshape(-1), items.reshape(-1), full.reshape(-1)
    train = torch.rand(len(users), generator=gen) < 0.7
    return (users[train], items[train], ratings[train]), (users[~train], items[~train], ratings[~train])


@pytest.mark.parametrize("item_based", [True, False])
def test_autorec_beats_the_global_mean_on_held_out_ratings(item_based):
    (tu, ti, tr), (hu, hi, hr) = low_rank_ratings()
    mean = float(tr.mean())
    torch.manual_seed(0)
    model = AutoRec(40, 30, torch.stack([tu, ti]), tr, global_mean=mean, hidden_dim=50, item_based=item_based)
    module = RecommenderModule(model, RowMSELoss(), partial(torch.optim.Adam, lr=0.01, weight_decay=1e-4))
    assert module.view == ("items" if item_based else "users")
    optimizer = module.configure_optimizers()
    ids = torch.arange(30 if item_based else 40)
    losses = []
    for step in range(300):
        batch = ids[torch.randperm(len(ids))[:16]]
        optimizer.zero_grad()
        loss = module.compute_loss((batch, batch, torch.ones(len(batch))))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        rmse = float((model(hu, hi) - hr).pow(2).mean().sqrt())
    baseline = float((hr - mean).pow(2).mean().sqrt())
    assert sum(losses[-10:]) < sum(losses[:10])
    assert rmse < 0.8 * baseline, f"held-out RMSE {rmse:.3f} vs global mean {baseline:.3f}"


# ---------------------------------------------------------------------------------------------- MLP rating
def time_features(n: int, shift: float = 0.0) -> torch.Tensor:
    t = torch.linspace(0, 1, n)
    return torch.stack([t * 0.5, t * 0.75, t], 1) + shift


def test_mlp_rating_shapes_offset_and_time_features():
    def make(item_shift: float) -> MLPRating:
        torch.manual_seed(0)
        return MLPRating(5, 6, embedding_dim=4, layers=[8, 4], global_mean=3.5, user_time_features=time_features(5),
                         item_time_features=time_features(6, item_shift)).eval()

    model = make(0.0)
    users = torch.tensor([0, 4, 2])
    with torch.no_grad():
        assert model(users, torch.tensor([1, 5, 0])).shape == (3,)
        grid = torch.arange(6).expand(3, -1)
        assert model(users, grid).shape == (3, 6)
        torch.testing.assert_close(model.score_all(users), model(users, grid))
        assert not torch.allclose(model.score_all(users), make(0.5).score_all(users))  # the item times are used
        model.predict.weight.zero_()
        assert model.score_all(users).eq(3.5).all()  # the network predicts an offset from global_mean
    default = MLPRating(5, 6, embedding_dim=4, layers=[8])
    assert default.user_time.shape == (5, 3) and default.item_time.eq(0).all()
    assert "user_time" not in default.state_dict()


# ---------------------------------------------------------------------------------------------- NeuMF pre-training
def save(model: torch.nn.Module, folder, target: str, kwargs: dict):
    return save_bundle(folder, model, target, kwargs, np.arange(model.n_users), np.arange(model.n_items),
                       sp.csr_matrix((model.n_users, model.n_items)), {})


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(0)
    gmf = GMF(5, 4, embedding_dim=3)
    mlp = MLP(5, 4, layers=[8, 4, 2], init_std=0.5)
    with torch.no_grad():
        gmf.predict.bias.fill_(0.3)
        mlp.predict.bias.fill_(-0.7)
    gmf_dir = save(gmf, tmp_path / "gmf", "recforge.models.gmf.GMF", {"n_users": 5, "n_items": 4, "embedding_dim": 3})
    mlp_dir = save(mlp, tmp_path / "mlp", "recforge.models.mlp.MLP", {"n_users": 5, "n_items": 4, "layers": [8, 4, 2]})
    return gmf.eval(), mlp.eval(), str(gmf_dir), str(mlp_dir)


def test_neumf_starts_from_gmf_and_mlp(pretrained):
    gmf, mlp, gmf_dir, mlp_dir = pretrained
    alpha = 0.3
    model = NeuMF(5, 4, gmf_dim=3, mlp_layers=[8, 4, 2], gmf_from=gmf_dir, mlp_from=mlp_dir,
                  pretrain_alpha=alpha).eval()
    assert torch.equal(model.gmf_user.weight, gmf.user_embedding.weight)
    assert torch.equal(model.gmf_item.weight, gmf.item_embedding.weight)
    assert torch.equal(model.mlp_user.weight, mlp.user_embedding.weight)
    assert torch.equal(model.mlp_item.weight, mlp.item_embedding.weight)
    for ours, theirs in zip(model.mlp.state_dict().values(), mlp.tower.state_dict().values()):
        assert torch.equal(ours, theirs)
    torch.testing.assert_close(model.predict.weight,
                               torch.cat([alpha * gmf.predict.weight, (1 - alpha) * mlp.predict.weight], 1))
    torch.testing.assert_close(model.predict.bias, alpha * gmf.predict.bias + (1 - alpha) * mlp.predict.bias)
    users, items = torch.arange(5).repeat_interleave(4), torch.arange(4).repeat(5)
    with torch.no_grad():  # the fused logit is the alpha-mix of the two pre-trained logits, biases included
        torch.testing.assert_close(model(users, items), alpha * gmf(users, items) + (1 - alpha) * mlp(users, items))


def test_neumf_pretraining_checks_what_it_loads(pretrained, tmp_path):
    _, _, gmf_dir, mlp_dir = pretrained
    with pytest.raises(RecForgeError, match=r"model\.gmf_from.*embedding_dim=3.*model\.gmf_dim=3"):
        NeuMF(5, 4, gmf_dim=4, mlp_layers=[8, 4, 2], gmf_from=gmf_dir)
    with pytest.raises(RecForgeError, match=r"model\.mlp_from.*model\.mlp_layers=\[8,4,2\]"):
        NeuMF(5, 4, gmf_dim=3, mlp_layers=[8, 4], mlp_from=mlp_dir)
    with pytest.raises(RecForgeError, match=r"model\.gmf_from.*NeuMF has 6 x 4"):
        NeuMF(6, 4, gmf_dim=3, mlp_layers=[8, 4, 2], gmf_from=gmf_dir)
    with pytest.raises(RecForgeError, match=r"model\.mlp_from.*not a MLP"):
        NeuMF(5, 4, gmf_dim=3, mlp_layers=[8, 4, 2], mlp_from=gmf_dir)
    (tmp_path / "run").mkdir()
    with pytest.raises(RecForgeError, match=r"model\.gmf_from.*not a model bundle.*<output_dir>/model"):
        NeuMF(5, 4, gmf_dim=3, gmf_from=str(tmp_path / "run"))
    with pytest.raises(RecForgeError, match="pretrain_alpha"):
        NeuMF(5, 4, pretrain_alpha=1.5)


def test_pretrained_neumf_bundle_reloads_without_the_pretraining_folders(pretrained, tmp_path):
    import shutil

    _, _, gmf_dir, mlp_dir = pretrained
    kwargs = {"n_users": 5, "n_items": 4, "gmf_dim": 3, "mlp_layers": [8, 4, 2], "gmf_from": gmf_dir,
              "mlp_from": mlp_dir, "pretrain_alpha": 0.5}
    model = NeuMF(**kwargs).eval()
    with torch.no_grad():
        model.predict.bias.fill_(1.25)  # "trained" past its pre-trained start
    folder = save(model, tmp_path / "neumf", "recforge.models.neumf.NeuMF", kwargs)
    shutil.rmtree(gmf_dir)
    shutil.rmtree(mlp_dir)
    with pytest.warns(UserWarning, match="does not exist") as caught:
        reloaded = Bundle.load(folder).model
    assert sorted(str(w.message).split("=")[0] for w in caught) == ["model.gmf_from", "model.mlp_from"]
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- configs
def data_kwargs(n_users: int = 6, n_items: int = 5) -> dict:
    return {"n_users": n_users, "n_items": n_items, "global_mean": 3.0,
            "interactions": torch.tensor([[0, 1, 2], [0, 1, 2]]), "ratings": torch.tensor([4.0, 3.0, 2.0]),
            "user_time_features": time_features(n_users), "item_time_features": time_features(n_items)}


@pytest.mark.parametrize("overrides, cls, loss, view", [
    (["model=autorec"], AutoRec, "recforge.losses.RowMSELoss", "items"),
    (["model=autorec", "model.item_based=false"], AutoRec, "recforge.losses.RowMSELoss", "users"),
    (["model=mlp_rating"], MLPRating, "recforge.losses.MSELoss", None),
    (["model=neumf"], NeuMF, "recforge.losses.BCELoss", None),
])
def test_configs_compose_and_build(overrides, cls, loss, view, tmp_path):
    cfg = compose_train(overrides, tmp_path)
    model = build_model(cfg, data_kwargs())
    assert type(model) is cls and cfg.loss._target_ == loss and getattr(model, "train_view", None) == view
    if cls is not NeuMF:
        assert cfg.monitor == "val/rmse" and model.feedbacks == ("explicit",)
    else:
        assert cfg.model.gmf_from is None and cfg.model.mlp_from is None and cfg.model.pretrain_alpha == 0.5
    if cls is AutoRec:
        assert model.encoder.out_features == 500 and cfg.optimizer.weight_decay > 0
        assert model.user_rows(torch.tensor([0]))[0].tolist() == [4.0, 0, 0, 0, 0]


def test_autorec_trains_on_item_rows_of_the_data(tiny_cfg):
    from recforge.pipeline import build_experiment

    exp = build_experiment(tiny_cfg("model=autorec", "datamodule.batch_size=16"))
    dm = exp.datamodule
    assert dm.train_view == "items" and exp.feedback == "explicit"
    seen = torch.cat([batch[0] for batch in dm.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(torch.unique(dm.train_tensors[1]).tolist())
    users, items, ratings = dm.train_tensors
    torch.testing.assert_close(exp.model.user_rows(users)[torch.arange(len(users)), items], ratings)


def test_svdpp_adds_the_normalised_implicit_factors_of_the_users_items():
    from recforge.models.svdpp import SVDpp

    torch.manual_seed(0)
    pairs = torch.tensor([[0, 0, 1, 0], [1, 3, 2, 1]])  # user 0 rated items 1, 3 (1 twice), user 1 item 2, user 2 none
    model = SVDpp(n_users=3, n_items=4, interactions=pairs, embedding_dim=3, init_std=0.5, global_mean=3.0, l2_reg=0.1)
    with torch.no_grad():
        model.user_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
        model.item_bias.weight.copy_(torch.tensor([[0.0], [-0.1], [0.2], [0.4]]))
    p, q, y = model.user_embedding.weight, model.item_embedding.weight, model.implicit_embedding.weight
    users, items = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 3])
    vectors = [p[0] + (y[1] + y[3]) / 2 ** 0.5, p[1] + y[2], p[2]]
    expected = torch.stack([3.0 + model.user_bias.weight[u, 0] + model.item_bias.weight[i, 0] + vectors[u] @ q[i]
                            for u, i in zip(users.tolist(), items.tolist())])
    torch.testing.assert_close(model(users, items), expected)
    torch.testing.assert_close(model.score_all(users).gather(1, items.unsqueeze(1)).squeeze(1), expected)
    implicit = [(y[1].pow(2).sum() + y[3].pow(2).sum()) / 2, y[2].pow(2).sum(), torch.tensor(0.0)]
    reg = torch.stack([p[u].pow(2).sum() + q[i].pow(2).sum() + model.user_bias.weight[u, 0] ** 2
                       + model.item_bias.weight[i, 0] ** 2 + implicit[u] for u, i in zip(users.tolist(), items.tolist())])
    torch.testing.assert_close(model.regularization(users, items), 0.1 * reg.mean())


# ---------------------------------------------------------------------------------------------- Bayesian PMF
def test_wishart_draws_have_the_wishart_mean_and_variance():
    from recforge.models.bpmf import _wishart_draw

    torch.manual_seed(0)
    scale = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    df = 3.0  # small: chi2(df) on every diagonal entry (the usual Bartlett slip) would add 0.875 to E[W_22] = 3
    draws = torch.stack([_wishart_draw(scale, df) for _ in range(6000)])
    # E[W] = df * scale; Var[W_ij] = df (s_ij^2 + s_ii s_jj): [[24, 6.75], [6.75, 6]] -> standard errors of the
    # mean 0.063, 0.034, 0.032 over 6000 draws
    torch.testing.assert_close(draws.mean(0), df * scale, atol=0.2, rtol=0.0)
    variance = df * (scale**2 + torch.outer(scale.diagonal(), scale.diagonal()))
    torch.testing.assert_close(draws.var(0), variance, rtol=0.15, atol=0.0)
    assert bool((torch.linalg.eigvalsh(draws) > 0).all())


def test_normal_wishart_posterior_draws():
    """Against Salakhutdinov and Mnih's Eq. 14 written out: beta* = beta0 + N, nu* = p + N, mu* = N xbar / beta*,
    W*^-1 = I + N S + beta0 N / beta* xbar xbar^T; then E[Lambda] = nu* W* and E[mu] = mu*."""
    from recforge.models.bpmf import _normal_wishart_draw

    torch.manual_seed(0)
    rows = torch.randn(6, 2, dtype=torch.float64) + torch.tensor([1.0, -2.0], dtype=torch.float64)
    n, beta0 = 6, 2.0
    xbar = rows.mean(0)
    scatter = (rows - xbar).T @ (rows - xbar)
    w_star = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + scatter + beta0 * n / (beta0 + n) * torch.outer(xbar, xbar))
    draws = [_normal_wishart_draw(rows, beta0) for _ in range(4000)]
    means = torch.stack([mu for mu, _ in draws])
    precisions = torch.stack([lam for _, lam in draws])
    torch.testing.assert_close(precisions.mean(0), (2 + n) * w_star, rtol=0.05, atol=0.01)
    torch.testing.assert_close(means.mean(0), n * xbar / (beta0 + n), atol=0.02, rtol=0.0)
    # Cov(mu) = E[(beta* Lambda)^-1] = W*^-1 / (beta* (nu* - p - 1))
    torch.testing.assert_close(torch.cov(means.T), torch.linalg.inv(w_star) / ((beta0 + n) * (2 + n - 3)),
                               rtol=0.1, atol=0.005)


def test_conditional_draws_follow_each_rows_gaussian_posterior():
    """Against the posterior written out row by row: precision S = Lambda + alpha X^T X, mean
    S^-1 (alpha X^T y + Lambda mu), covariance S^-1; row 2 has no observations and keeps its prior."""
    from recforge.models.bpmf import _conditional_draw

    torch.manual_seed(0)
    rows = torch.tensor([0, 0, 1, 0, 1])
    design = torch.randn(5, 2, dtype=torch.float64)
    target = torch.randn(5, dtype=torch.float64)
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64)
    prior = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    copies = 6000  # one call draws 6000 independent copies of the 3 rows
    offset = 3 * torch.arange(copies).repeat_interleave(len(rows))
    draws = _conditional_draw(3 * copies, rows.repeat(copies) + offset, design.repeat(copies, 1),
                              target.repeat(copies), 1.5, mu, prior).view(copies, 3, 2)
    for r in range(3):
        x, y = design[rows == r], target[rows == r]
        precision = prior + 1.5 * x.T @ x
        mean = torch.linalg.solve(precision, 1.5 * x.T @ y + prior @ mu)
        torch.testing.assert_close(draws[:, r].mean(0), mean, atol=0.03, rtol=0.0)
        torch.testing.assert_close(torch.cov(draws[:, r].T), torch.linalg.inv(precision), atol=0.03, rtol=0.0)


def test_bpmf_recovers_a_noisy_low_rank_rating_matrix():
    """Ratings from mean + biases + a rank-2 product with noise sd 0.2 on 40% of a 60 x 50 matrix: the
    posterior mean predicts the held-out cells to near the noise level, far better than the mean rating,
    and the sampled noise precision finds 1 / 0.2^2 = 25."""
    from recforge.models.bpmf import BPMF

    g = torch.Generator().manual_seed(0)
    n_users, n_items = 60, 50
    truth = (3.0 + 0.5 * torch.randn(n_users, 1, generator=g) + 0.5 * torch.randn(1, n_items, generator=g)
             + torch.randn(n_users, 2, generator=g) @ torch.randn(2, n_items, generator=g))
    observed = torch.rand(n_users, n_items, generator=g) < 0.4
    users, items = observed.nonzero(as_tuple=True)
    ratings = truth[users, items] + 0.2 * torch.randn(len(users), generator=g)
    hu, hi = (~observed).nonzero(as_tuple=True)
    torch.manual_seed(0)
    model = BPMF(n_users, n_items, factors=4, samples=100, burn_in=50)
    model.fit(users, items, ratings)
    rmse = (model(hu, hi) - truth[hu, hi]).pow(2).mean().sqrt()
    mean_only = (ratings.mean() - truth[hu, hi]).pow(2).mean().sqrt()
    assert float(rmse) < 0.3 < 0.3 * float(mean_only), (float(rmse), float(mean_only))
    assert 15 < sum(model.noise_history[-50:]) / 50 < 40


def test_bpmf_prediction_is_the_average_of_the_kept_draws(monkeypatch):
    """The side-by-side storage: scoring with the stored matrices equals averaging each kept draw's own
    prediction (captured from the sampler), burn-in excluded."""
    import recforge.models.bpmf as bpmf

    draws = []
    original = bpmf._conditional_draw

    def recording(*args):
        out = original(*args)
        draws.append(out.clone())
        return out

    monkeypatch.setattr(bpmf, "_conditional_draw", recording)
    torch.manual_seed(0)
    users, items = torch.tensor([0, 0, 1, 2, 2, 3]), torch.tensor([0, 1, 1, 0, 2, 2])
    ratings = torch.tensor([5.0, 3.0, 4.0, 1.0, 2.0, 5.0])
    model = bpmf.BPMF(4, 3, factors=2, samples=3, burn_in=2)
    model.fit(users, items, ratings)
    kept = [(draws[2 * s], draws[2 * s + 1]) for s in range(2, 5)]  # (user rows, item rows) of sweeps 2-4
    expected = sum(u[:, :2] @ v[:, :2].T + u[:, 2:] + v[:, 2].unsqueeze(0) for u, v in kept) / 3 + ratings.mean()
    torch.testing.assert_close(model.score_all(torch.arange(4)), expected.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_bias, sample_noise", [(False, True), (True, False)])
def test_bpmf_variants_fit_and_keep_their_settings(use_bias, sample_noise):
    """Without biases the bias buffers stay zero; with a fixed noise precision alpha never moves; both still
    learn a noise-free rank-1 matrix; changing samples after construction resizes the stored draws."""
    from recforge.models.bpmf import BPMF

    g = torch.Generator().manual_seed(1)
    truth = 3.0 + torch.randn(30, 1, generator=g) @ torch.randn(1, 25, generator=g)
    observed = torch.rand(30, 25, generator=g) < 0.5
    users, items = observed.nonzero(as_tuple=True)
    hu, hi = (~observed).nonzero(as_tuple=True)
    torch.manual_seed(0)
    model = BPMF(30, 25, factors=2, samples=20, burn_in=20, use_bias=use_bias, sample_noise=sample_noise,
                 noise_precision=25.0)
    model.samples = 30
    model.fit(users, items, truth[users, items])
    assert model.user_factors.shape == (30, 60) and model.item_factors.shape == (25, 60)
    mean_only = (truth[users, items].mean() - truth[hu, hi]).pow(2).mean().sqrt()
    assert float((model(hu, hi) - truth[hu, hi]).pow(2).mean().sqrt()) < 0.5 * float(mean_only)
    if not use_bias:
        assert not model.user_bias.any() and not model.item_bias.any()
    if not sample_noise:
        assert set(model.noise_history) == {25.0}
