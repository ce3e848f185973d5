"""The contract every model meets, as checks a test suite can run: RecForge's own (tests/unit/test_model_contract.py)
and a user's, for a model added from their own repository (docs/extending.md):

    import pytest
    from recforge.testing import CONTRACT_CHECKS

    @pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__)
    def test_my_model_meets_the_contract(check):
        check("mymodel", config_dirs=["conf"])   # conf/model/mymodel.yaml, found beside RecForge's configs

Each check builds the model from its config option (``model=<name>``) on a tiny "checkerboard" dataset, where
user ``u`` likes item ``i`` when ``u + i`` is even and the liked item ``(u + 2) % 16`` is held out (the check
``implicit``'s recommender_base_test runs; each item has one feature, its parity), and asserts one part of the
contract:

* :func:`check_shapes`: ``forward`` gives ``(B,)`` and ``(B, n)`` scores, ``score_all`` ``(B, n_items)``, and
  both agree;
* :func:`check_deterministic`: two builds and trainings under one seed end with equal weights;
* :func:`check_training_reduces_loss`: 60 optimizer steps lower the training loss (closed-form models: skipped);
* :func:`check_checkerboard`: after training, the held-out item ranks first for at least 7 of 8 users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from recforge import CONFIG_DIR

N = 16  # users = items


def checkerboard() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and held-out ``(users, items)``: every user likes the items of its parity; the liked item
    ``(u + 2) % N`` is held out."""
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


def compose(overrides: Sequence[str], config_dirs: Sequence[str | Path] = ()):
    """The train config with ``overrides``, RecForge's configs plus ``config_dirs`` on Hydra's search path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]"] \
        if config_dirs else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[*extra, *overrides])


def build(name: str, config_dirs: Sequence[str | Path] = ()):
    """``(cfg, model, loss)`` for ``model=<name>`` on the checkerboard's sizes, seeded."""
    from hydra.utils import instantiate

    from recforge.config import build_model

    cfg = compose([f"model={name}"], config_dirs)
    (tu, ti), _ = checkerboard()
    times = torch.linspace(0, 1, N)
    data_kwargs = {"n_users": N, "n_items": N, "global_mean": 1.0, "interactions": torch.stack([tu, ti]),
                   "sequences": sequences(), "item_popularity": torch.bincount(ti, minlength=N),
                   "user_time_features": torch.stack([times.new_zeros(N), times.new_full((N,), 0.5),
                                                      times.new_ones(N)], 1),
                   "item_time_features": times.unsqueeze(1).expand(N, 3).contiguous(),
                   # each item's parity, one-hot: the feature models read it (SASRecF refuses data without one)
                   "item_features": torch.nn.functional.one_hot(torch.arange(N) % 2, 2).float()}
    torch.manual_seed(0)
    return cfg, build_model(cfg, data_kwargs), instantiate(cfg.loss)


def train_steps(cfg, model, loss, steps: int) -> list[float]:
    """``steps`` optimizer steps on the checkerboard's training pairs (closed-form models: ``fit``); the losses."""
    from hydra.utils import instantiate

    from recforge.samplers import NegativeSampler
    from recforge.training.module import RecommenderModule

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


def check_shapes(name: str, config_dirs: Sequence[str | Path] = ()) -> None:
    cfg, model, loss = build(name, config_dirs)
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


def check_deterministic(name: str, config_dirs: Sequence[str | Path] = ()) -> None:
    """Bit-exact on one intra-op thread: multi-threaded CPU reductions (NGCF's sparse propagation backward)
    may sum in another order run to run (differences ~5e-7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, first, loss = build(name, config_dirs)
        train_steps(cfg, first, loss, 3)
        cfg, second, loss = build(name, config_dirs)
        train_steps(cfg, second, loss, 3)
    finally:
        torch.set_num_threads(threads)
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), f"{name}: parameter {key} differs between two runs with the same seed"


def check_training_reduces_loss(name: str, config_dirs: Sequence[str | Path] = ()) -> None:
    cfg, model, loss = build(name, config_dirs)
    if not model.requires_training:
        return  # fitted in closed form: no loss to reduce; check_checkerboard checks the fit
    torch.manual_seed(1)
    losses = train_steps(cfg, model, loss, 60)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{name}: loss did not decrease: {losses[:3]} -> {losses[-3:]}"


# 400 Adam steps at lr >= 0.01 learn the checkerboard for every model but two, which learn it at 0.003 (their
# defaults are 0.001); which seeds fail at 0.01 depends on the CPU's kernels. BERT4Rec: its masked-item objective
# stalls at the uniform prediction (loss ln 16) in 4 of 6 seeds at 0.01, and learns it in 6 of 6 at 0.003. AutoInt:
# at 0.01 its attention layers overshoot: hit rate 0.75-1.0 over 6 seeds, and 0.44 for the test's own seed on an
# Intel Xeon (an AMD EPYC passed it); 6 of 6 seeds reach 1.0 at 0.003. RecVAE (default lr 0.0005): at 0.01 it
# passes 6 of 6 seeds on one thread but 2 of 6 on two (the order of a sum tips it into ranking one item first for
# every user), 6 of 6 on either at 0.003.
CHECKERBOARD_LR = {"bert4rec": 0.003, "autoint": 0.003, "recvae": 0.003}
NOT_PERSONALISED = ("pop",)


def check_checkerboard(name: str, config_dirs: Sequence[str | Path] = ()) -> None:
    from recforge.losses import BPRLoss, RowBCELoss
    from recforge.metrics.ranking import mask_scores_

    if name in NOT_PERSONALISED:
        return
    cfg, model, loss = build(name, config_dirs)
    rating_fit = loss.feedback == "explicit" and not model.requires_training
    if loss.feedback == "explicit":  # rating models learn the ranking task through BPR here (row models: row BCE)
        loss = RowBCELoss() if model.train_view in ("users", "items") else BPRLoss()
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


CONTRACT_CHECKS = (check_shapes, check_deterministic, check_training_reduces_loss, check_checkerboard)
