"""Beyond-accuracy list metrics and slices against hand-computed values, and their place in the chunked evaluator
(same results whatever the chunking)."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.metrics.beyond import (ListContext, history_distribution, item_slice_metrics, list_metrics,
                                     popularity_groups, popularity_positions, slice_aggregates, slice_labels,
                                     unit_rows, user_slices)
from recforge.metrics.evaluator import RankingEvaluator
from recforge.metrics.ranking import beyond_accuracy, relevance_matrix

t = torch.tensor


def test_popularity_groups_by_share_of_interactions():
    # shares held by the items above each: 0, .5, .8, .9, .95, .98, 1.0 (item 6 never seen: tail)
    pop = t([30.0, 50.0, 10.0, 5.0, 3.0, 2.0, 0.0])
    assert popularity_groups(pop).tolist() == [1, 0, 2, 2, 2, 2, 2]
    assert popularity_groups(pop, (0.5, 0.95)).tolist() == [1, 0, 1, 1, 2, 2, 2]  # a share at a cut is above it
    assert popularity_positions(t([2.0, 5.0, 2.0, 9.0])).tolist() == [2, 1, 3, 0]  # ties: lower index first
    with pytest.raises(ValueError, match="two increasing"):
        popularity_groups(pop, (0.8, 0.2))


def test_user_slices_by_activity_and_popularity_profile():
    # user 0: 1 item, 1: 2 items, 2: 3 items, 3: 4 items, 4: none
    users = t([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    items = t([0, 0, 1, 1, 2, 3, 0, 1, 2, 3])
    pop = t([10.0, 8.0, 2.0, 1.0])
    slices = user_slices(users, items, 5, pop, activity_cuts=[1, 2, 3], profile_quantiles=(0.2, 0.8))
    names, activity = slices["activity"]
    assert [names[c] for c in activity.tolist()] == ["cold", "light", "medium", "heavy", "cold"]
    # mean history popularity: 10, 9, 11/3, 21/4; quantiles 20% / 80% of those: 4.62, 9.4
    names, profile = slices["profile"]
    assert profile.tolist() == [2, 1, 0, 1, -1]
    quartiles = user_slices(users, items, 5, pop)["activity"][1]  # lengths 1..4: cuts 1.75, 2.5, 3.25
    assert quartiles.tolist() == [0, 1, 2, 3, 0]
    context = ListContext(pop, popularity_groups(pop), slices)
    assert slice_labels(context, t([3, 4])) == {"slice_activity": ["heavy", "cold"], "slice_profile": ["diverse", ""]}
    with pytest.raises(ValueError, match="3 increasing cut points"):
        user_slices(users, items, 5, pop, activity_cuts=[1, 2])


def test_history_distribution_is_each_users_mean_item_row():
    # user 0 saw items 0 (genres a, b) and 1 (genre b); user 1 saw item 2 (no genre); user 2 nothing
    categories = t([[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]])
    users, items = t([0, 0, 1]), t([0, 1, 2])
    assert history_distribution(users, categories[items], 3).tolist() == [[0.25, 0.75], [0.0, 0.0], [0.0, 0.0]]
    one_hot = torch.nn.functional.one_hot(t([0, 2, 2]), 3)  # head/mid/tail shares of the same histories
    assert history_distribution(users, one_hot, 3).tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def _context(**extra) -> ListContext:
    pop = t([16.0, 4.0, 1.0, 0.0])  # shares before: 0, .76, .95, 1: head item 0, mid item 1, tail items 2 and 3
    return ListContext(pop, popularity_groups(pop), **extra)


def _metrics(context, topk, relevant, excluded=(), ks=(1, 2, 3), valid=None):
    topk = t(topk)
    valid = torch.ones_like(topk, dtype=torch.bool) if valid is None else t(valid)
    rel_rows, rel_cols = t([r for r, _ in relevant]), t([c for _, c in relevant])
    ex_rows, ex_cols = t([r for r, _ in excluded], dtype=torch.long), t([c for _, c in excluded], dtype=torch.long)
    hits, _, _ = relevance_matrix(len(topk), topk, rel_rows, rel_cols, valid=valid)
    return list_metrics(context, torch.arange(len(topk)), topk, valid, hits, rel_rows, rel_cols, ex_rows, ex_cols, ks)


def test_intra_list_diversity_hand_computed():
    vectors = unit_rows(t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    out = _metrics(_context(item_vectors=vectors), [[0, 1, 2], [2, 3, 0]], [(0, 0)], valid=[[1, 1, 1], [1, 1, 0]])
    far = 1 - 1 / math.sqrt(2)  # cosine distance between an axis and the diagonal
    assert out["ild_at_1"][0].isnan()  # one item: no pair
    assert out["ild_at_2"][0].item() == pytest.approx(1.0)
    assert out["ild_at_3"][0].item() == pytest.approx((1 + 2 * far) / 3)
    assert out["ild_at_3"][1].item() == pytest.approx(1.0)  # item 3 has no features: unlike any; item 0 invalid


def test_miscalibration_is_steck_kl_with_alpha_mixing():
    categories = t([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 0.0]])
    profiles = t([[0.75, 0.25], [0.0, 0.0]])
    out = _metrics(_context(item_categories=categories, user_categories=profiles, calibration_alpha=0.01),
                   [[0, 1, 3], [0, 1, 2]], [(0, 0)])
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    mixed = 0.99 * torch.tensor([1.0, 0.0], dtype=torch.float64) + 0.01 * p
    assert out["miscalibration_at_1"][0].item() == pytest.approx(float((p * (p / mixed).log()).sum()), rel=1e-5)
    assert out["miscalibration_at_2"][0].item() == pytest.approx(0.0, abs=1e-6)  # (1, 0) + (.5, .5) = .75 / .25
    assert out["miscalibration_at_3"][0].item() == pytest.approx(0.0, abs=1e-6)  # item 3 has no category
    assert out["miscalibration_at_2"][1].isnan()  # a history without categories


def test_long_tail_share_popularity_stratified_recall_and_serendipity():
    out = _metrics(_context(psrecall_gamma=0.5), [[2, 1, 0], [0, 1, 3]], [(0, 0), (0, 1), (0, 2), (1, 3)],
                   excluded=[(1, 2)], valid=[[1, 1, 1], [1, 1, 1]])
    assert out["aplt_at_1"].tolist() == [1.0, 0.0]
    assert out["aplt_at_3"].tolist() == pytest.approx([1 / 3, 1 / 3])
    # user 0: relevant 0, 1, 2 weigh 16^-.5, 4^-.5, 1 (= .25, .5, 1); the top 1 holds item 2
    assert out["psrecall_at_1"][0].item() == pytest.approx(1 / 1.75)
    assert out["psrecall_at_2"][0].item() == pytest.approx(1.5 / 1.75)
    # user 1: the popularity baseline's list is 0, 1, 3 (item 2 excluded), so its hit on item 3 (baseline rank 2) is
    # unexpected only at k <= 2; user 0's baseline is 0, 1, 2: item 2 (rank 2) is unexpected at k <= 2
    assert out["serendipity_at_1"][0].item() == pytest.approx(1.0)
    assert out["serendipity_at_2"][0].item() == pytest.approx(0.5)
    assert out["serendipity_at_3"].tolist() == [0.0, 0.0]
    assert out["serendipity_at_2"][1].item() == 0.0  # its hit is at rank 3


def test_exposure_gini_weighs_positions_by_the_ndcg_discount():
    out = beyond_accuracy(t([[0, 1], [0, 2]]), torch.ones(2, 2, dtype=torch.bool), t([3.0, 2.0, 1.0, 0.0]), 4, [2])
    exposure = sorted([2.0, 1 / math.log2(3), 1 / math.log2(3), 0.0])
    n = 4
    gini = sum((2 * (i + 1) - n - 1) * x for i, x in enumerate(exposure)) / (n * sum(exposure))
    assert out["expgini_at_2"] == pytest.approx(gini)
    counts = [0.0, 1.0, 1.0, 2.0]
    assert out["gini_at_2"] == pytest.approx(sum((2 * (i + 1) - n - 1) * x for i, x in enumerate(counts)) / (n * 4))


def test_item_slices_count_only_the_groups_relevant_items():
    context = _context()
    topk = t([[2, 1, 0]])
    out = item_slice_metrics(context, 1, topk, torch.ones(1, 3, dtype=torch.bool), t([0, 0]), t([2, 0]), None, [1, 3])
    assert out["recall_at_1/items_tail"].item() == 1.0 and out["recall_at_1/items_head"].item() == 0.0
    assert out["ndcg_at_3/items_head"].item() == pytest.approx(1 / math.log2(4))  # its one head item at rank 3
    assert out["recall_at_3/items_mid"].isnan()  # no relevant mid item


def test_slice_aggregates_average_each_users_metric_within_its_slice():
    pop = t([3.0, 2.0, 1.0])
    groups = {"activity": (("cold", "light", "medium", "heavy"), t([0, 0, 3, 1]))}
    context = ListContext(pop, popularity_groups(pop), groups)
    results = {"users": t([0, 1, 2, 3]), "topk": t([[0], [1], [2], [0]]), "valid": torch.ones(4, 1, dtype=torch.bool),
               "ndcg_at_1": t([1.0, 0.0, float("nan"), 0.5])}
    out = slice_aggregates(context, results, ["ndcg_at_1"], [1], 3)
    assert out["ndcg_at_1/users_cold"] == pytest.approx(0.5)
    assert out["ndcg_at_1/users_heavy"] != out["ndcg_at_1/users_heavy"]  # its one user has no relevant item: NaN
    assert out["ndcg_at_1/users_light"] == 0.5
    assert out["coverage_at_1/users_cold"] == pytest.approx(2 / 3)
    assert math.isnan(out["ndcg_at_1/users_medium"]) and "coverage_at_1/users_medium" not in out


def _problem(seed: int = 0, n_users: int = 30, n_items: int = 40):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 5, (n_users, n_items), generator=gen).float()  # ties
    seen = torch.rand(n_users, n_items, generator=gen) < 0.3
    relevant = (torch.rand(n_users, n_items, generator=gen) < 0.15) & ~seen
    pop = seen.sum(0).float()
    users, items = seen.nonzero(as_tuple=True)
    categories = (torch.rand(n_items, 4, generator=gen) < 0.4).float()
    categories = categories / categories.sum(1, keepdim=True).clamp(min=1)
    context = ListContext(pop, popularity_groups(pop), user_slices(users, items, n_users, pop),
                          unit_rows(torch.randn(n_items, 3, generator=gen)), categories,
                          history_distribution(users, categories[items], n_users))
    return table, seen, relevant, context


def _batches(seen, relevant, chunk):
    for start in range(0, len(seen), chunk):
        s, r = seen[start:start + chunk], relevant[start:start + chunk]
        (er, ec), (rr, rc) = s.nonzero(as_tuple=True), r.nonzero(as_tuple=True)
        yield {"users": torch.arange(start, start + len(s)), "exclude_rows": er, "exclude_cols": ec,
               "relevant_rows": rr, "relevant_cols": rc}


def test_evaluator_adds_list_metrics_and_slices_independent_of_chunking():
    table, seen, relevant, context = _problem()
    evaluator = RankingEvaluator([5, 10], context.item_popularity, 30, beyond=context)
    results = []
    for chunk in (30, 7, 1):
        metrics, _ = evaluator.run(lambda users: table[users].clone(), _batches(seen, relevant, chunk))
        results.append(metrics)
    assert {"ild_at_5", "miscalibration_at_10", "aplt_at_5", "psrecall_at_10", "serendipity_at_5",
            "ndcg_at_10/users_cold", "ndcg_at_10/users_blockbuster", "recall_at_5/items_tail",
            "coverage_at_10/users_heavy", "ild_at_10/users_niche"} <= set(results[0])
    for other in results[1:]:
        assert set(other) == set(results[0])
        for key, value in results[0].items():
            assert torch.allclose(other[key], value, equal_nan=True, atol=1e-6), key
    plain, _ = RankingEvaluator([5, 10], context.item_popularity, 30).run(lambda users: table[users].clone(),
                                                                           _batches(seen, relevant, 7))
    for key, value in plain.items():  # the list metrics add to the ranking metrics and change none of them
        assert torch.allclose(results[0][key], value, equal_nan=True), key
    # a user slice's mean is the mean over its users of the per-user values
    _, per_user = evaluator.run(lambda users: table[users].clone(), _batches(seen, relevant, 30))
    cold = context.user_groups["activity"][1][per_user["users"]] == 0
    assert results[0]["ndcg_at_10/users_cold"].item() == pytest.approx(
        float(per_user["ndcg_at_10"][cold].double().nanmean()))
