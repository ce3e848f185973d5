"""Mult-VAE/DAE pieces: the multinomial loss by hand, the KL annealing, the users training view."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recforge.losses import MultinomialLoss
from recforge.models.multvae import MultVAE


def test_multinomial_loss_by_hand_and_annealing():
    loss = MultinomialLoss(anneal_cap=0.2, total_anneal_steps=10)
    logits = torch.tensor([[0.0, math.log(2.0), -1e9]])
    rows = torch.tensor([[1.0, 1.0, 0.0]])
    kl = torch.tensor(5.0)
    expected_nll = -(math.log(1 / 3) + math.log(2 / 3))
    assert float(loss(logits, rows, kl)) == pytest.approx(expected_nll)  # beta = 0 at step 0
    assert loss.beta == pytest.approx(0.1)  # 1 of 10 steps
    assert float(loss(logits, rows, kl)) == pytest.approx(expected_nll + 0.1 * 5.0)
    for _ in range(3):
        loss(logits, rows, kl)
    assert loss.steps == 5 and loss.beta == pytest.approx(0.2)  # 0.5 of the way, capped at 0.2
    assert float(loss(logits, rows, kl)) == pytest.approx(expected_nll + 0.2 * 5.0)  # capped at 0.2
    with torch.no_grad():
        before = loss.steps
        loss(logits, rows, kl)
        assert loss.steps == before  # evaluation does not advance the schedule


def test_model_reads_training_rows_and_is_deterministic_in_eval():
    model = MultVAE(3, 4, interactions=torch.tensor([[0, 0, 2], [1, 3, 0]]), hidden_dims=[8], latent_dim=2)
    assert model.user_rows(torch.tensor([0, 1, 2])).tolist() == [[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    model.eval()
    first, second = model.score_all(torch.tensor([0, 2])), model.score_all(torch.tensor([0, 2]))
    assert first.shape == (2, 4) and torch.equal(first, second)
    _, kl = model.reconstruct(model.user_rows(torch.tensor([0])))
    assert float(kl) >= 0


def test_noise_scale_scales_the_training_samples_offset_and_leaves_the_kl_term():
    rows = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    samples, kls = {}, {}
    for scale in (0.0, 0.01, 1.0):
        torch.manual_seed(0)
        model = MultVAE(1, 4, hidden_dims=[8], latent_dim=2, dropout=0.0, noise_scale=scale).train()
        model.decoder[0].register_forward_pre_hook(lambda _, args: samples.__setitem__(scale, args[0].detach()))
        torch.manual_seed(5)  # the same eps each time
        kls[scale] = float(model.reconstruct(rows)[1])
    mean = samples[0.0]  # no noise: the posterior's mean, what scoring decodes
    with torch.no_grad():
        assert torch.equal(mean, model.to_latent(torch.tanh(model.encoder[0](F.normalize(rows, dim=1)))).chunk(2, 1)[0])
    assert not torch.allclose(samples[1.0], mean, atol=1e-3)
    torch.testing.assert_close(samples[0.01] - mean, 0.01 * (samples[1.0] - mean))
    assert kls[0.0] == kls[0.01] == kls[1.0] > 0  # the KL is the posterior's, whatever the sample
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        MultVAE(1, 4, noise_scale=-1.0)


def test_users_view_yields_every_training_user_once_per_epoch(tiny_cfg):
    from recforge.pipeline import build_experiment

    exp = build_experiment(tiny_cfg("model=multvae", "datamodule.batch_size=32"))
    assert exp.datamodule.train_view == "users"
    seen = torch.cat([batch[0] for batch in exp.datamodule.train_dataloader()])
    assert sorted(seen.tolist()) == sorted(torch.unique(exp.datamodule.train_tensors[0]).tolist())


def test_row_bce_negative_sampling_keeps_positives_and_r_negatives_per_positive():
    from recforge.errors import RecForgeError
    from recforge.losses import RowBCELoss

    torch.manual_seed(0)
    n_users, n_items, n_pos = 4000, 1000, 10
    rows = torch.zeros(n_users, n_items)
    rows[:, :n_pos] = 1.0
    rows[-1] = 0.0  # a user with no positives keeps nothing
    # positives predicted almost perfectly (BCE ~ 0), negatives at logit 0 (BCE log 2 each): the loss counts the
    # kept negatives, 2 per positive in expectation
    logits = torch.zeros(n_users, n_items)
    logits[:-1, :n_pos] = 50.0
    zero = torch.tensor(0.0)
    sampled = float(RowBCELoss(negative_ratio=2.0)(logits, rows, zero))
    expected = math.log(2) * 2 * n_pos * (n_users - 1) / n_users
    assert sampled == pytest.approx(expected, rel=0.02)
    assert float(RowBCELoss()(logits, rows, zero)) == pytest.approx(math.log(2) * (n_items - n_pos * (n_users - 1) / n_users), rel=1e-5)
    # a ratio that keeps every negative is the whole-row loss, positives' terms included
    logits = torch.randn(8, 30)
    rows = (torch.rand(8, 30) < 0.3).float()
    torch.testing.assert_close(RowBCELoss(negative_ratio=1e6)(logits, rows, zero), RowBCELoss()(logits, rows, zero))
    with pytest.raises(RecForgeError, match="negative_ratio"):
        RowBCELoss(negative_ratio=0.0)


def test_row_bce_by_hand_and_cdae_uses_its_user_offset():
    from recforge.losses import RowBCELoss
    from recforge.models.cdae import CDAE

    logits, rows = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 1.0]])
    # -log(1 - sigmoid(0)) - log(sigmoid(ln 3)) = log 2 + log(4/3)
    assert float(RowBCELoss()(logits, rows, torch.tensor(0.0))) == pytest.approx(math.log(2) + math.log(4 / 3))
    model = CDAE(2, 3, interactions=torch.tensor([[0, 1], [1, 1]]), hidden_dim=4).eval()
    with torch.no_grad():
        model.user_embedding.weight[1] += 1.0
    a, b = model.score_all(torch.tensor([0, 1]))
    assert not torch.allclose(a, b)  # same row, different users: the user offset matters


def test_cdae_samples_negatives_by_default_and_composes_with_other_row_losses(tmp_path):
    from hydra.utils import instantiate

    from recforge.losses import RowBCELoss
    from tests.conftest import compose_train

    loss = instantiate(compose_train(["model=cdae"], tmp_path).loss)
    assert isinstance(loss, RowBCELoss) and loss.negative_ratio == 5.0
    whole = instantiate(compose_train(["model=cdae", "loss.negative_ratio=null"], tmp_path).loss)
    assert whole.negative_ratio is None
    # the sampling ratio belongs to the loss config, so another row loss takes CDAE without stray keys
    assert isinstance(instantiate(compose_train(["model=cdae", "loss=multinomial"], tmp_path).loss), MultinomialLoss)
