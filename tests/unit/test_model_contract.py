"""One contract test over every model in conf/model (the check `implicit`'s recommender_base_test runs).

Shapes, determinism under a seed, a few training steps reduce the loss, and on a checkerboard dataset
(user u likes item i when u + i is even) the held-out item is ranked first after training (for 7 of 8 users).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recforge.config import CONFIG_DIR, build_model
from recforge.losses import BPRLoss
from recforge.samplers import NegativeSampler
from recforge.metrics.ranking import mask_scores_
from recforge.training.module import RecommenderModule
from tests.conftest import compose_train

MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
N = 16  # users = items


def checkerboard():
    """Train/test pairs: every user likes the items of its parity; the liked item (u + 2) % N is held out."""
    users, items = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    liked = (users + items) % 2 == 0
    held_out = items == (users + 2) % N
    train = liked & ~held_out
    return (users[train], items[train]), (users[held_out], items[held_out])


def sequences() -> torch.Tensor:
    """The training pairs in time order: user u consumes u + 4, u + 6, ..., u + N (mod N), so in sequence the
    held-out item u + 2 is the next one (each item follows the one 2 below it)."""
    users = torch.arange(N).repeat_interleave(N // 2 - 1)
    steps = torch.arange(2, N // 2 + 1).repeat(N)
    return torch.stack([users, (users + 2 * steps) % N])


def build(name: str, tmp_path):
    cfg = compose_train([f"model={name}"], tmp_path)
    (tu, ti), _ = checkerboard()
    times = torch.linspace(0, 1, N)
    data_kwargs = {"n_users": N, "n_items": N, "global_mean": 1.0, "interactions": torch.stack([tu, ti]),
                   "sequences": sequences(), "item_popularity": torch.bincount(ti, minlength=N),
                   "user_time_features": torch.stack([times.new_zeros(N), times.new_full((N,), 0.5), times.new_ones(N)], 1),
                   "item_time_features": times.unsqueeze(1).expand(N, 3).contiguous()}
    torch.manual_seed(0)
    model = build_model(cfg, data_kwargs)
    loss = instantiate(cfg.loss)
    return cfg, model, loss


def train_steps(cfg, model, loss, steps: int) -> list[float]:
    (tu, ti), _ = checkerboard()
    ratings = torch.ones(len(tu))
    if not model.requires_training:
        model.fit(tu, ti, ratings)
        return []
    sampler = NegativeSampler(N, torch.sort(tu * N + ti).values)
    module = RecommenderModule(model, loss, instantiate(cfg.optimizer), sampler=sampler, ks=[1])
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = module.compute_loss((tu, ti, ratings))
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    return losses


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_score_all_agree_with_forward(name, tmp_path):
    cfg, model, loss = build(name, tmp_path)
    train_steps(cfg, model, loss, 2)
    model.eval()
    users = torch.tensor([0, 3, 5])
    with torch.no_grad():
        assert model(users, torch.tensor([1, 2, 3])).shape == (3,)
        pair_scores = model(users, torch.arange(N).expand(3, -1))
        assert pair_scores.shape == (3, N)
        all_scores = model.score_all(users)
    assert all_scores.shape == (3, N)
    torch.testing.assert_close(all_scores, pair_scores, rtol=1e-4, atol=1e-5)


@pytest.fixture
def one_thread():
    """Multi-threaded CPU reductions (NGCF's sparse propagation backward) may sum in another order run to
    run (differences ~5e-7); bit-exact determinism is promised for one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name, tmp_path, one_thread):
    cfg, first, loss = build(name, tmp_path)
    train_steps(cfg, first, loss, 3)
    cfg, second, loss = build(name, tmp_path)
    train_steps(cfg, second, loss, 3)
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), f"{name}: parameter {k} differs between two runs with the same seed"


@pytest.mark.parametrize("name", [m for m in MODELS])
def test_training_reduces_loss(name, tmp_path):
    cfg, model, loss = build(name, tmp_path)
    if not model.requires_training:
        pytest.skip(f"{name} is fitted in closed form (no loss to reduce); its fit is checked by the checkerboard")
    torch.manual_seed(1)
    losses = train_steps(cfg, model, loss, 60)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{name}: loss did not decrease: {losses[:3]} -> {losses[-3:]}"


# 400 Adam steps at lr >= 0.01 learn the checkerboard for every model but BERT4Rec: its masked-item objective
# stalls at the uniform prediction (loss ln 16) in 4 of 6 seeds at 0.01, and learns it in 6 of 6 at 0.003 (its
# default is 0.001, the paper's 1e-4); which seeds stall depends on the CPU's kernels.
CHECKERBOARD_LR = {"bert4rec": 0.003}


@pytest.mark.parametrize("name", [m for m in MODELS if m != "pop"])
def test_checkerboard_held_out_item_ranked_first(name, tmp_path):
    cfg, model, loss = build(name, tmp_path)
    rating_fit = loss.feedback == "explicit" and not model.requires_training
    if loss.feedback == "explicit":  # rating models learn the ranking task through BPR here (row models: row BCE)
        from recforge.losses import RowBCELoss

        loss = RowBCELoss() if getattr(model, "train_view", None) in ("users", "items") else BPRLoss()
    cfg.optimizer.lr = CHECKERBOARD_LR.get(name, max(cfg.optimizer.lr, 0.01))
    torch.manual_seed(0)
    (tu, ti), (hu, hi) = checkerboard()
    if rating_fit:
        # a rating model fitted in closed form sees stars: 5 on the liked training pairs, 1 on half of the
        # others; the rest of the disliked items and the held-out liked one are unseen
        users, items = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
        disliked = (users + items) % 4 == 1
        tu, ti = torch.cat([tu, users[disliked]]), torch.cat([ti, items[disliked]])
        model.fit(tu, ti, torch.cat([torch.full((len(tu) - int(disliked.sum()),), 5.0),
                                     torch.ones(int(disliked.sum()))]))
    else:
        train_steps(cfg, model, loss, 400)
    model.eval()
    with torch.no_grad():
        scores = model.score_all(torch.arange(N)).float()
    mask_scores_(scores, tu, ti)
    top = scores.argmax(dim=1)
    # Among each user's unseen items one is liked (the held-out one) and half the catalogue is not; a model
    # that learnt the structure ranks it first. The held-out item is also drawn as a training negative, so
    # memorising models (MLP towers) may miss a user or two: demand 7 of 8 users (chance: 1 in 9).
    hit_rate = (top[hu] == hi).float().mean().item()
    assert hit_rate >= 0.875, f"{name}: held-out items {hi.tolist()} but ranked first {top[hu].tolist()}"


def test_popularity_is_not_personalised(tmp_path):
    cfg, model, loss = build("pop", tmp_path)
    train_steps(cfg, model, loss, 0)
    scores = model.score_all(torch.arange(N))
    assert torch.equal(scores[0], scores[1])
    (tu, ti), _ = checkerboard()
    assert torch.equal(scores[0], torch.bincount(ti, minlength=N).float())
