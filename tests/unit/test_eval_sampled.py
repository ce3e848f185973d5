"""Sampled protocols: negatives exclude seen and held-out items, are distinct, fixed under the seed (same for
every model, chunking and order), follow the popularity weights, and the metrics on the candidate set are the
textbook ones."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.errors import RecForgeError
from recforge.metrics.evaluator import RankingEvaluator
from recforge.metrics.sampled import hash_uniform_keys, protocol_prefix, sample_negatives


def test_protocol_prefix_names_the_protocol():
    assert protocol_prefix(99, "uniform") == "sampled99"
    assert protocol_prefix(50, "popularity") == "popsampled50"
    with pytest.raises(RecForgeError, match="eval.sampled.strategy='zipf'"):
        protocol_prefix(99, "zipf")
    with pytest.raises(RecForgeError, match="eval.sampled.n_negatives=0"):
        protocol_prefix(0, "uniform")


def test_hash_rows_are_injective_and_users_differ():
    keys = hash_uniform_keys(torch.tensor([0, 1, 2**40 + 7]), 5000, seed=3)
    assert keys.min() >= 0 and keys.max() < 2**32
    for row in keys:
        assert row.unique().numel() == 5000
    assert not torch.equal(keys[0], keys[1])
    assert torch.equal(hash_uniform_keys(torch.tensor([1]), 5000, seed=3)[0], keys[1])
    assert not torch.equal(hash_uniform_keys(torch.tensor([1]), 5000, seed=4)[0], keys[1])


def test_negatives_avoid_blocked_items_are_distinct_and_fixed():
    n_items, users = 300, torch.arange(40) * 7
    gen = torch.Generator().manual_seed(0)
    blocked = torch.rand(40, n_items, generator=gen) < 0.5
    blocked[3, :] = True
    blocked[3, :4] = False  # only 4 eligible items: all of them, the rest invalid
    rows, cols = blocked.nonzero(as_tuple=True)
    items, valid = sample_negatives(users, n_items, 20, rows, cols, seed=11)
    assert items.shape == (40, 20)
    assert valid[3].sum() == 4 and sorted(items[3][valid[3]].tolist()) == [0, 1, 2, 3]
    assert (items[3][~valid[3]] == n_items).all()
    for r in range(40):
        chosen = items[r][valid[r]]
        assert chosen.unique().numel() == chosen.numel()
        assert not blocked[r, chosen].any()
    assert valid[[r for r in range(40) if r != 3]].all()
    # one user at a time, in reverse order: the same negatives
    for r in (39, 17, 3, 0):
        one_rows = rows[rows == r] * 0
        again, _ = sample_negatives(users[r : r + 1], n_items, 20, one_rows, cols[rows == r], seed=11)
        assert torch.equal(again[0], items[r])
    other, _ = sample_negatives(users, n_items, 20, rows, cols, seed=12)
    assert not torch.equal(other, items)


def test_popularity_negatives_follow_the_weights():
    n_items = 50
    weights = torch.zeros(n_items)
    weights[:10] = 1.0
    weights[10:20] = 9.0  # items 10..19 nine times as likely as 0..9; items 20.. never
    users = torch.arange(4000)
    items, valid = sample_negatives(users, n_items, 1, torch.empty(0, dtype=torch.long),
                                    torch.empty(0, dtype=torch.long), seed=0, weights=weights)
    assert valid.all() and (items < 20).all()
    share_heavy = (items >= 10).float().mean().item()
    assert share_heavy == pytest.approx(0.9, abs=0.03)
    # with 15 draws per user, and only 20 items of positive weight, the zero-weight items still never appear
    items, valid = sample_negatives(users[:50], n_items, 25, torch.empty(0, dtype=torch.long),
                                    torch.empty(0, dtype=torch.long), seed=0, weights=weights)
    assert (valid.sum(1) == 20).all() and (items[valid] < 20).all()


def test_sampled_metrics_hand_computed():
    # 6 items; user 0 relevant {4}, seen {0}. With N = 2 the candidates are {4} + 2 negatives from {1, 2, 3, 5}.
    n_items = 6
    scores = torch.tensor([[9.0, 5.0, 1.0, 3.0, 4.0, 3.0]])
    batch = {"users": torch.tensor([10]), "exclude_rows": torch.tensor([0]), "exclude_cols": torch.tensor([0]),
             "relevant_rows": torch.tensor([0]), "relevant_cols": torch.tensor([4])}
    ev = RankingEvaluator(ks=[1, 2], sampled_negatives=2, sampled_seed=5)
    negatives, _ = sample_negatives(torch.tensor([10]), n_items, 2, torch.tensor([0, 0]), torch.tensor([0, 4]), seed=5)
    out = ev.evaluate_scores(scores.clone(), batch)
    neg_scores = scores[0, negatives[0]]
    rank = 1 + int((neg_scores > 4.0).sum())  # ties cannot occur: no negative scores 4
    assert out["sampled2_hr_at_1"].item() == float(rank == 1)
    assert out["sampled2_ndcg_at_2"].item() == pytest.approx(1 / math.log2(rank + 1) if rank <= 2 else 0.0)
    assert out["sampled2_mrr_at_2"].item() == pytest.approx(1 / rank if rank <= 2 else 0.0)
    # full ranking of the same user: 1 (5.0), 4 (4.0) -> relevant at rank 2
    assert out["hr_at_1"].item() == 0.0 and out["mrr_at_2"].item() == 0.5


def test_sampled_ties_go_to_the_lower_item_index():
    # all scores equal: the relevant item 2 is ranked among the candidates by item index alone
    scores = torch.zeros(1, 5)
    batch = {"users": torch.tensor([0]), "exclude_rows": torch.empty(0, dtype=torch.long),
             "exclude_cols": torch.empty(0, dtype=torch.long), "relevant_rows": torch.tensor([0]),
             "relevant_cols": torch.tensor([2])}
    out = RankingEvaluator(ks=[1, 5], sampled_negatives=4).evaluate_scores(scores.clone(), batch)
    # candidates are all 5 items: item 2 is third
    assert out["sampled4_mrr_at_5"].item() == pytest.approx(1 / 3)
    assert out["sampled4_hr_at_1"].item() == 0.0
    assert out["mrr_at_5"].item() == pytest.approx(1 / 3)


def test_enough_negatives_reproduce_full_ranking_and_k_beyond_candidates():
    gen = torch.Generator().manual_seed(1)
    n_users, n_items = 12, 30
    scores = torch.randint(0, 5, (n_users, n_items), generator=gen).float()
    seen = torch.rand(n_users, n_items, generator=gen) < 0.3
    relevant = (torch.rand(n_users, n_items, generator=gen) < 0.2) & ~seen
    relevant[2] = False
    ex_r, ex_c = seen.nonzero(as_tuple=True)
    rel_r, rel_c = relevant.nonzero(as_tuple=True)
    batch = {"users": torch.arange(n_users), "exclude_rows": ex_r, "exclude_cols": ex_c,
             "relevant_rows": rel_r, "relevant_cols": rel_c}
    out = RankingEvaluator(ks=[3, 10, 40], sampled_negatives=n_items).evaluate_scores(scores.clone(), batch)
    for name, value in out.items():
        if name.startswith("sampled30_"):
            full = out[name.removeprefix("sampled30_")]
            torch.testing.assert_close(value, full, equal_nan=True, msg=name)
    # few negatives: K = 40 is beyond the candidate set, precision still divides by K
    small = RankingEvaluator(ks=[40], sampled_negatives=2).evaluate_scores(scores.clone(), batch)
    n_rel = relevant.sum(1).float()
    has = n_rel > 0
    torch.testing.assert_close(small["sampled2_precision_at_40"][has], n_rel[has] / 40)
    assert small["sampled2_recall_at_40"][has].eq(1).all() and small["sampled2_hr_at_40"][2].isnan()


def test_evaluator_ranks_against_exactly_the_fixed_negatives():
    # A model that scores the fixed negatives above the relevant item (and every other item below it) puts the
    # relevant item at rank N + 1 among the candidates, however high it ranks in full ranking.
    n_items, n_neg = 100, 10
    pop = torch.arange(n_items).float()
    batch = {"users": torch.tensor([3, 8]), "exclude_rows": torch.tensor([0, 1]), "exclude_cols": torch.tensor([5, 6]),
             "relevant_rows": torch.tensor([0, 1]), "relevant_cols": torch.tensor([1, 2])}
    negatives, _ = sample_negatives(batch["users"], n_items, n_neg, torch.tensor([0, 1, 0, 1]),
                                    torch.tensor([5, 6, 1, 2]), seed=0, weights=pop)
    scores = torch.zeros(2, n_items)
    scores.scatter_(1, negatives, 2.0)
    scores[0, 1] = scores[1, 2] = 1.0
    ev = RankingEvaluator(ks=[n_neg, n_neg + 1], sampled_negatives=n_neg, sampled_strategy="popularity",
                          item_popularity=pop)
    out = ev.evaluate_scores(scores, batch)
    assert out[f"popsampled10_hr_at_{n_neg}"].tolist() == [0.0, 0.0]
    assert out[f"popsampled10_mrr_at_{n_neg + 1}"].tolist() == pytest.approx([1 / (n_neg + 1)] * 2)
    assert out[f"hr_at_{n_neg + 1}"].tolist() == [1.0, 1.0]  # full ranking: rank 11 of 100


def test_validation_negatives_are_never_the_users_test_items():
    # 6 items; user 0 relevant {4} (validation), seen {0}, its test items {1, 2, 3} score above 4: drawn as negatives
    # they would outrank it. Blocked as later items, only item 5 is left, so the relevant item ranks first.
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 4.0, 3.0]])
    batch = {"users": torch.tensor([10]), "exclude_rows": torch.tensor([0]), "exclude_cols": torch.tensor([0]),
             "relevant_rows": torch.tensor([0]), "relevant_cols": torch.tensor([4])}
    ev = RankingEvaluator(ks=[1], sampled_negatives=2, sampled_seed=5)
    assert ev.evaluate_scores(scores.clone(), batch)["sampled2_hr_at_1"].item() == 0.0  # two of {1, 2, 3, 5}
    later = {"later_rows": torch.tensor([0, 0, 0]), "later_cols": torch.tensor([1, 2, 3])}
    assert ev.evaluate_scores(scores.clone(), {**batch, **later})["sampled2_hr_at_1"].item() == 1.0


def test_validation_batches_carry_their_users_test_items(tmp_path):
    from recforge.data.datamodule import RecDataModule
    from recforge.data.sources.synthetic import SyntheticSource
    from recforge.data.split import LeaveOneOutSplit

    dm = RecDataModule(SyntheticSource(n_users=40, n_items=30, mean_interactions=8, seed=1), LeaveOneOutSplit(),
                       cache=False)
    dm.setup()
    later = set()
    for batch in dm.val_dataloader():
        users = batch["users"]
        later |= set(zip(users[batch["later_rows"]].tolist(), batch["later_cols"].tolist()))
    test = dm.split.test
    assert later == set(zip(test["user"].tolist(), test["item"].tolist())) and later
    assert not any("later_rows" in batch for batch in dm.test_dataloader())
