"""The negative sampler: exact membership through the CPU Bloom filter, no training positives drawn, uniform draws."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.errors import RecForgeError
from recforge.samplers import HardNegativeSampler, InBatchSampler, NegativeSampler


def keys_of(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    return torch.unique(users * n_items + items)


def test_is_positive_is_exact_set_membership_on_cpu():
    torch.manual_seed(0)
    n_users, n_items = 300, 500
    users, items = torch.randint(n_users, (20_000,)), torch.randint(n_items, (20_000,))
    keys = keys_of(users, items, n_items)
    sampler = NegativeSampler(n_items, keys)
    known = set(keys.tolist())
    # every pair of the catalogue for 40 users: the filter's false positives must be searched away
    q_users = torch.arange(40).repeat_interleave(n_items)
    q_items = torch.arange(n_items).repeat(40)
    got = sampler.is_positive(q_users, q_items.unsqueeze(1)).squeeze(1)
    expected = torch.tensor([(u * n_items + i) in known for u, i in zip(q_users.tolist(), q_items.tolist())])
    assert torch.equal(got, expected)
    assert sampler._search(q_users.unsqueeze(1) * n_items + q_items.unsqueeze(1)).squeeze(1).equal(expected)


def test_negatives_avoid_positives_and_are_uniform_over_the_rest():
    torch.manual_seed(1)
    n_items = 10
    # user 0 has items 0-6, user 1 has none
    keys = keys_of(torch.zeros(7, dtype=torch.long), torch.arange(7), n_items)
    sampler = NegativeSampler(n_items, keys, retries=60)
    users = torch.cat([torch.zeros(3000, dtype=torch.long), torch.ones(3000, dtype=torch.long)])
    negatives = sampler(users, 2)
    assert negatives.shape == (6000, 2)
    first = negatives[:3000].flatten()
    assert bool((first >= 7).all())  # 0.7^61 per slot: ~2e-6 that any of 6,000 slots keeps a collision
    counts = torch.bincount(first, minlength=n_items)[7:].float()
    assert bool(((counts / counts.sum() - 1 / 3).abs() < 0.05).all())
    counts = torch.bincount(negatives[3000:].flatten(), minlength=n_items).float()
    assert bool(((counts / counts.sum() - 0.1).abs() < 0.03).all())


@pytest.mark.parametrize("kind", ["uniform", "popularity", "hard"])
def test_collisions_the_redraws_leave_are_drawn_but_score_minus_inf(kind):
    from recforge.samplers import PopularitySampler

    torch.manual_seed(2)
    users = torch.tensor([0] * 9 + [1])  # user 0 has items 0-8 of 10, user 1 item 9
    keys = keys_of(users, torch.arange(10), 10)
    sampler = {"uniform": NegativeSampler(10, keys, retries=0),
               "popularity": PopularitySampler(10, keys, torch.ones(10), alpha=1.0, retries=0),
               "hard": HardNegativeSampler(10, keys, pool_size=2, retries=0)}[kind]
    batch = torch.tensor([0] * 1000 + [1] * 1000)
    negatives = sampler(batch, 3)
    candidates = torch.cat([torch.where(batch == 0, 9, 0).unsqueeze(1), negatives], dim=1)  # a positive first
    scores = sampler.adjust(batch, candidates, torch.zeros(2000, 4), logq_correction=False)
    own = torch.where(batch.unsqueeze(1) == 0, negatives < 9, negatives == 9)  # the row's user's positives
    assert 0.5 < own[:1000].float().mean() < 1  # 90% of single draws hit one of user 0's items and stay drawn
    assert torch.equal(scores[:, 1:].isinf(), own) and bool((scores[:, 0] == 0).all())  # ... but never train
    # the draw's own record of its hits (the same users tensor) and a search (another tensor) agree
    searched = sampler.adjust(batch.clone(), candidates, torch.zeros(2000, 4), logq_correction=False)
    assert torch.equal(searched, scores)


def test_the_filter_follows_keys_changed_in_place():
    keys = keys_of(torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3]), 10)
    sampler = NegativeSampler(10, keys)
    zero = torch.zeros(1, dtype=torch.long)
    assert sampler.is_positive(zero, torch.tensor([[2]])).item()
    sampler.positive_keys.copy_(torch.tensor([4, 5, 6]))  # same tensor, new contents
    assert not sampler.is_positive(zero, torch.tensor([[2]])).item()
    assert sampler.is_positive(zero, torch.tensor([[5]])).item()
    int32 = NegativeSampler(10, torch.tensor([4, 5, 6], dtype=torch.int32))
    assert int32.is_positive(zero, torch.tensor([[5]])).item()


def test_user_uniform_batches_weigh_users_alike_and_draw_only_their_items():
    """User 0 has 1 training item, user 1 has 9: a shuffle gives user 1 nine examples in ten, the user-first
    sampler of the NGCF/LightGCN code half of them, each example one of that user's own items."""
    from recforge.data.batches import ShuffledBatches, UserUniformBatches

    users = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    items = torch.tensor([10, 11, 5, 12, 13, 14, 15, 16, 17, 18])
    tensors = (users, items, torch.ones(10))
    sampler = UserUniformBatches(tensors, batch_size=4, seed=0)
    drawn_users, drawn_items = [], []
    for _ in range(2000):
        batches = list(sampler)
        assert [len(b[0]) for b in batches] == [4, 4, 2]  # an epoch: as many examples as interactions
        drawn_users += [b[0] for b in batches]
        drawn_items += [b[1] for b in batches]
    drawn_users, drawn_items = torch.cat(drawn_users), torch.cat(drawn_items)
    assert abs((drawn_users == 0).float().mean().item() - 0.5) < 0.02
    assert torch.all(drawn_items[drawn_users == 0] == 5)
    assert set(drawn_items[drawn_users == 1].tolist()) == set(range(10, 19))  # every item of user 1, uniformly
    assert drawn_items[drawn_users == 1].bincount(minlength=19)[10:].float().std() < 0.1 * (drawn_users == 1).sum() / 9
    shuffled = torch.cat([b[0] for _ in range(50) for b in ShuffledBatches(tensors, 4, seed=0)])
    assert (shuffled == 0).float().mean().item() == pytest.approx(0.1)
    again = UserUniformBatches(tensors, batch_size=4, seed=0)
    again.set_epoch(3)
    sampler.set_epoch(3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(again, sampler))  # an epoch is fixed by (seed, epoch)


def test_training_batches_are_drawn_where_the_trainer_runs(tiny_cfg):
    """Under ``train_on_device`` the training tensors go to the trainer's CUDA device (once, so no batch is copied
    from the host); elsewhere (the host, Apple's MPS) and without it they stay on the host, pinned when bound for a
    GPU."""
    from types import SimpleNamespace

    from recforge.pipeline import build_experiment

    dm = build_experiment(tiny_cfg()).datamodule
    assert dm.train_device() == torch.device("cpu")  # no trainer attached
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 1)))
    try:
        assert dm.train_device() == torch.device("cuda", 1)
        dm.trainer.strategy.root_device = torch.device("mps")
        assert dm.train_device() == torch.device("cpu")
        dm.trainer.strategy.root_device = torch.device("cuda", 1)
        dm.train_on_device = False
        assert dm.train_device() == torch.device("cpu")
        loader = dm.train_dataloader()
        assert all(a is b for a, b in zip(loader.dataset.tensors, dm.train_tensors))  # the host tensors, no copy
        assert loader.pin_memory  # host batches bound for a GPU are pinned
        dm.trainer.strategy.root_device = torch.device("cpu")
        assert not dm.train_dataloader().pin_memory
    finally:
        dm.trainer = None


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device; runs in the tests step of scripts/gpu_session.sh")
def test_epochs_drawn_on_a_gpu_cover_the_data_and_under_ddp_equal_the_hosts():
    from recforge.data.batches import ShuffledBatches, UserUniformBatches

    users = torch.tensor([1, 1, 0, 1, 2, 2, 1, 1, 1, 1])
    items = torch.arange(10)
    host = (users, items, torch.ones(10))
    tensors = tuple(t.cuda() for t in host)
    batches = list(ShuffledBatches(tensors, 4, seed=0))
    assert all(b[0].is_cuda for b in batches) and [len(b[0]) for b in batches] == [4, 4, 2]
    assert torch.cat([b[1] for b in batches]).sort().values.tolist() == list(range(10))  # every row once
    again = list(ShuffledBatches(tensors, 4, seed=0))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # an epoch is fixed by (seed, epoch)
    for kind in (ShuffledBatches, UserUniformBatches):  # under DDP drawn by the host's generator, like the host's
        for rank in (0, 1):
            on_gpu = list(kind(tensors, 4, seed=0).batches(rank, 2))
            on_host = list(kind(host, 4, seed=0).batches(rank, 2))
            assert all(b[1].is_cuda and torch.equal(b[1].cpu(), h[1]) for b, h in zip(on_gpu, on_host, strict=True))
    sampler = UserUniformBatches(tensors, 4, seed=0)
    drawn = [b for _ in range(20) for b in sampler]
    drawn_users, drawn_items = torch.cat([b[0] for b in drawn]).cpu(), torch.cat([b[1] for b in drawn]).cpu()
    assert torch.equal(users[drawn_items], drawn_users)  # each example one of its own user's interactions
    assert set(drawn_users.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- popularity, in-batch and hard negatives
def test_popularity_negatives_follow_count_to_the_alpha():
    from recforge.samplers import PopularitySampler

    counts = torch.tensor([1.0, 3.0, 0.0, 4.0, 16.0])
    no_positives = torch.tensor([], dtype=torch.long)
    for alpha, expected in ((1.0, counts / 24), (0.5, counts.sqrt() / counts.sqrt().sum()), (0.0, torch.full((5,), 0.2))):
        torch.manual_seed(2)
        sampler = PopularitySampler(5, no_positives, counts, alpha=alpha)
        draws = sampler(torch.zeros(40_000, dtype=torch.long), 5)
        freq = torch.bincount(draws.flatten(), minlength=5).float() / draws.numel()
        assert torch.allclose(freq, expected, atol=0.01), (alpha, freq)
        assert torch.allclose(sampler.log_prob(torch.arange(5)).exp(), expected, atol=1e-6)
    assert sampler.log_prob(torch.tensor([2])).exp().item() == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["uniform", "popularity0", "popularity1"])
def test_restricted_negatives_come_from_the_given_items_only(kind):
    """The cold-item splits keep held-out items out of training, also as negatives: every sampler draws from
    ``restrict_to``'s items only, the popularity sampler by its weights among them (at alpha=0 too, where an item
    without training interactions has weight 1)."""
    from recforge.samplers import NegativeSampler, PopularitySampler

    counts = torch.tensor([1.0, 3.0, 0.0, 4.0, 0.0])
    no_positives = torch.tensor([], dtype=torch.long)
    sampler = NegativeSampler(5, no_positives) if kind == "uniform" else \
        PopularitySampler(5, no_positives, counts, alpha=float(kind[-1]))
    sampler.restrict_to(torch.tensor([0, 1, 3]))
    torch.manual_seed(3)
    draws = sampler(torch.zeros(30_000, dtype=torch.long), 4)
    freq = torch.bincount(draws.flatten(), minlength=5).float() / draws.numel()
    expected = counts / 8 if kind == "popularity1" else torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]) / 3
    assert torch.allclose(freq, expected, atol=0.01), freq
    assert torch.allclose(sampler.log_prob(torch.tensor([0, 1, 3])).exp(), expected[[0, 1, 3]], atol=1e-6)


def test_popularity_negatives_avoid_the_users_positives_and_refuse_negative_alpha():
    from recforge.samplers import PopularitySampler

    torch.manual_seed(3)
    keys = keys_of(torch.zeros(1, dtype=torch.long), torch.tensor([4]), 5)  # user 0 likes the most popular item
    sampler = PopularitySampler(5, keys, torch.tensor([1.0, 1.0, 1.0, 1.0, 6.0]), alpha=1.0, retries=40)
    assert not bool((sampler(torch.zeros(500, dtype=torch.long), 4) == 4).any())
    with pytest.raises(RecForgeError, match="sampler.alpha"):
        PopularitySampler(5, keys, torch.ones(5), alpha=-0.5)


def test_in_batch_negatives_are_the_other_positives_with_hits_masked_and_logq():
    users, positives = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    keys = keys_of(torch.tensor([0, 1, 2, 3, 0]), torch.tensor([5, 6, 7, 8, 7]), 10)  # user 0 also likes 7
    counts = torch.tensor([0, 0, 0, 0, 0, 1.0, 1.0, 2.0, 1.0, 0])
    sampler = InBatchSampler(10, keys, counts)
    torch.manual_seed(0)
    negatives = sampler(users, 2, positives=positives)
    # each row: two distinct other rows' positives; each positive serves two other rows (a cyclic order's next two)
    assert all(len(set(row)) == 2 and int(positives[b]) not in row for b, row in enumerate(negatives.tolist()))
    assert torch.bincount(negatives.flatten(), minlength=9)[5:].tolist() == [2, 2, 2, 2]
    orders = {tuple(sampler(users, 1, positives=positives).squeeze(1).tolist()) for _ in range(30)}
    assert len(orders) > 1   # a random order of the rows, drawn afresh each batch
    everyone = sampler(users, 10, positives=positives)
    assert everyone.shape == (4, 3)  # at most the batch's other rows, each once
    assert all(sorted(row) == sorted(set(positives.tolist()) - {int(positives[b])})
               for b, row in enumerate(everyone.tolist()))
    candidates = torch.tensor([[5, 6, 7], [6, 7, 8], [7, 8, 5], [8, 5, 6]])   # each row's positive, then two
    scores = torch.zeros(4, 3)
    plain = sampler.adjust(users, candidates, scores, logq_correction=False)
    assert plain[0].tolist() == [0.0, 0.0, float("-inf")] and bool(torch.isfinite(plain[1:]).all())
    corrected = sampler.adjust(users, candidates, scores, logq_correction=True)
    # q(item) = its share of the 5 training positives: q(5) = q(6) = q(8) = 0.2, q(7) = 0.4
    assert corrected[1].tolist() == pytest.approx([-torch.log(torch.tensor(0.2)).item(),
                                                   -torch.log(torch.tensor(0.4)).item(),
                                                   -torch.log(torch.tensor(0.2)).item()])


def test_hard_negatives_are_the_best_scored_of_each_pool():
    keys = keys_of(torch.tensor([0]), torch.tensor([0]), 50)
    users = torch.arange(6) % 2
    torch.manual_seed(4)
    pool = NegativeSampler(50, keys)(users, 3 * 5).view(6, 3, 5)
    torch.manual_seed(4)
    hard = HardNegativeSampler(50, keys, pool_size=5)(users, 3, scorer=lambda u, items: (items * 7 % 50).float())
    assert torch.equal(hard, pool.gather(-1, (pool * 7 % 50).argmax(-1, keepdim=True)).squeeze(-1))


def test_in_batch_negatives_of_a_sequential_batch_come_mostly_from_other_users():
    """A sequential batch holds each user's positions side by side; negatives from the next rows in batch order
    would be the same user's items (masked: a quarter of them here), in a random order of the rows they are not."""
    users = torch.arange(64).repeat_interleave(50)   # 64 users x 50 positions, each user's own 50 items
    positives = torch.arange(64 * 50)
    sampler = InBatchSampler(64 * 50, keys_of(users, positives, 64 * 50))
    torch.manual_seed(6)
    negatives = sampler(users, 100, positives=positives)
    masked = sampler.is_positive(users, negatives).float().mean().item()
    assert masked < 0.05, masked   # about 49 / 3,199 of a row's draws are its user's (was 0.25 in batch order)


def test_hard_negatives_never_pick_a_positive_the_redraws_left_while_the_pool_has_another():
    """A model ranks a user's own items highest, so without the mask the pool's argmax seeks out the training
    positives the uniform redraws missed."""
    n_items = 30
    users = torch.zeros(2000, dtype=torch.long)
    liked = torch.arange(20)   # two thirds of the catalogue: the two redraws often stay on a positive
    keys = keys_of(torch.zeros(20, dtype=torch.long), liked, n_items)
    scorer = lambda u, items: (items < 20).float() + items.float() / 100   # noqa: E731  positives score highest
    torch.manual_seed(7)
    pool = NegativeSampler(n_items, keys)(users, 8).view(2000, 1, 8)
    assert bool((pool < 20).any(-1).any())   # the redraws did leave positives in pools: the test means something
    torch.manual_seed(7)
    hard = HardNegativeSampler(n_items, keys, pool_size=8)(users, 1, scorer=scorer)
    has_other = (pool >= 20).any(-1)
    assert not bool((hard[has_other] < 20).any())
    best_other = torch.where(pool >= 20, pool, -1).amax(-1)   # the highest-scored non-positive of each pool
    assert torch.equal(hard[has_other], best_other[has_other])


def test_popularity_draws_follow_the_logq_probabilities_at_a_million_items():
    """The integer CDF gives every item exactly the probability the logQ correction subtracts, however small
    its share (a float32 CDF rounded a million items' shares by up to a third)."""
    from recforge.samplers import PopularitySampler

    counts = torch.randint(1, 1000, (1_000_000,), generator=torch.Generator().manual_seed(8)).float()
    sampler = PopularitySampler(1_000_000, torch.tensor([], dtype=torch.long), counts, alpha=0.75)
    expected = counts.double() ** 0.75 / (counts.double() ** 0.75).sum()
    # float32 logs of ~1e-6 shares; the rounding remainder (under 1e6 of 2^52 ticks) sits on the heaviest item
    assert torch.allclose(sampler.log_prob(torch.arange(1_000_000)).double(), expected.log(), rtol=0, atol=2e-4)
    torch.manual_seed(8)
    draws = sampler(torch.zeros(1000, dtype=torch.long), 2000).flatten()
    # two million draws, counted in ten groups of items by weight (each item's share is ~1e-6: too few draws each)
    group = torch.bucketize(expected, expected.quantile(torch.linspace(0, 1, 11, dtype=torch.float64)[1:-1]))
    share = torch.bincount(group[draws], minlength=10).double() / len(draws)
    want = torch.bincount(group, weights=expected, minlength=10)
    assert torch.allclose(share, want, rtol=0.01, atol=0), (share, want)


def test_shared_negatives_are_one_draw_for_the_batch_with_each_rows_positives_masked_and_logq():
    from recforge.samplers import PopularitySampler

    torch.manual_seed(5)
    keys = keys_of(torch.tensor([0, 0, 1]), torch.tensor([2, 3, 4]), 10)  # user 0 likes 2 and 3, user 1 likes 4
    users = torch.tensor([0, 1])
    negatives = NegativeSampler(10, keys, shared=True)(users, 20_000)
    assert negatives.shape == (20_000,)  # one set, not one per row; uniform over the whole catalogue
    assert bool(((torch.bincount(negatives, minlength=10) / 20_000 - 0.1).abs() < 0.01).all())
    sampler = NegativeSampler(10, keys, shared=True)
    candidates = torch.tensor([[2, 3, 4, 5], [4, 3, 4, 5]])  # the positive first, then the shared set (3, 4, 5)
    adjusted = sampler.adjust(users, candidates, torch.zeros(2, 4), logq_correction=True)
    inf, q = float("inf"), math.log(10)  # uniform: every log q(item) = -log 10
    assert adjusted.tolist() == [pytest.approx([q, -inf, q, q]), pytest.approx([q, q, -inf, q])]  # positives stay
    weights = torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1, 1, 4])
    draws = PopularitySampler(10, keys, weights, alpha=1.0, shared=True)(users, 40_000)
    assert draws.shape == (40_000,) and abs((draws == 9).float().mean().item() - 1 / 3) < 0.01
    for kind in (InBatchSampler, HardNegativeSampler):
        with pytest.raises(RecForgeError, match="sampler.shared=true"):
            kind(10, keys, torch.ones(10), shared=True)


@pytest.mark.parametrize("model", ["mf", "mf_cosine", "mf_bias", "simplex", "sasrec", "default"])
def test_shared_negatives_score_as_the_same_items_given_to_every_row(model):
    from recforge.models.base import Recommender
    from recforge.models.mf import MatrixFactorization
    from recforge.models.sasrec import SASRec
    from recforge.models.simplex import SimpleX

    torch.manual_seed(6)
    users, items = torch.tensor([0, 2, 3, 2]), torch.tensor([1, 7, 7, 0, 4])
    if model == "sasrec":
        net = SASRec(4, 9, max_len=5).eval()
        hidden = torch.randn(4, 64)
        got, expected = net.item_logits(hidden, items), net.item_logits(hidden, items.expand(4, -1))
    else:
        interactions = torch.tensor([[0, 1, 2, 3, 3], [1, 2, 3, 4, 8]])
        net = {"mf": lambda: MatrixFactorization(4, 9, 8, use_bias=False),
               "mf_cosine": lambda: MatrixFactorization(4, 9, 8, use_bias=False, similarity="cosine"),
               "mf_bias": lambda: MatrixFactorization(4, 9, 8, use_bias=True, global_mean=3.0),
               "simplex": lambda: SimpleX(4, 9, interactions, embedding_dim=8, dropout=0.0),
               "default": lambda: MatrixFactorization(4, 9, 8, use_bias=True)}[model]()
        if model == "mf_bias":
            torch.nn.init.normal_(net.item_bias.weight)
            torch.nn.init.normal_(net.user_bias.weight)
        expected = net(users, items.expand(4, -1))
        got = Recommender.score_items(net, users, items) if model == "default" else net.score_items(users, items)
    assert got.shape == (4, 5)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sampled_losses_against_hand_computed_values():
    import math

    from recforge.losses import BCELoss, BPRLoss, CosineContrastiveLoss, SampledSoftmaxLoss

    pos, neg = torch.tensor([0.5]), torch.tensor([[0.95, 0.2]])
    assert CosineContrastiveLoss(2, margin=0.9, negative_weight=2.0)(pos, neg).item() == pytest.approx(0.55)
    expected = math.log(math.exp(0.5) + math.exp(0.95) + math.exp(0.2)) - 0.5
    assert SampledSoftmaxLoss(2)(pos, neg).item() == pytest.approx(expected)
    # a masked in-batch negative is no pair: no term, no NaN, and not in the mean's count
    masked = torch.tensor([[0.95, float("-inf")]])
    assert SampledSoftmaxLoss(2)(pos, masked).item() == pytest.approx(math.log(math.exp(0.5) + math.exp(0.95)) - 0.5)
    assert BPRLoss(2)(pos, masked).item() == pytest.approx(-math.log(1 / (1 + math.exp(0.45))))
    assert CosineContrastiveLoss(2, margin=0.9, negative_weight=2.0)(pos, masked).item() == pytest.approx(0.6)
    # two rows, one with every negative masked: its negative term is zero, its positive term stays
    rows_pos, rows_neg = torch.tensor([0.5, 0.8]), torch.tensor([[0.95, float("-inf")], [float("-inf")] * 2])
    assert BPRLoss(2)(rows_pos, rows_neg).item() == pytest.approx(-math.log(1 / (1 + math.exp(0.45))))
    assert CosineContrastiveLoss(2, margin=0.9, negative_weight=2.0)(rows_pos, rows_neg).item() == pytest.approx(
        (0.6 + 0.2) / 2)
    bce = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.95))) / 2  # the masked one: no term, no NaN
    scores = masked.clone().requires_grad_()
    value = BCELoss(2)(pos, scores)
    value.backward()
    assert value.item() == pytest.approx(bce) and scores.grad[0, 1].item() == 0.0


@pytest.mark.parametrize("overrides", [
    ["sampler=popularity"],
    ["sampler=hard", "sampler.pool_size=4"],
    ["sampler=in_batch", "loss=sampled_softmax", "loss.num_negatives=63", "datamodule.batch_size=64"],
    ["sampler=popularity", "loss=sampled_softmax", "loss.num_negatives=20"],
    ["loss=ccl", "model.similarity=cosine", "loss.num_negatives=20", "loss.negative_weight=10"],
    ["model=sasrec", "sampler=hard", "loss=bce", "split=leave_one_out", "trainer.max_epochs=1"],
    ["model=simplex", "sampler.shared=true", "loss.num_negatives=30", "loss.negative_weight=10"],
    ["sampler=popularity", "sampler.shared=true", "loss=sampled_softmax", "loss.num_negatives=20"],
    ["model=sasrec", "sampler.shared=true", "loss=bce", "loss.num_negatives=8", "split=leave_one_out",
     "trainer.max_epochs=1"],
    ["model=ngcf", "sampler.shared=true", "loss.num_negatives=8"],
], ids=["popularity", "hard", "in_batch-softmax", "popularity-softmax", "mf-ccl", "sasrec-hard", "simplex-shared",
        "popularity-shared-softmax", "sasrec-shared", "ngcf-shared"])
def test_every_sampler_trains_end_to_end(tiny_cfg, overrides):
    from recforge.train import train

    metrics = train(tiny_cfg(*overrides))
    assert 0 < metrics["test/ndcg_at_10"] <= 1


@pytest.mark.parametrize("overrides,message", [
    (["loss.num_negatives=60"], "loss.num_negatives=60 asks for more negatives than the"),
    (["sampler=in_batch", "loss=sampled_softmax", "loss.num_negatives=300"], "datamodule.batch_size=256"),
    (["sampler=popularity", "sampler.alpha=-1"], "sampler.alpha=-1"),
    (["sampler=hard", "sampler.pool_size=0"], "sampler.pool_size=0"),
    (["loss=ccl", "loss.margin=2"], "loss.margin=2"),
    (["sampler=hard", "sampler.shared=true"], "sampler.shared=true"),
    (["sampler=in_batch", "loss=sampled_softmax", "loss.num_negatives=20", "datamodule.sample_users_uniformly=true"],
     "datamodule.sample_users_uniformly=true"),
])
def test_sampler_mistakes_are_one_line_errors_naming_the_key(tiny_cfg, overrides, message):
    from recforge.train import train

    with pytest.raises(RecForgeError) as info:
        train(tiny_cfg(*overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
