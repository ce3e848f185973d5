"""Ranking metrics: hand-computed examples, edge cases, chunk independence and a property test against a
slow per-user reference written from the textbook definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.metrics import beyond_accuracy, mask_scores_, ranking_metrics, relevance_matrix, topk_items

NAN = float("nan")
L2, L3, L4, L5 = math.log2(2), math.log2(3), math.log2(4), math.log2(5)  # 1, 1.585, 2, 2.3219


def _t(x: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _assert_metric(out: dict[str, torch.Tensor], name: str, expected: list[float]) -> None:
    got = out[name].tolist()
    assert len(got) == len(expected), name
    for user, (g, e) in enumerate(zip(got, expected)):
        if math.isnan(e):
            assert math.isnan(g), f"{name}[{user}] = {g}, expected NaN"
        else:
            assert g == pytest.approx(e, rel=1e-6, abs=1e-7), f"{name}[{user}] = {g}, expected {e}"


def _pipeline(scores, excl_rows, excl_cols, rel_rows, rel_cols, ks, rel_gain=None):
    scores = mask_scores_(scores.clone(), excl_rows, excl_cols)
    values, indices = topk_items(scores, max(ks))
    valid = torch.isfinite(values)
    hits, n_rel, ideal = relevance_matrix(scores.shape[0], indices, rel_rows, rel_cols, rel_gain, valid)
    return indices, ranking_metrics(hits, n_rel, ks, ideal if rel_gain is not None else None)


# --------------------------------------------------------------------------------------------- topk_items


def test_topk_boundary_tie_takes_lower_indices():
    scores = _t([[1.0, 2.0, 2.0, 2.0, 0.0]], torch.float32)
    # three items tie at 2.0 for two places: items 1 and 2 get in, item 3 does not.
    assert topk_items(scores, 2)[1].tolist() == [[1, 2]]
    assert topk_items(scores, 1)[1].tolist() == [[1]]
    # k=4: the three 2.0s by index, then item 0 (1.0)
    values, indices = topk_items(scores, 4)
    assert indices.tolist() == [[1, 2, 3, 0]]
    assert values.tolist() == [[2.0, 2.0, 2.0, 1.0]]


def test_topk_ties_inside_the_list_are_ordered_by_index():
    # no boundary tie (3 > 1), but items 0 and 2 tie inside the list; topk itself may return them as [2, 0]
    scores = _t([[5.0, 3.0, 5.0, 1.0], [0.0, 7.0, 0.0, 7.0]], torch.float32)
    assert topk_items(scores, 3)[1].tolist() == [[0, 2, 1], [1, 3, 0]]


def test_topk_all_equal_scores():
    scores = torch.zeros(3, 6)
    assert topk_items(scores, 4)[1].tolist() == [[0, 1, 2, 3]] * 3
    scores[1, 5] = 1.0  # one better item jumps to the front, the rest stay in index order
    assert topk_items(scores, 4)[1].tolist()[1] == [5, 0, 1, 2]


def test_topk_negative_zero_ties_with_zero():
    scores = _t([[0.0, -0.0, 0.0, -1.0]], torch.float32)
    assert topk_items(scores, 2)[1].tolist() == [[0, 1]]
    scores = _t([[-0.0, 0.0, 0.0, -1.0]], torch.float32)
    assert topk_items(scores, 2)[1].tolist() == [[0, 1]]


def test_topk_k_larger_than_catalogue_and_masked_items():
    scores = _t([[0.5, 0.9, 0.1, 0.3]], torch.float32)
    mask_scores_(scores, _t([0, 0]), _t([1, 2]))
    values, indices = topk_items(scores, 6)
    assert indices.shape == (1, 4)  # k' = min(6, 4)
    assert indices.tolist() == [[0, 3, 1, 2]]  # masked -inf items last, in index order
    assert values[0, :2].tolist() == [0.5, pytest.approx(0.3)]
    assert torch.isinf(values[0, 2:]).all()
    # fewer finite scores than k with k < n_items: the -inf tail is a boundary tie, still index ordered
    assert topk_items(scores, 3)[1].tolist() == [[0, 3, 1]]


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError):
        topk_items(torch.zeros(2, 3), 0)
    with pytest.raises(ValueError):
        topk_items(torch.zeros(3), 1)


def test_topk_empty_batch():
    values, indices = topk_items(torch.zeros(0, 5), 3)
    assert values.shape == indices.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_low_precision_matches_float32(dtype):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 40), generator=gen).float() / 2  # exactly representable, many ties
    values, indices = topk_items(scores.to(dtype), 7)
    ref_values, ref_indices = topk_items(scores, 7)
    assert values.dtype == dtype
    assert torch.equal(indices, ref_indices)
    assert torch.equal(values.float(), ref_values)


@pytest.mark.parametrize("low_range", [True, False])
def test_topk_matches_stable_sort_on_larger_input(low_range):
    gen = torch.Generator().manual_seed(1)
    if low_range:  # nearly every row has a boundary tie
        scores = torch.randint(0, 5, (64, 300), generator=gen).float()
    else:  # continuous scores with a few exact ties planted at the boundary: fast path for most rows
        scores = torch.randn(64, 300, generator=gen)
        scores[::4, 7] = scores[::4].sort(dim=1, descending=True).values[:, 9]
    mask_scores_(scores, torch.arange(64), torch.randint(0, 300, (64,), generator=gen))
    for k in (1, 10, 299, 300, 500):
        ref_values, ref_indices = torch.sort(scores, dim=1, descending=True, stable=True)
        values, indices = topk_items(scores, k)
        assert torch.equal(indices, ref_indices[:, :k])
        assert torch.equal(values, ref_values[:, :k])


# ------------------------------------------------------------------------------------ relevance_matrix


def test_relevance_matrix_binary_graded_and_valid():
    topk = _t([[3, 1, 0], [0, 2, 5], [4, 4, 4]])
    rows, cols = _t([0, 0, 1, 1, 1, 1]), _t([0, 3, 1, 2, 4, 5])
    hits, n_rel, ideal = relevance_matrix(3, topk, rows, cols)
    assert hits.dtype == torch.float32
    assert hits.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 0]]
    assert n_rel.tolist() == [2, 4, 0]
    assert ideal.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]

    gain = _t([3.0, 1.0, 1.0, 2.0, 5.0, 4.0], torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    hits, n_rel, ideal = relevance_matrix(3, topk, rows, cols, gain, valid)
    assert hits.dtype == torch.float64
    # row 0: item 3 -> 1, item 1 -> 0, item 0 -> 3; row 1: item 0 -> 0, item 2 -> 2, item 5 invalid -> 0
    assert hits.tolist() == [[1, 0, 3], [0, 2, 0], [0, 0, 0]]
    assert n_rel.tolist() == [2, 4, 0]
    assert ideal.tolist() == [[3, 1, 0], [5, 4, 2], [0, 0, 0]]  # row 1 gains {1,2,5,4} -> top-3 5,4,2


def test_relevance_matrix_duplicates_and_empty():
    topk = _t([[2, 0]])
    # pair (0, 2) listed twice: counted once, with its larger gain
    hits, n_rel, ideal = relevance_matrix(1, topk, _t([0, 0]), _t([2, 2]), _t([1.0, 4.0], torch.float32))
    assert (hits.tolist(), n_rel.tolist(), ideal.tolist()) == ([[4.0, 0.0]], [1], [[4.0, 0.0]])
    hits, n_rel, ideal = relevance_matrix(1, topk, _t([]), _t([]))
    assert (hits.tolist(), n_rel.tolist(), ideal.tolist()) == ([[0.0, 0.0]], [0], [[0.0, 0.0]])
    with pytest.raises(ValueError):
        relevance_matrix(1, topk, _t([1]), _t([0]))  # row outside the chunk


# ------------------------------------------------------------------------------------- ranking_metrics


def test_ranking_metrics_hand_computed():
    # user 0: relevant {0, 3}, top-3 [3, 1, 0] -> hits [1, 0, 1]
    # user 1: relevant {1, 2, 4, 5}, top-3 [0, 2, 5] -> hits [0, 1, 1]
    # user 2: no relevant items -> NaN everywhere
    # user 3: relevant {4}, top-3 [1, 2, 3] -> no hits
    topk = _t([[3, 1, 0], [0, 2, 5], [0, 1, 2], [1, 2, 3]])
    hits, n_rel, _ = relevance_matrix(4, topk, _t([0, 0, 1, 1, 1, 1, 3]), _t([0, 3, 1, 2, 4, 5, 4]))
    out = ranking_metrics(hits, n_rel, [1, 3])
    assert set(out) == {f"{m}_at_{k}" for m in ("precision", "recall", "trecall", "ndcg", "hr", "mrr", "map", "f1")
                        for k in (1, 3)}
    # @3
    _assert_metric(out, "precision_at_3", [2 / 3, 2 / 3, NAN, 0.0])
    _assert_metric(out, "recall_at_3", [2 / 2, 2 / 4, NAN, 0.0])
    _assert_metric(out, "trecall_at_3", [2 / min(3, 2), 2 / min(3, 4), NAN, 0.0])  # 1, 2/3
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG over min(3,2)=2 items = 1 + 1/log2(3) = 1.6309 -> 0.91972
    # user 1: DCG = 1/log2(3) + 1/log2(4) = 1.1309; IDCG over 3 items = 1 + 0.6309 + 0.5 = 2.1309 -> 0.53072
    _assert_metric(out, "ndcg_at_3", [(1 / L2 + 1 / L4) / (1 / L2 + 1 / L3),
                                      (1 / L3 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4), NAN, 0.0])
    assert out["ndcg_at_3"][0].item() == pytest.approx(0.919720, abs=1e-6)
    assert out["ndcg_at_3"][1].item() == pytest.approx(0.530721, abs=1e-6)
    _assert_metric(out, "hr_at_3", [1.0, 1.0, NAN, 0.0])
    _assert_metric(out, "mrr_at_3", [1.0, 1 / 2, NAN, 0.0])
    # MAP user 0: (P@1 + P@3) / min(3, 2) = (1 + 2/3) / 2 = 5/6; user 1: (P@2 + P@3) / 3 = (1/2 + 2/3) / 3 = 7/18
    _assert_metric(out, "map_at_3", [5 / 6, 7 / 18, NAN, 0.0])
    # F1 user 0: 2 * (2/3) * 1 / (2/3 + 1) = 0.8; user 1: 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    _assert_metric(out, "f1_at_3", [0.8, 4 / 7, NAN, 0.0])
    # @1: user 0 hits at rank 1, user 1 misses
    _assert_metric(out, "precision_at_1", [1.0, 0.0, NAN, 0.0])
    _assert_metric(out, "recall_at_1", [1 / 2, 0.0, NAN, 0.0])
    _assert_metric(out, "trecall_at_1", [1.0, 0.0, NAN, 0.0])  # 1 / min(1, 2): differs from recall
    _assert_metric(out, "ndcg_at_1", [1.0, 0.0, NAN, 0.0])
    _assert_metric(out, "hr_at_1", [1.0, 0.0, NAN, 0.0])
    _assert_metric(out, "mrr_at_1", [1.0, 0.0, NAN, 0.0])
    _assert_metric(out, "map_at_1", [1.0, 0.0, NAN, 0.0])
    _assert_metric(out, "f1_at_1", [2 * 1 * 0.5 / 1.5, 0.0, NAN, 0.0])  # 2/3


def test_graded_ndcg_hand_computed():
    # gains {0: 3, 3: 1, 5: 2}, top-3 [3, 5, 1] -> hit gains [1, 2, 0]
    # gDCG = 1/log2(2) + 2/log2(3) = 2.26186; ideal gains [3, 2, 1]: gIDCG = 3 + 2/log2(3) + 1/log2(4) = 4.76186
    # gNDCG@3 = 2.26186 / 4.76186 = 0.474995
    # binary NDCG: hits [1, 1, 0], 3 relevant: (1 + 1/log2 3) / (1 + 1/log2 3 + 1/log2 4) = 0.76537
    topk = _t([[3, 5, 1]])
    gain = _t([3.0, 1.0, 2.0], torch.float32)
    hits, n_rel, ideal = relevance_matrix(1, topk, _t([0, 0, 0]), _t([0, 3, 5]), gain)
    out = ranking_metrics(hits, n_rel, [2, 3], ideal)
    assert out["gndcg_at_3"].item() == pytest.approx((1 + 2 / L3) / (3 + 2 / L3 + 1 / L4), rel=1e-6)
    assert out["gndcg_at_3"].item() == pytest.approx(0.474995, abs=1e-6)
    # @2: gDCG = 1 + 2/log2 3 = 2.26186, gIDCG = 3 + 2/log2 3 = 4.26186 -> 0.53072 (gIDCG@3 adds 1/log2 4)
    assert out["gndcg_at_2"].item() == pytest.approx((1 + 2 / L3) / (3 + 2 / L3), rel=1e-6)
    assert out["ndcg_at_3"].item() == pytest.approx(0.765361, abs=1e-6)
    assert "gndcg_at_3" not in ranking_metrics(hits, n_rel, [3])


def test_masked_items_are_never_hits_and_k_beyond_catalogue():
    # 4 items, items 1 and 2 seen in training; relevant {2, 3}; k=5 > n_items
    # ranking: [0 (0.5), 3 (0.3), 1 (-inf), 2 (-inf)] -> item 2 is relevant but masked: not a hit
    scores = _t([[0.5, 0.9, 0.1, 0.3]], torch.float32)
    indices, out = _pipeline(scores, _t([0, 0]), _t([1, 2]), _t([0, 0]), _t([2, 3]), [5])
    assert indices.tolist() == [[0, 3, 1, 2]]
    _assert_metric(out, "precision_at_5", [1 / 5])  # divided by k, not by the list length
    _assert_metric(out, "recall_at_5", [1 / 2])
    _assert_metric(out, "trecall_at_5", [1 / 2])  # 1 / min(5, 2)
    _assert_metric(out, "ndcg_at_5", [(1 / L3) / (1 / L2 + 1 / L3)])  # 0.38685
    _assert_metric(out, "mrr_at_5", [1 / 2])
    _assert_metric(out, "map_at_5", [(1 / 2) / 2])


def test_all_equal_scores_pipeline():
    # every score 0: the list is items [0, 1, 2] for everybody
    # user 0 relevant {2}: hit at rank 3 -> ndcg 1/log2(4) = 0.5, mrr 1/3
    # user 1 relevant {5}: no hit
    scores = torch.zeros(2, 6)
    indices, out = _pipeline(scores, _t([]), _t([]), _t([0, 1]), _t([2, 5]), [3])
    assert indices.tolist() == [[0, 1, 2], [0, 1, 2]]
    _assert_metric(out, "ndcg_at_3", [0.5, 0.0])
    _assert_metric(out, "mrr_at_3", [1 / 3, 0.0])


def test_ranking_metrics_rejects_bad_ks():
    with pytest.raises(ValueError):
        ranking_metrics(torch.zeros(1, 3), _t([1]), [0])
    with pytest.raises(ValueError):
        ranking_metrics(torch.zeros(1, 3), _t([1]), [])


def test_chunk_independence():
    gen = torch.Generator().manual_seed(2)
    n_users, n_items, ks = 23, 40, [1, 5, 10, 50]
    scores = torch.randint(0, 3, (n_users, n_items), generator=gen).float()  # many ties
    scores[::2] += torch.rand(n_users // 2 + 1, n_items, generator=gen)
    seen = torch.rand(n_users, n_items, generator=gen) < 0.3
    relevant = (torch.rand(n_users, n_items, generator=gen) < 0.15) & ~seen
    relevant[4] = False  # a user with no relevant item
    seen[7, 3:] = True  # a user with fewer finite scores than k
    gain = torch.randint(1, 5, (n_users, n_items), generator=gen).float()

    def run(lo: int, hi: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s_rows, s_cols = seen[lo:hi].nonzero(as_tuple=True)
        r_rows, r_cols = relevant[lo:hi].nonzero(as_tuple=True)
        return _pipeline(scores[lo:hi], s_rows, s_cols, r_rows, r_cols, ks, gain[lo:hi][r_rows, r_cols])

    whole_indices, whole = run(0, n_users)
    assert whole["ndcg_at_5"][4].isnan() and not whole["ndcg_at_5"][~relevant.any(1)].isfinite().any()
    for size in (1, 3, 7):
        parts = [run(lo, min(lo + size, n_users)) for lo in range(0, n_users, size)]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole_indices)
        for name, value in whole.items():
            chunked = torch.cat([p[1][name] for p in parts])
            torch.testing.assert_close(chunked, value, rtol=0, atol=0, equal_nan=True, msg=name)


# ------------------------------------------------------------------------- property test vs reference


def _reference(scores, excluded, gains, k):
    """Per-user textbook metrics: rank by (-score, index), skip excluded items, cut at k."""
    n_items = len(scores)
    ranking = sorted((i for i in range(n_items) if i not in excluded), key=lambda i: (-scores[i], i))[:k]
    rel = [gains.get(i, 0) > 0 for i in ranking] + [False] * (k - len(ranking))
    n_rel = len(gains)
    if n_rel == 0:
        return ranking, None
    c = sum(rel)
    p, r = c / k, c / n_rel
    dcg = sum(1 / math.log2(i + 2) for i in range(k) if rel[i])
    idcg = sum(1 / math.log2(i + 2) for i in range(min(k, n_rel)))
    g = [gains.get(i, 0) for i in ranking]
    gdcg = sum(g[i] / math.log2(i + 2) for i in range(len(g)))
    ideal = sorted(gains.values(), reverse=True)[:k]
    gidcg = sum(ideal[i] / math.log2(i + 2) for i in range(len(ideal)))
    first = next((i + 1 for i in range(k) if rel[i]), None)
    ap = sum(sum(rel[: i + 1]) / (i + 1) for i in range(k) if rel[i]) / min(k, n_rel)
    return ranking, {
        "precision": p, "recall": r, "trecall": c / min(k, n_rel), "ndcg": dcg / idcg, "gndcg": gdcg / gidcg,
        "hr": float(c > 0), "mrr": 1 / first if first else 0.0, "map": ap, "f1": 2 * p * r / (p + r) if c else 0.0,
    }


@st.composite
def _problems(draw):
    n_users = draw(st.integers(1, 5))
    n_items = draw(st.integers(1, 8))
    cells = st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1))
    if draw(st.booleans()):  # integer scores from a tiny range: ties everywhere
        score = st.integers(0, 2).map(float)
    else:
        score = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    scores = draw(st.lists(st.lists(score, min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users))
    excluded = draw(st.sets(cells, max_size=n_users * n_items))
    relevant = draw(st.dictionaries(cells, st.integers(1, 4), max_size=n_users * n_items))
    ks = draw(st.lists(st.integers(1, n_items + 3), min_size=1, max_size=3, unique=True))
    return scores, excluded, relevant, ks


@settings(max_examples=200, deadline=None)
@given(_problems())
def test_vectorised_pipeline_matches_reference(problem):
    scores, excluded, relevant, ks = problem
    excl = sorted(excluded)
    rel = sorted(relevant)
    indices, out = _pipeline(
        torch.tensor(scores, dtype=torch.float32),
        _t([r for r, _ in excl]), _t([c for _, c in excl]),
        _t([r for r, _ in rel]), _t([c for _, c in rel]),
        ks, torch.tensor([float(relevant[x]) for x in rel]),
    )
    for user, row in enumerate(scores):
        user_excluded = {c for r, c in excluded if r == user}
        user_gains = {c: g for (r, c), g in relevant.items() if r == user}
        for k in ks:
            ranking, expected = _reference(row, user_excluded, user_gains, k)
            # finite items first, then the masked (-inf) tail, also in index order
            assert indices[user, :k].tolist() == (ranking + sorted(user_excluded))[: min(k, len(row))]
            for name in ("precision", "recall", "trecall", "ndcg", "gndcg", "hr", "mrr", "map", "f1"):
                got = out[f"{name}_at_{k}"][user].item()
                if expected is None:
                    assert math.isnan(got), name
                else:
                    assert got == pytest.approx(expected[name], rel=1e-5, abs=1e-6), (name, k, user)


# ------------------------------------------------------------------------------------- beyond_accuracy


def test_beyond_accuracy_hand_computed():
    # 4 items, 10 training users, popularity [5, 0, 2, 10]
    # lists: user 0 [3, 2], user 1 [3, 0], user 2 [3, (invalid 1)]
    topk = _t([[3, 2], [3, 0], [3, 1]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    pop = _t([5, 0, 2, 10])
    out = beyond_accuracy(topk, valid, pop, n_train_users=10, ks=[1, 2])
    # @1: counts [0, 0, 0, 3] -> coverage 1/4; gini of sorted [0,0,0,3] = (3*3)/(4*3) = 0.75 = (n-1)/n
    assert out["coverage_at_1"] == pytest.approx(0.25)
    assert out["gini_at_1"] == pytest.approx(0.75)
    assert out["novelty_at_1"] == pytest.approx(0.0)  # -log2(10/10)
    assert out["avgpop_at_1"] == pytest.approx(10.0)
    # @2: counts [1, 0, 1, 3] (5 recommendations) -> coverage 3/4
    # gini: sorted [0, 1, 1, 3], weights (2i - n - 1) = [-3, -1, 1, 3] -> (-1 + 1 + 9) / (4 * 5) = 0.45
    #   (check via mean absolute difference: sum_ij |x_i - x_j| = 2*(1+1+3+0+2+2) = 18; 18 / (2 * 16 * 1.25) = 0.45)
    # novelty: (3 * -log2(10/10) + -log2(2/10) + -log2(5/10)) / 5 = (0 + 2.321928 + 1) / 5 = 0.6643856
    # avgpop: (3 * 10 + 2 + 5) / 5 = 7.4
    assert out["coverage_at_2"] == pytest.approx(0.75)
    assert out["gini_at_2"] == pytest.approx(0.45)
    assert out["novelty_at_2"] == pytest.approx((math.log2(5) + 1) / 5)
    assert out["avgpop_at_2"] == pytest.approx(7.4)


def test_beyond_accuracy_uniform_and_zero_popularity():
    # every item recommended once: gini 0, coverage 1; item 1 has pop 0 -> counted as pop 1 for novelty
    topk = _t([[0, 1], [2, 3]])
    out = beyond_accuracy(topk, torch.ones(2, 2, dtype=torch.bool), _t([4, 0, 4, 4]), n_train_users=8, ks=[2])
    assert out["gini_at_2"] == pytest.approx(0.0)
    assert out["coverage_at_2"] == pytest.approx(1.0)
    # novelty: (3 * -log2(4/8) + -log2(1/8)) / 4 = (3 + 3) / 4 = 1.5; avgpop (12 + 0) / 4 = 3
    assert out["novelty_at_2"] == pytest.approx(1.5)
    assert out["avgpop_at_2"] == pytest.approx(3.0)
    empty = beyond_accuracy(topk, torch.zeros(2, 2, dtype=torch.bool), _t([4, 0, 4, 4]), 8, [2])
    assert empty["coverage_at_2"] == 0.0 and math.isnan(empty["gini_at_2"]) and math.isnan(empty["novelty_at_2"])
