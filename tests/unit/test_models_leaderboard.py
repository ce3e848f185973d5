"""The models of issue #21 against hand computations on tiny examples: RP3beta's walk weights, SLIM's optimality
conditions, RecVAE's prior, KL weight and alternating phases, UltraGCN's constraint weights and losses, SimpleX's
history-mixed cosine, EASE's in-place float32 solve, and GF-CF's and BSPM's graph filters. The shared contract test
covers shapes, determinism and learning for every ``conf/model`` file."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from recforge.errors import RecForgeError
from recforge.losses import CosineContrastiveLoss
from recforge.models import mf as mf_module
from recforge.models.bspm import BSPM
from recforge.models.ease import EASE, interaction_matrix, invert_spd_
from recforge.models.gfcf import GFCF
from recforge.models.recvae import RecVAE
from recforge.models.rp3beta import RP3beta
from recforge.models.simplex import SimpleX
from recforge.models.slim import SLIMElasticNet
from recforge.models.ultragcn import UltraGCN
from recforge.testing import build
from tests.unit.test_models_zoo import ITEMS, PAIRS, USERS, X  # 4 users x 5 items; item 4 unseen


def fitted(cls, **kwargs):
    model = cls(n_users=4, n_items=5, interactions=PAIRS, **kwargs)
    model.fit(USERS, ITEMS, torch.ones(len(USERS)))
    return model.eval()


def random_pairs(n_users: int, n_items: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n,), generator=gen)
    items = (torch.rand(n, generator=gen) ** 2 * n_items).long()  # a popularity skew
    return users, items


# ---------------------------------------------------------------- RP3beta
def rp3beta_weights(alpha: float, beta: float) -> np.ndarray:
    """``W[i, j] = sum_u (x_ui / |U_i|)^alpha (x_uj / |I_u|)^alpha |U_j|^-beta``, zero diagonal, dense."""
    user_degree, item_degree = X.sum(1), X.sum(0)
    p_ui = np.where(X > 0, 1 / user_degree[:, None], 0.0) ** alpha
    p_iu = np.where(X.T > 0, 1 / np.maximum(item_degree[:, None], 1), 0.0) ** alpha
    discount = np.where(item_degree > 0, np.maximum(item_degree, 1) ** -beta, 0.0)
    weights = p_iu @ p_ui * discount[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def test_rp3beta_walk_probability_by_hand():
    model = fitted(RP3beta, k_neighbors=4, alpha=1.0, beta=0.0)
    weights = model.similarity().to_dense().T.double().numpy()  # W[i, j]
    # from item 0 (users 0, 1, 3) to item 1: user 0 (2 items) and user 3 (3 items) hold it
    assert weights[0, 1] == pytest.approx((1 / 2 + 1 / 3) / 3)
    # from item 3 (user 2 only, 3 items) to item 1
    assert weights[3, 1] == pytest.approx(1 / 3)
    assert np.all(np.diag(weights) == 0) and np.all(weights[:, 4] == 0) and np.all(weights[4] == 0)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.7, 0.5), (1.5, 1.2)])
def test_rp3beta_matches_the_dense_formula_and_scores_histories(alpha, beta):
    model = fitted(RP3beta, k_neighbors=4, alpha=alpha, beta=beta)
    expected = rp3beta_weights(alpha, beta)
    np.testing.assert_allclose(model.similarity().to_dense().T.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.score_all(torch.arange(4)).double().numpy(), X @ expected, rtol=1e-5, atol=1e-7)


def test_rp3beta_keeps_each_source_items_top_targets():
    model = fitted(RP3beta, k_neighbors=1, alpha=1.0, beta=0.5)
    full = rp3beta_weights(1.0, 0.5)
    kept = model.similarity().to_dense().T.double().numpy()
    for i in range(4):  # item 4 has no users: nothing kept
        assert np.count_nonzero(kept[i]) == 1
        assert kept[i].argmax() == full[i].argmax() and kept[i].max() == pytest.approx(full[i].max())
    assert not kept[4].any()


# ---------------------------------------------------------------- SLIM
def test_slim_weights_satisfy_the_elastic_net_optimality_conditions():
    users, items = random_pairs(40, 12, 160, seed=1)
    l1, l2 = 0.5, 2.0
    model = SLIMElasticNet(40, 12, l1_reg=l1, l2_reg=l2, k_neighbors=11, max_iter=500, tol=1e-6)
    model.fit(users, items, torch.ones(len(users)))
    x = np.zeros((40, 12))
    x[users.numpy(), items.numpy()] = 1
    gram = x.T @ x
    weights = model.similarity().to_dense().T.double().numpy()  # W[i, j], all 11 non-diagonal kept
    assert np.all(weights >= 0) and np.all(np.diag(weights) == 0) and (weights > 0).sum() > 12
    # gradient of 1/2 ||x_j - X w||^2 + l2/2 ||w||^2 + l1 sum w in w_ij (i != j): 0 where w_ij > 0, >= 0 at 0
    grad = gram @ weights - gram + l2 * weights + l1
    off = ~np.eye(12, dtype=bool)
    assert np.abs(grad[(weights > 0) & off]).max() < 1e-3
    assert grad[(weights == 0) & off].min() > -1e-3
    assert model.sweeps < 500


def test_slim_without_penalties_on_independent_columns_is_exact():
    # items 0 and 1 always together, item 2 alone: w_01 = w_10 = G_01 / (G_00 + l2), the rest 0
    users, items = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 2])
    model = SLIMElasticNet(3, 3, l1_reg=0.0, l2_reg=1.0, k_neighbors=2, max_iter=50, tol=0.0)
    model.fit(users, items, torch.ones(5))
    weights = model.similarity().to_dense().T.numpy()
    np.testing.assert_allclose(weights, [[0, 2 / 3, 0], [2 / 3, 0, 0], [0, 0, 0]], atol=1e-6)


def test_slim_prunes_each_target_to_its_top_k_and_refuses_large_catalogues():
    users, items = random_pairs(40, 12, 160, seed=2)
    full = SLIMElasticNet(40, 12, l1_reg=0.1, l2_reg=1.0, k_neighbors=11)
    full.fit(users, items, torch.ones(len(users)))
    pruned = SLIMElasticNet(40, 12, l1_reg=0.1, l2_reg=1.0, k_neighbors=2)
    pruned.fit(users, items, torch.ones(len(users)))
    dense, kept = full.similarity().to_dense(), pruned.similarity().to_dense()  # row j: target j's sources
    assert ((kept > 0).sum(1) <= 2).all()
    torch.testing.assert_close(kept.topk(2, dim=1).values, dense.topk(2, dim=1).values)
    with pytest.raises(RecForgeError, match="model.max_items=10"):
        SLIMElasticNet(40, 12, max_items=10)


def test_fsslim_with_every_other_item_a_candidate_is_slim():
    users, items = random_pairs(40, 12, 160, seed=3)
    kwargs = dict(l1_reg=0.3, l2_reg=1.5, k_neighbors=11, max_iter=200, tol=0.0)
    full, fs = SLIMElasticNet(40, 12, **kwargs), SLIMElasticNet(40, 12, candidates=11, **kwargs)
    for model in (full, fs):
        model.fit(users, items, torch.ones(len(users)))
    assert (full.similarity().to_dense() > 0).sum() > 20
    torch.testing.assert_close(fs.similarity().to_dense(), full.similarity().to_dense(), atol=1e-5, rtol=1e-4)


def test_fsslim_regresses_each_item_on_its_most_cosine_similar_items_only():
    users, items = random_pairs(60, 15, 300, seed=4)
    model = SLIMElasticNet(60, 15, l1_reg=0.1, l2_reg=1.0, k_neighbors=14, max_iter=500, tol=1e-7, candidates=4)
    model.fit(users, items, torch.ones(len(users)))
    x = np.zeros((60, 15))
    x[users.numpy(), items.numpy()] = 1
    gram = x.T @ x
    norms = np.sqrt(np.diag(gram))
    cosine = gram / np.outer(norms, norms)
    np.fill_diagonal(cosine, -1)
    weights = model.similarity().to_dense().double().numpy()   # row j: target j's sources
    for j in range(15):
        support = np.flatnonzero(weights[j])
        assert len(support) and cosine[j, support].min() >= np.sort(cosine[j])[-4]   # among its 4 nearest (ties)
        # each target's own elastic net: zero gradient at its positive weights
        w = weights[j, support]
        grad = gram[np.ix_(support, support)] @ w - gram[support, j] + 1.0 * w + 0.1
        assert np.abs(grad).max() < 1e-4


@pytest.mark.parametrize("candidates", [0, -3])
def test_fsslim_refuses_fewer_than_one_candidate(candidates):
    with pytest.raises(RecForgeError, match=rf"model.candidates={candidates}: .* at least 1"):
        SLIMElasticNet(40, 12, candidates=candidates)


def test_fsslim_with_more_candidates_than_other_items_takes_them_all():
    """The default (200 candidates) must fit a catalogue of fewer items: every other item is then a candidate."""
    users, items = random_pairs(40, 12, 160, seed=3)
    kwargs = dict(l1_reg=0.3, l2_reg=1.5, k_neighbors=11, max_iter=200, tol=0.0)
    every, more = SLIMElasticNet(40, 12, candidates=11, **kwargs), SLIMElasticNet(40, 12, candidates=200, **kwargs)
    for model in (every, more):
        model.fit(users, items, torch.ones(len(users)))
    assert more.candidates == 11
    torch.testing.assert_close(more.similarity().to_dense(), every.similarity().to_dense())


def test_fsslim_fits_catalogues_above_max_items():
    users, items = random_pairs(40, 12, 160, seed=2)
    model = SLIMElasticNet(40, 12, max_items=10, candidates=3, k_neighbors=3)
    model.fit(users, items, torch.ones(len(users)))
    assert ((model.similarity().to_dense() > 0).sum(1) <= 3).all()


# ---------------------------------------------------------------- RecVAE
def small_recvae(**kwargs) -> RecVAE:
    torch.manual_seed(0)
    return RecVAE(4, 5, interactions=PAIRS, hidden_dim=8, latent_dim=3, **kwargs)


def test_recvae_composite_prior_by_hand():
    model = small_recvae()
    with torch.no_grad():  # the previous encoder's posterior: N(1, e^0.5) in every dimension
        for layer, bias in ((model.prior_encoder.mu, 1.0), (model.prior_encoder.logvar, 0.5)):
            layer.weight.zero_()
            layer.bias.fill_(bias)
    z = torch.tensor([[0.5, -2.0, 3.0]])

    def normal(v, mu, var):
        return math.exp(-(v - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)

    expected = [math.log(3 / 20 * normal(v, 0, 1) + 3 / 4 * normal(v, 1, math.exp(0.5))
                         + 1 / 10 * normal(v, 0, math.exp(10))) for v in z[0].tolist()]
    log_prior = model.log_prior(model.user_rows(torch.tensor([0])), z)
    np.testing.assert_allclose(log_prior[0].numpy(), expected, rtol=1e-5)


def test_recvae_kl_weight_is_gamma_times_the_users_item_count():
    rows = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    kls = {}
    for gamma, scale in ((0.01, 1.0), (0.02, 1.0), (0.01, 2.0)):
        model = small_recvae(gamma=gamma).train()
        torch.manual_seed(5)  # the same dropout mask and latent sample each time
        kls[gamma, scale] = float(model.reconstruct(rows * scale)[1].detach())  # the encoder normalises its input row
    assert kls[0.01, 1.0] != 0
    assert kls[0.02, 1.0] == pytest.approx(2 * kls[0.01, 1.0], rel=1e-5)
    assert kls[0.01, 2.0] == pytest.approx(2 * kls[0.01, 1.0], rel=1e-5)  # |I_u| doubled


def test_recvae_noise_scale_shrinks_the_training_samples_distance_from_the_mean():
    rows = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    logits = {}
    for scale in (0.0, 0.01, 1.0):
        model = small_recvae(dropout=0.0, noise_scale=scale).train()
        torch.manual_seed(5)  # the same eps each time
        logits[scale] = model.reconstruct(rows)[0].detach()
    with torch.no_grad():
        mean = model.decoder(model.encoder(rows, 0.0)[0])  # the decoded mean: what scoring reads
    assert torch.equal(logits[0.0], mean)
    assert not torch.allclose(logits[1.0], mean, atol=1e-3)
    # the decoder is linear in z, so the sample's offset from the mean scales with noise_scale
    np.testing.assert_allclose((logits[0.01] - mean).numpy(), (0.01 * (logits[1.0] - mean)).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="noise_scale >= 0"):
        small_recvae(noise_scale=-0.1)


def test_recvae_alternates_encoder_and_decoder_epochs():
    model = small_recvae(encoder_epochs=2, decoder_epochs=1)
    assert model.users_per_epoch == 4
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    rows = model.user_rows(torch.arange(4))
    model.train()

    def step() -> tuple[bool, bool]:
        """One training step on all users (an epoch); whether the encoder and the decoder moved."""
        encoder = [p.detach().clone() for p in model.encoder.parameters()]
        decoder = model.decoder.weight.detach().clone()
        optimizer.zero_grad()
        logits, kl = model.reconstruct(rows)
        (-(torch.log_softmax(logits, 1) * rows).sum(1).mean() + kl).backward()
        optimizer.step()
        moved = any(not torch.equal(a, b) for a, b in zip(encoder, model.encoder.parameters()))
        return moved, not torch.equal(decoder, model.decoder.weight)

    assert [step() for _ in range(6)] == [(True, False), (True, False), (False, True)] * 2
    assert int(model.users_seen) == 24
    # the prior's encoder is the encoder as the last decoder phase saw it
    for old, new in zip(model.prior_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(old, new) and not old.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.score_all(torch.arange(4)), model.score_all(torch.arange(4)))
    assert int(model.users_seen) == 24  # evaluation does not count


def test_recvae_init_glorot_normal_weights_and_zero_biases_or_torchs_default():
    n_items = 3000  # wide enough that the two scales differ clearly
    stds = {}
    for init in ("torch", "xavier_normal"):
        torch.manual_seed(0)
        model = RecVAE(4, n_items, interactions=PAIRS, hidden_dim=64, latent_dim=16, init=init)
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 7 + 1 + 7  # the encoder (5 layers, mu, logvar), the decoder, the prior's encoder
        stds[init] = {"decoder": float(model.decoder.weight.std()),
                      "first": float(model.encoder.layers[0].weight.std())}
        biases = torch.cat([m.bias for m in linears])
        assert bool((biases == 0).all()) == (init == "xavier_normal")
        # the frozen prior starts as the encoder
        for old, new in zip(model.prior_encoder.parameters(), model.encoder.parameters()):
            assert torch.equal(old, new)
    glorot = {"decoder": math.sqrt(2 / (16 + n_items)), "first": math.sqrt(2 / (n_items + 64))}
    torchs = {"decoder": 1 / math.sqrt(3 * 16), "first": 1 / math.sqrt(3 * n_items)}  # U(-b, b), b = 1/sqrt(fan_in)
    for name in ("decoder", "first"):
        assert stds["xavier_normal"][name] == pytest.approx(glorot[name], rel=0.05)
        assert stds["torch"][name] == pytest.approx(torchs[name], rel=0.05)
    with pytest.raises(ValueError, match="init must be one of torch, xavier_normal, got 'glorot'"):
        small_recvae(init="glorot")


# ---------------------------------------------------------------- UltraGCN
def test_ultragcn_constraint_weights_and_item_graph_by_hand():
    model = UltraGCN(4, 5, PAIRS, embedding_dim=4, item_neighbors=2)
    user_degree, item_degree = X.sum(1), X.sum(0)
    np.testing.assert_allclose(model.user_beta.numpy(), np.sqrt(user_degree + 1) / user_degree, rtol=1e-6)
    np.testing.assert_allclose(model.item_beta.numpy(), 1 / np.sqrt(item_degree + 1), rtol=1e-6)
    gram = X.T @ X
    np.fill_diagonal(gram, 0)
    g = gram.sum(1)  # 5, 5, 6, 2, 0
    with np.errstate(divide="ignore", invalid="ignore"):
        omega = np.nan_to_num(gram * (np.sqrt(g + 1) / g)[:, None] / np.sqrt(g + 1)[None, :])
    # item 3 co-occurs with items 1 and 2 once each (user 2): omega_31 = sqrt(3) / 2 / sqrt(6)
    assert omega[3, 1] == pytest.approx(math.sqrt(3) / 2 / math.sqrt(6))
    expected = np.sort(omega, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(model.item_omega.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(omega, model.item_neighbours.numpy(), 1), expected, rtol=1e-6)


@pytest.mark.parametrize("candidates, by_product", [([[1, 3, 4], [3, 0, 4]], True), ([[1, 3, 4], [3, 0, 4]], False),
                                                    ([[1, 0, 4], [3, 0, 4]], True), ([[1], [3]], True)],
                         ids=["per_row", "per_row_gathered", "shared", "positive_alone"])
def test_ultragcn_regularization_by_hand(candidates, by_product, monkeypatch):
    """The constraint, neighbour and L2 terms by hand, for per-row negatives (scored by one product with every item,
    as hundreds of negatives are, and by a gather of their vectors, as a few among many items are), shared negatives
    and the positive alone (``loss=softmax``: no sampled negatives, no negative constraint)."""
    monkeypatch.setattr("recforge.models.mf.candidates_by_product", lambda candidates, n_items: by_product)
    torch.manual_seed(0)
    model = UltraGCN(4, 5, PAIRS, embedding_dim=3, constraint_weight=0.7, negative_weight=5.0, item_weight=0.3,
                     item_neighbors=2, l2_reg=0.01, init_std=0.5)
    users = torch.tensor([0, 2])
    candidates = torch.tensor(candidates)  # positive first, then the negatives (the same two: sampler.shared)
    e_u, e_i = model.user_embedding.weight.detach().double(), model.item_embedding.weight.detach().double()
    beta_u, beta_i = model.user_beta.double(), model.item_beta.double()

    def log_sigmoid(s):
        return -torch.log1p(torch.exp(-s))

    expected = 0.0
    for u, (pos, *negs) in zip(users.tolist(), candidates.tolist()):
        constraint = -beta_u[u] * beta_i[pos] * log_sigmoid(e_u[u] @ e_i[pos])
        if negs:
            constraint += 5.0 * sum(-beta_u[u] * beta_i[j] * log_sigmoid(-(e_u[u] @ e_i[j])) for j in negs) / len(negs)
        neighbours = model.item_neighbours[pos].tolist()
        item_term = -sum(model.item_omega[pos, k].double() * log_sigmoid(e_u[u] @ e_i[j])
                         for k, j in enumerate(neighbours))
        expected += (0.7 * constraint + 0.3 * item_term) / 2
    expected += 0.01 * (e_u.pow(2).sum() + e_i.pow(2).sum()) / 2 / 2
    assert float(model.regularization(users, candidates).detach()) == pytest.approx(float(expected), rel=1e-5)
    # scores are plain inner products
    torch.testing.assert_close(model.score_all(users), (e_u[users] @ e_i.T).float())


def test_ultragcn_step_scores_every_item_once_with_the_same_gradients(monkeypatch):
    """Within a training step (``one_pass``) the module's loss and the constraint term pick their negatives' scores
    from one product of the step's users with every item: the gradients equal two separate products', and a hard
    negative's scoring without gradients before them does not stand in for the product they train."""
    monkeypatch.setattr("recforge.models.mf.candidates_by_product", lambda candidates, n_items: True)
    calls = []
    real = mf_module.inner_products
    monkeypatch.setattr("recforge.models.mf.inner_products", lambda *a: calls.append(1) or real(*a))
    users, candidates = torch.tensor([0, 2, 3]), torch.tensor([[1, 3, 4], [3, 0, 4], [2, 1, 0]])

    def step_gradients(model, in_step):
        model.zero_grad()
        calls.clear()
        with model.one_pass(candidates[:, 0]) if in_step else contextlib.nullcontext():
            with torch.no_grad():
                model(users, candidates)   # a hard negative sampler's scoring
            scores = model(users, candidates)
            loss = torch.nn.functional.softplus(-scores[:, 0]).sum() + torch.nn.functional.softplus(scores[:, 1:]).sum()
            loss = loss + model.regularization(users, candidates)
        loss.backward()
        return [p.grad.clone() for p in (model.user_embedding.weight, model.item_embedding.weight)], len(calls)

    torch.manual_seed(0)
    model = UltraGCN(4, 5, PAIRS, embedding_dim=3, negative_weight=5.0, init_std=0.5)
    separate, separate_calls = step_gradients(model, in_step=False)
    shared, shared_calls = step_gradients(model, in_step=True)
    assert (separate_calls, shared_calls) == (3, 2)   # the no-grad scoring, then one product instead of two
    for a, b in zip(separate, shared):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)
    assert model._step is None   # nothing kept past the step


# ---------------------------------------------------------------- SimpleX
def test_simplex_mixes_the_history_mean_and_scores_cosines():
    torch.manual_seed(0)
    model = SimpleX(4, 5, PAIRS, embedding_dim=3, gate=0.3, dropout=0.5).eval()
    e_u, e_i = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    v = model.history_map.weight.detach()
    # user 3's history: items 0, 1, 2 (item 2 twice in the data, once in the mean); user 1: items 0 and 2
    p3 = 0.3 * e_u[3] + 0.7 * v @ ((e_i[0] + e_i[1] + e_i[2]) / 3)
    p1 = 0.3 * e_u[1] + 0.7 * v @ ((e_i[0] + e_i[2]) / 2)
    expected = torch.stack([torch.nn.functional.cosine_similarity(p.unsqueeze(0), e_i) for p in (p3, p1)])
    with torch.no_grad():
        scores = model.score_all(torch.tensor([3, 1]))
        torch.testing.assert_close(scores, expected)
        torch.testing.assert_close(model(torch.tensor([3, 1]), torch.arange(5).expand(2, -1)), expected)
        assert scores.abs().max() <= 1 + 1e-6
        # the next stage's inputs: user 0 read 4 and 4 (counted once) instead of its training items
        model.set_histories(torch.tensor([0, 2, 2, 2, 2]), torch.tensor([4, 4]))
        p0 = 0.3 * e_u[0] + 0.7 * v @ e_i[4]
        torch.testing.assert_close(model.score_all(torch.tensor([0])),
                                   torch.nn.functional.cosine_similarity(p0.unsqueeze(0), e_i).unsqueeze(0))
        torch.testing.assert_close(model.score_all(torch.tensor([2]))[0],
                                   torch.nn.functional.cosine_similarity((0.3 * e_u[2]).unsqueeze(0), e_i))


def test_simplex_training_rows_leave_their_positive_out_of_the_history():
    """As the reference code's training data: a row's history is the user's items but the one it is trained on."""
    torch.manual_seed(0)
    model = SimpleX(4, 5, PAIRS, embedding_dim=3, gate=0.3, dropout=0.0).train()
    e_u, e_i = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    v = model.history_map.weight.detach()
    cos = torch.nn.functional.cosine_similarity
    users, positives = torch.tensor([3, 3, 1]), torch.tensor([1, 2, 0])   # user 3 read 0, 1, 2; user 1 read 0, 2
    candidates = torch.stack([positives, torch.tensor([4, 4, 4])], dim=1)
    with torch.no_grad(), model.one_pass(positives):
        got = model(users, candidates)
        shared = model.score_with_shared(users, positives, torch.tensor([4, 0]))
    p = torch.stack([0.3 * e_u[3] + 0.7 * v @ ((e_i[0] + e_i[2]) / 2), 0.3 * e_u[3] + 0.7 * v @ ((e_i[0] + e_i[1]) / 2),
                     0.3 * e_u[1] + 0.7 * v @ e_i[2]])
    expected = torch.stack([cos(p[b].unsqueeze(0), e_i[candidates[b]]) for b in range(3)])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(shared[:, :2], expected)   # the positive, then the shared item 4
    whole = SimpleX(4, 5, PAIRS, embedding_dim=3, gate=0.3, dropout=0.0, leave_out_target=False)
    whole.load_state_dict(model.state_dict())
    with torch.no_grad():
        with whole.train().one_pass(positives):   # off: whole histories, as outside a step and in evaluation
            plain = whole(users, candidates)
        torch.testing.assert_close(plain, model.eval()(users, candidates))
        assert not torch.allclose(plain, got)
        with pytest.raises(ValueError, match="2 positives for a step scoring 3 rows"), model.train().one_pass(
                positives[:2]):
            model(users, candidates)


def test_simplex_scores_candidates_as_score_all_does():
    """Pairs, a few candidates (their vectors gathered) and many (the whole catalogue's scores picked)."""
    torch.manual_seed(0)
    users, items = random_pairs(6, 400, 60, seed=3)
    model = SimpleX(6, 400, torch.stack([users, items]), embedding_dim=4, dropout=0.0)
    everyone = torch.arange(6)
    full = model.score_all(everyone)
    for n in (2, 30):   # 2 * 128 < 400 items: gathered; 30: picked
        candidates = torch.randint(0, 400, (6, n))
        torch.testing.assert_close(model(everyone, candidates), full.gather(1, candidates))
    torch.testing.assert_close(model(everyone, candidates[:, 0]), full.gather(1, candidates[:, :1]).squeeze(1))


def test_simplex_l2_is_off_by_default_and_by_hand_when_set():
    users, candidates = torch.tensor([0, 3]), torch.tensor([[1, 2, 4], [0, 2, 2]])
    assert SimpleX(4, 5, PAIRS, embedding_dim=3).regularization(users, candidates) is None
    model = SimpleX(4, 5, PAIRS, embedding_dim=3, reg_weight=0.1)
    user_sq, item_sq = (t.weight.pow(2).sum(-1) for t in (model.user_embedding, model.item_embedding))
    per_row = user_sq[users] + item_sq[candidates[:, 0]] + item_sq[candidates[:, 1:]].mean(1)
    torch.testing.assert_close(model.regularization(users, candidates), 0.1 * 0.5 * per_row.sum() / 2)


def test_simplex_trains_with_the_papers_cosine_contrastive_loss():
    """model=simplex selects loss=ccl at the reference code's defaults: 1000 negatives, margin 0.9, weight 150."""
    _, model, loss = build("simplex")
    assert isinstance(model, SimpleX) and isinstance(loss, CosineContrastiveLoss)
    assert (loss.num_negatives, loss.margin, loss.negative_weight) == (1000, 0.9, 150.0)


# ---------------------------------------------------------------- EASE in float32
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invert_spd_in_place(dtype):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(300, 40, generator=gen, dtype=torch.float64)
    spd = a.T @ a + 0.5 * torch.eye(40, dtype=torch.float64)
    matrix = spd.to(dtype, copy=True)
    address = matrix.data_ptr()
    inverse = invert_spd_(matrix)
    assert inverse is matrix and matrix.data_ptr() == address
    torch.testing.assert_close(inverse.double(), torch.linalg.inv(spd), rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-4 if dtype == torch.float32 else 1e-12)
    with pytest.raises(ValueError, match="not positive definite"):
        invert_spd_(-torch.eye(3, dtype=dtype))


def test_ease_float32_and_float64_give_the_same_top_k():
    n_users, n_items = 800, 600
    users, items = random_pairs(n_users, n_items, 16_000, seed=4)
    models = {}
    for dtype in ("float32", "float64"):
        models[dtype] = EASE(n_users, n_items, l2_reg=50.0, dtype=dtype)
        models[dtype].fit(users, items, torch.ones(len(users)))
    w32, w64 = models["float32"].weights, models["float64"].weights
    assert w32.abs().max() > 0.05 and torch.all(w32.diagonal() == 0)
    torch.testing.assert_close(w32, w64, rtol=0, atol=1e-5)
    everyone = torch.arange(n_users)
    s32, s64 = models["float32"].score_all(everyone), models["float64"].score_all(everyone)
    assert torch.equal(s32.topk(10, dim=1).indices, s64.topk(10, dim=1).indices)


def test_ease_auto_dtype_follows_the_catalogue_not_the_machine(monkeypatch):
    from recforge.models import ease as ease_module

    assert EASE(10, 600).dtype == "float64"
    monkeypatch.setattr(ease_module, "AUTO_FLOAT32_ITEMS", 600)  # the threshold, without a 20k x 20k buffer
    assert EASE(10, 599).dtype == "float64" and EASE(10, 600).dtype == "float32"
    assert EASE(10, 600, dtype="float64").dtype == "float64"
    with pytest.raises(ValueError, match="auto, float32 or float64"):
        EASE(10, 600, dtype="half")


def test_ease_says_which_setting_to_change_before_a_solve_that_does_not_fit(monkeypatch):
    from recforge.models import ease as ease_module

    users, items = random_pairs(50, 600, 2_000, seed=5)
    model = EASE(50, 600, dtype="float64")
    monkeypatch.setattr(ease_module, "available_memory", lambda: 1 << 20)  # 1 MB free
    with pytest.raises(MemoryError, match=r"float64 solve at 600 items needs .* set model.dtype=float32"):
        model.fit(users, items, torch.ones(len(users)))
    monkeypatch.setattr(ease_module, "available_memory", lambda: None)  # no /proc/meminfo: no check
    model.fit(users, items, torch.ones(len(users)))
    assert torch.all(model.weights.diagonal() == 0) and model.weights.abs().max() > 0


def test_ease_scores_a_user_as_the_sum_of_the_history_items_rows():
    """score_all (sparse history rows times B) equals the dense product and the explicit sum of B's rows."""
    users, items = random_pairs(60, 80, 900, seed=6)
    model = EASE(60, 80, l2_reg=5.0)
    model.fit(users, items, torch.ones(len(users)))
    everyone = torch.arange(60)
    scores = model.score_all(everyone)
    torch.testing.assert_close(scores, model.score_rows(model.user_rows(everyone)))
    history = items[users == 7].unique()
    torch.testing.assert_close(scores[7], model.weights[history].sum(0))
    torch.testing.assert_close(model.score_all(torch.tensor([7, 7, 3])), scores[[7, 7, 3]])


# ---------------------------------------------------------------- GF-CF and BSPM
def graph_filter_reference(x: np.ndarray, factors: int) -> tuple[np.ndarray, np.ndarray]:
    """``P~`` and the ideal low-pass filter ``D^-1/2 V^T V D^1/2`` of a dense binary matrix, by the papers' formulas."""
    du, di = x.sum(1), x.sum(0)
    inv_u = np.where(du > 0, du, 1) ** -0.5 * (du > 0)
    inv_i = np.where(di > 0, di, 1) ** -0.5 * (di > 0)
    normalised = inv_u[:, None] * x * inv_i[None, :]
    vt = np.linalg.svd(normalised)[2][:factors]
    return normalised.T @ normalised, np.diag(inv_i) @ vt.T @ vt @ np.diag(np.sqrt(di))


@pytest.mark.parametrize("factors", [5, 12])  # 30 users: ARPACK at 5 factors, the dense SVD at 12
def test_gfcf_matches_the_dense_formula(factors):
    users, items = random_pairs(30, 40, 240, seed=5)
    x = interaction_matrix(users, items, 30, 40).to_dense().double().numpy()
    assert (x.sum(0) == 0).any()  # items without training users: their scores must stay finite
    model = GFCF(30, 40, torch.stack([users, items]), factors=factors, ideal_weight=0.4)
    model.fit(users, items, torch.ones(len(users)))
    p, ideal = graph_filter_reference(x, factors)
    expected = x @ p + 0.4 * x @ ideal
    scores = model.score_all(torch.arange(30)).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(model.score_rows(torch.from_numpy(x[:7]).float()).double().numpy(), expected[:7],
                               atol=1e-5)
    fresh = GFCF(30, 40, torch.stack([users, items]), factors=factors, ideal_weight=0.4)  # V is stored, R~ rebuilt
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh.score_all(torch.arange(30)), model.score_all(torch.arange(30)), atol=1e-6)


@pytest.mark.parametrize("solver, steps", [("rk4", 1), ("rk4", 2), ("euler", 3)])
def test_bspm_sharpens_gfcf_scores_by_the_solvers_step_polynomial(solver, steps):
    users, items = random_pairs(30, 40, 240, seed=6)
    x = interaction_matrix(users, items, 30, 40).to_dense().double().numpy()
    model = BSPM(30, 40, torch.stack([users, items]), factors=6, ideal_weight=0.2, sharpening_time=2.5,
                 sharpening_steps=steps, solver=solver)
    model.fit(users, items, torch.ones(len(users)))
    p, ideal = graph_filter_reference(x, 6)
    h, eye = 2.5 / steps, np.eye(40)
    # one step of ds/dt = -s P~: Euler multiplies by I - hP~, classical RK4 by exp(-hP~)'s Taylor polynomial of degree 4
    step = eye - h * p if solver == "euler" else sum(np.linalg.matrix_power(-h * p, k) / math.factorial(k)
                                                      for k in range(5))
    expected = (x @ p + 0.2 * x @ ideal) @ np.linalg.matrix_power(step, steps)
    np.testing.assert_allclose(model.score_all(torch.arange(30)).double().numpy(), expected, atol=1e-4)
    model.sharpening_time = 0.0  # no sharpening: GF-CF
    np.testing.assert_allclose(model.score_all(torch.arange(30)).double().numpy(), x @ p + 0.2 * x @ ideal, atol=1e-5)


@pytest.mark.parametrize("kwargs, key", [({"factors": -1}, "model.factors"),
                                         ({"ideal_weight": -0.1}, "model.ideal_weight"),
                                         ({"sharpening_time": -1.0}, "model.sharpening_time"),
                                         ({"sharpening_steps": 0}, "model.sharpening_steps"),
                                         ({"solver": "dopri5"}, "model.solver")])
def test_graph_filters_reject_bad_options_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        BSPM(n_users=4, n_items=5, **kwargs)
