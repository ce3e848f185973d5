"""The chunked evaluator: hand-computed chunks, chunk/batch independence, the block top-K, rating errors and a
property test of masking + chunking + metrics against a slow per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data.batches import chunk_batches
from recforge.metrics.evaluator import RankingEvaluator, rating_batch_errors
from recforge.metrics.ranking import _topk_by_blocks, topk_items
from tests.unit.test_metrics_ranking import _reference

NAMES = ("precision", "recall", "trecall", "ndcg", "gndcg", "hr", "mrr", "map", "f1")


def _batch(users, excluded, relevant, gains=None):
    """A batch dict from global users, and (row, item) pairs local to the chunk."""
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    batch = {"users": t(users), "exclude_rows": t([r for r, _ in excluded]), "exclude_cols": t([c for _, c in excluded]),
             "relevant_rows": t([r for r, _ in relevant]), "relevant_cols": t([c for _, c in relevant])}
    if gains is not None:
        batch["relevant_gains"] = torch.tensor(gains, dtype=torch.float32)
    return batch


def _table_scorer(table: torch.Tensor):
    return lambda users: table[users].clone()


def test_hand_computed_chunk():
    # user 0: items 0..4 scored [.9, .8, .7, .6, .5], item 0 seen, relevant {2, 4}
    #   ranking (seen masked): 1, 2, 3, 4 -> hits at ranks 2 and 4
    # user 1: all scores equal, relevant {0}; item 0 seen -> relevant item masked, no hit possible
    # user 2: no relevant item -> NaN, dropped from the averages
    table = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [1.0] * 5, [0.1, 0.2, 0.3, 0.4, 0.5]])
    ev = RankingEvaluator(ks=[2, 4])
    out = ev.evaluate(_table_scorer(table), _batch([0, 1, 2], [(0, 0), (1, 0)], [(0, 2), (0, 4), (1, 0)]))
    assert out["topk"][0].tolist() == [1, 2, 3, 4]
    assert out["topk"][1].tolist() == [1, 2, 3, 4]  # ties: lower index first
    assert out["ndcg_at_2"][0].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out["ndcg_at_4"][0].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert out["precision_at_4"][0].item() == pytest.approx(0.5)
    assert out["mrr_at_4"][0].item() == pytest.approx(0.5)
    assert out["map_at_4"][0].item() == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["recall_at_4"][1].item() == 0.0 and out["hr_at_4"][1].item() == 0.0
    assert out["ndcg_at_2"][2].isnan()
    metrics, per_user = ev.aggregate([out])
    assert metrics["recall_at_2"].item() == pytest.approx((0.5 + 0.0) / 2)  # user 2 dropped
    assert metrics["hr_at_4"].item() == pytest.approx(0.5)
    assert per_user["users"].tolist() == [0, 1, 2]
    assert "coverage_at_2" not in metrics  # needs item popularity


def test_candidate_order_ranks_tied_candidates_in_its_order_not_by_item_index():
    """The cold-item protocol ranks held-out items only, in a shuffled order: a model that scores them all alike
    (popularity: all count 0) gets that order, not the item index (which follows the raw ids and their signal).
    Different scores still rank first; the list is padded with no recommendation when the candidates run out."""
    # 6 items, candidates {1, 3, 4, 5} in the order 5, 1, 4, 3; item 3 scores higher, the rest tie
    table = torch.tensor([[0.0, 0.0, 0.0, 0.7, 0.0, 0.0], [0.0] * 6])
    mask = torch.tensor([False, True, False, True, True, True])
    batch = {**_batch([0, 1], [(1, 5)], [(0, 4), (1, 1)]), "candidate_items": mask,
             "candidate_order": torch.tensor([5, 1, 4, 3])}
    ev = RankingEvaluator(ks=[2, 5])
    out = ev.evaluate(_table_scorer(table), batch)
    assert out["topk"][0, :4].tolist() == [3, 5, 1, 4] and out["valid"][0].tolist() == [True] * 4 + [False]
    assert out["topk"][1, :3].tolist() == [1, 4, 3] and out["valid"][1].tolist() == [True] * 3 + [False] * 2
    assert out["ndcg_at_5"][0].item() == pytest.approx(1 / math.log2(5))   # item 4 fourth
    assert out["hr_at_2"][1].item() == 1.0 and out["mrr_at_5"][1].item() == 1.0   # item 1 first (5 is seen)
    indexed = ev.evaluate(_table_scorer(table), {k: v for k, v in batch.items() if k != "candidate_order"})
    assert indexed["topk"][0, :4].tolist() == [3, 1, 4, 5]   # without an order: lower index first


def test_beyond_accuracy_and_graded_gains():
    table = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    ev = RankingEvaluator(ks=[1, 2], item_popularity=torch.tensor([4.0, 3.0, 2.0, 1.0]), n_train_users=4)
    out = ev.evaluate(_table_scorer(table), _batch([0, 1], [], [(0, 1), (0, 0), (1, 0)], gains=[5.0, 1.0, 2.0]))
    # user 0: top-2 = [0, 1], gains [1, 5]; ideal [5, 1]
    d2 = 1 / math.log2(3)
    assert out["gndcg_at_2"][0].item() == pytest.approx((1 + 5 * d2) / (5 + d2))
    assert out["ndcg_at_2"][0].item() == pytest.approx(1.0)
    metrics, _ = ev.aggregate([out])
    assert metrics["coverage_at_1"].item() == pytest.approx(2 / 4)  # items 0 and 3
    assert metrics["avgpop_at_1"].item() == pytest.approx((4 + 1) / 2)
    assert metrics["novelty_at_1"].item() == pytest.approx((-math.log2(4 / 4) - math.log2(1 / 4)) / 2)


def test_results_do_not_depend_on_chunks_or_user_order_within_chunks():
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 37, 50
    table = torch.randint(0, 4, (n_users, n_items), generator=gen).float()  # ties
    seen = torch.rand(n_users, n_items, generator=gen) < 0.3
    relevant = (torch.rand(n_users, n_items, generator=gen) < 0.1) & ~seen
    relevant[5] = False
    seen[9, 2:] = True  # fewer candidates than K
    ptr = lambda m: np.concatenate(([0], np.cumsum(m.sum(1).numpy())))  # noqa: E731
    idx = lambda m: m.nonzero()[:, 1].numpy()  # noqa: E731
    gains = np.arange(int(relevant.sum()), dtype=np.float32) % 3 + 1
    ev = RankingEvaluator(ks=[1, 5, 20, 60], item_popularity=torch.arange(n_items).float(), n_train_users=n_users,
                          sampled_negatives=7, sampled_strategy="popularity")
    runs = []
    for budget in (n_items * n_users * 2, n_items * 5, n_items, 1):
        batches = chunk_batches(ptr(seen), idx(seen), ptr(relevant), idx(relevant), gains, n_items, budget)
        runs.append(ev.run(_table_scorer(table), batches))
    assert len(chunk_batches(ptr(seen), idx(seen), ptr(relevant), idx(relevant), gains, n_items, n_items * 5)) > 1
    metrics, per_user = runs[0]
    assert "popsampled7_ndcg_at_5" in metrics and 5 not in per_user["users"].tolist()
    for other_metrics, other_users in runs[1:]:
        assert other_metrics.keys() == metrics.keys()
        for name in metrics:
            assert torch.equal(other_metrics[name], metrics[name]), name
        for name in per_user:
            torch.testing.assert_close(other_users[name], per_user[name], rtol=0, atol=0, equal_nan=True)


def test_held_out_items_with_negative_gains_are_hits():
    """A held-out item is relevant whatever its stored rating's sign (symmetric normalisation gives negative
    ones): ranked first, it is a hit for every binary metric, as it counts in their denominators."""
    table = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    ev = RankingEvaluator(ks=[1])
    out = ev.evaluate(_table_scorer(table), _batch([0, 1], [], [(0, 0), (1, 3)], gains=[-1.0, 0.5]))
    for name in ("hr", "recall", "ndcg", "mrr", "precision", "map"):
        assert out[f"{name}_at_1"].tolist() == [1.0, 1.0], name
    with pytest.raises(ValueError, match="zero gain"):
        ev.evaluate(_table_scorer(table), _batch([0, 1], [], [(0, 0), (1, 3)], gains=[0.0, 0.5]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_model_gets_nan_metrics_not_near_zero_ones(bad, caplog):
    """NaN or +inf among a user's unmasked scores makes every metric of the evaluation NaN (so early stopping's
    finiteness check ends a diverged run), with a warning; the same value on a masked item changes nothing."""
    table = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
    ev = RankingEvaluator(ks=[1, 2], item_popularity=torch.tensor([4.0, 3.0, 2.0, 1.0]), n_train_users=4)
    batch = _batch([0, 1, 2], [(1, 0)], [(0, 0), (1, 3), (2, 0)])
    healthy, _ = ev.aggregate([ev.evaluate(_table_scorer(table), batch)])
    masked = table.clone()
    masked[1, 0] = bad   # an item user 1 has seen: masked before ranking
    assert ev.aggregate([ev.evaluate(_table_scorer(masked), batch)])[0] == healthy
    broken = table.clone()
    broken[1, 2] = bad
    with caplog.at_level("WARNING", logger="recforge.metrics.evaluator"):
        metrics, per_user = ev.aggregate([ev.evaluate(_table_scorer(broken), batch)])
    assert metrics.keys() == healthy.keys() and all(value.isnan() for value in metrics.values())
    assert per_user["broken"].tolist() == [False, True, False]
    assert per_user["ndcg_at_1"].isnan().all()   # the per-user results, which significance tests read, too
    assert "1 of 3 users have NaN or +inf scores" in caplog.text


def test_evaluator_copies_broadcast_scores_instead_of_writing_into_them():
    shared = torch.ones(1, 6)  # e.g. a popularity row expanded to every user
    ev = RankingEvaluator(ks=[2])
    ev.evaluate(lambda users: shared.expand(len(users), -1), _batch([0, 1], [(0, 0)], [(0, 1)]))
    assert torch.equal(shared, torch.ones(1, 6))


def test_evaluator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ks"):
        RankingEvaluator(ks=[0])
    with pytest.raises(ValueError, match="strategy"):
        RankingEvaluator(ks=[1], sampled_negatives=5, sampled_strategy="zipf")
    with pytest.raises(ValueError, match="item_popularity"):
        RankingEvaluator(ks=[1], sampled_negatives=5, sampled_strategy="popularity")
    with pytest.raises(ValueError, match="shape"):
        RankingEvaluator(ks=[1]).evaluate_scores(torch.zeros(3, 4), _batch([0, 1], [], []))


def test_rating_errors_inverse_then_clip():
    # normalised scale: rating = 2 * x + 3; predictions 0.5 -> 4, 2 -> 7 (clipped to 5), -3 -> -3 (clipped to 1)
    inverse = lambda x: 2 * x + 3  # noqa: E731
    errors = rating_batch_errors(torch.tensor([0.5, 2.0, -3.0]), torch.tensor([0.0, 1.0, -1.0]), (1.0, 5.0), inverse)
    assert errors.tolist() == pytest.approx([4 - 3, 5 - 5, 1 - 1])
    assert rating_batch_errors(torch.tensor([6]), torch.tensor([5]), None).tolist() == [1.0]


# ----------------------------------------------------------------------------- block top-K


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(1, 200), st.integers(1, 12), st.sampled_from([1, 2, 3, 8]),
       st.integers(0, 3), st.integers(0, 2**31))
def test_block_topk_equals_stable_sort(n_rows, n_items, k, group, levels, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randint(0, levels + 1, (n_rows, n_items), generator=gen).float() if levels
              else torch.randn(n_rows, n_items, generator=gen))
    scores[torch.rand(n_rows, n_items, generator=gen) < 0.3] = float("-inf")
    k = min(k, n_items)
    if n_items // group < k:
        return
    values, indices = _topk_by_blocks(scores, k, group)
    ref_values, ref_indices = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(indices, ref_indices[:, :k]) and torch.equal(values, ref_values[:, :k])


def test_topk_items_uses_blocks_on_long_rows_with_identical_results():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 50, (64, 20000), generator=gen).float()  # boundary ties in many rows
    scores[0] = float("-inf")
    scores[1, 5:] = float("-inf")
    values, indices = topk_items(scores, 20)
    ref_values, ref_indices = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(indices, ref_indices[:, :20]) and torch.equal(values, ref_values[:, :20])


# ----------------------------------------------------------------------------- property test vs reference


@st.composite
def _problems(draw):
    n_users = draw(st.integers(1, 6))
    large = draw(st.booleans())  # large catalogues with k <= 2 go through the block top-K
    n_items = draw(st.integers(130, 260) if large else st.integers(1, 8))
    if draw(st.booleans()):
        score = st.integers(0, 2).map(float)  # ties everywhere
    else:
        score = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    scores = draw(st.lists(st.lists(score, min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users))
    cells = st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1))
    excluded = draw(st.sets(cells, max_size=min(3 * n_items, 40)))
    relevant = draw(st.dictionaries(cells, st.integers(1, 4), max_size=12))
    ks = draw(st.lists(st.integers(1, 2) if large else st.integers(1, n_items + 3), min_size=1, max_size=3,
                       unique=True))
    chunk = draw(st.integers(1, n_users))
    user_ids = draw(st.permutations(range(100, 100 + n_users)))
    return scores, excluded, relevant, ks, chunk, user_ids


@settings(max_examples=80, deadline=None)
@given(_problems())
def test_evaluator_matches_per_user_reference(problem):
    scores, excluded, relevant, ks, chunk, user_ids = problem
    n_users, n_items = len(scores), len(scores[0])
    table = torch.zeros(200, n_items)
    table[torch.tensor(user_ids)] = torch.tensor(scores, dtype=torch.float32)
    ev = RankingEvaluator(ks=ks)
    batches = []
    for lo in range(0, n_users, chunk):
        rows = range(lo, min(lo + chunk, n_users))
        ex = sorted((r - lo, c) for r, c in excluded if r in rows)
        rel = sorted((r - lo, c) for r, c in relevant if r in rows)
        batches.append(_batch([user_ids[r] for r in rows], ex, rel, [float(relevant[(r + lo, c)]) for r, c in rel]))
    metrics, per_user = ev.run(_table_scorer(table), batches)
    assert per_user["users"].tolist() == list(user_ids)
    for k in ks:
        expected_per_user = {name: [] for name in NAMES}
        for user in range(n_users):
            user_excluded = {c for r, c in excluded if r == user}
            user_gains = {c: g for (r, c), g in relevant.items() if r == user}
            ranking, expected = _reference(scores[user], user_excluded, user_gains, k)
            top = per_user["topk"][user, : min(k, n_items)]
            valid = per_user["valid"][user, : min(k, n_items)]
            assert top[valid].tolist() == ranking
            for name in NAMES:
                got = per_user[f"{name}_at_{k}"][user].item()
                if expected is None:
                    assert math.isnan(got)
                else:
                    assert got == pytest.approx(expected[name], rel=1e-5, abs=1e-6), (name, k, user)
                    expected_per_user[name].append(expected[name])
        for name in NAMES:
            values = expected_per_user[name]
            got = metrics[f"{name}_at_{k}"].item()
            if values:
                assert got == pytest.approx(sum(values) / len(values), rel=1e-5, abs=1e-6)
            else:
                assert math.isnan(got)
