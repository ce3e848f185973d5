"""The re-rankers: trade_off 0 keeps the model's list, hand-computed greedy picks for each method, missing
candidates, FA*IR's table against scipy, and a re-ranker rebuilt from its arguments gives the same lists."""

from __future__ import annotations

import pytest
import torch

from recforge.rerank import MMR, Calibrated, FairTopK, Reranker, XQuAD
from recforge.rerank.base import scaled_relevance
from recforge.rerank.fair import minimum_protected

t = torch.tensor
N_ITEMS = 6
VECTORS = torch.nn.functional.normalize(t([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.1]]),
                                        dim=1)
CATEGORIES = t([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
GROUPS = t([0, 0, 2, 1, 2, 0])  # head, head, tail, mid, tail, head


def every_method(trade_off: float) -> list[Reranker]:
    return [MMR(trade_off, 4, VECTORS),
            Calibrated(trade_off, 4, item_categories=CATEGORIES, user_categories=t([[0.5, 0.5], [0.9, 0.1]])),
            XQuAD(trade_off, 4, GROUPS, t([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])),
            FairTopK(trade_off, 4, protected=GROUPS == 2)]


def test_scaled_relevance_per_row():
    scores = t([[4.0, 2.0, 0.0, float("-inf")], [1.0, 1.0, 1.0, 1.0]])
    assert scaled_relevance(scores, torch.isfinite(scores)).tolist() == [[1.0, 0.5, 0.0, 0.0], [1.0] * 4]


@pytest.mark.parametrize("reranker", every_method(0.0), ids=lambda r: type(r).__name__)
def test_trade_off_zero_keeps_the_models_list(reranker):
    items = t([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    scores = t([[5.0, 4.0, 4.0, 3.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0, 1.0, float("-inf")]])  # ties: model's order
    listed, listed_scores = reranker(t([0, 1]), items, scores, 6)
    assert listed.tolist() == items.tolist()
    assert listed_scores[1, 5].item() == float("-inf")  # the missing candidate stays missing


def test_mmr_takes_the_dissimilar_item_before_a_near_duplicate():
    # relevance 1, .8, 0 for items 0, 1 (same vector as 0), 2 (orthogonal); at .5: item 1 scores .4 - .5, item 2 0
    items, scores = t([[0, 1, 2]]), t([[1.0, 0.9, 0.5]])
    assert MMR(0.5, 3, VECTORS)(t([0]), items, scores, 3)[0].tolist() == [[0, 2, 1]]
    assert MMR(0.05, 3, VECTORS)(t([0]), items, scores, 3)[0].tolist() == [[0, 1, 2]]
    listed, listed_scores = MMR(0.5, 3, VECTORS)(t([0]), items, scores, 2)
    assert listed_scores.tolist() == [[1.0, 0.5]]  # the model's scores of the listed items


def test_calibrated_follows_the_users_genre_mix():
    # user 0's history is half genre 0, half genre 1; the model ranks three genre-0 items first
    items, scores = t([[0, 1, 5, 2]]), t([[1.0, 0.95, 0.9, 0.1]])
    reranker = Calibrated(0.5, 4, 0.01, CATEGORIES, t([[0.5, 0.5]]))
    assert reranker(t([0]), items, scores, 2)[0].tolist() == [[0, 2]]
    # at step 2, item 1 keeps q = (1, 0): .5 * .94 - .5 * (.5 ln(.5 / .995) + .5 ln(.5 / .005)) = -.51, while
    # item 2 makes q = p: .5 * 0 - .5 * 0 = 0 wins; a user of genre 0 alone keeps the model's order
    assert Calibrated(0.5, 4, 0.01, CATEGORIES, t([[1.0, 0.0]]))(t([0]), items, scores, 2)[0].tolist() == [[0, 1]]


def test_xquad_gives_each_popularity_group_its_share_of_the_history():
    # candidates: heads 0, 1, 5, tail 2; user 0's history is half tail
    items, scores = t([[0, 1, 5, 2]]), t([[1.0, 0.9, 0.8, 0.0]])
    shares = t([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    # at .8: step 0: head 0: .2 * 1 + .8 * .5 = .6 beats tail 2: .4; step 1 (the list all head): head 1: .18,
    # tail 2: .8 * .5 * (1 - 0) = .4; step 2 (half and half): head 1: .18 + .8 * .5 * .5 = .38, head 5: .36
    assert XQuAD(0.8, 4, GROUPS, shares)(t([0]), items, scores, 3)[0].tolist() == [[0, 2, 1]]
    assert XQuAD(0.5, 4, GROUPS, shares)(t([0]), items, scores, 3)[0].tolist() == [[0, 1, 5]]  # .45 beats .25
    assert XQuAD(0.8, 4, GROUPS, shares)(t([1]), items, scores, 3)[0].tolist() == [[0, 1, 5]]  # an all-head history


def test_fair_top_k_table_matches_scipy_and_lifts_tail_items():
    from scipy.stats import binom

    for p in (0.0, 0.1, 0.3, 0.5, 0.9):
        assert minimum_protected(20, p, 0.1) == [int(binom.ppf(0.1, i, p)) for i in range(1, 21)], p
    assert minimum_protected(4, 1.0, 0.1) == [1, 2, 3, 4]
    items = t([[0, 1, 5, 3, 2, 4]])
    scores = t([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert minimum_protected(6, 0.5, 0.1) == [0, 0, 0, 1, 1, 1]  # P(X = 0) = 1/16 < .1 from 4 items on
    listed = FairTopK(0.5, 6, 0.1, GROUPS == 2)(t([0]), items, scores, 6)[0]
    assert listed.tolist() == [[0, 1, 5, 2, 3, 4]]  # position 4 needs a tail item: 2 comes before mid item 3
    assert FairTopK(0.9, 6, 0.1, GROUPS == 2)(t([0]), items, scores, 3)[0].tolist() == [[0, 2, 4]]  # m: 0, 1, 2


def test_fewer_valid_candidates_than_the_list():
    items, scores = t([[3, 1, 4, 0]]), t([[2.0, 1.0, float("-inf"), float("-inf")]])
    for reranker in every_method(0.7):
        listed, listed_scores = reranker(t([0]), items, scores, 3)
        assert sorted(listed[0, :2].tolist()) == [1, 3], type(reranker).__name__
        assert torch.isinf(listed_scores[0, 2]) and torch.isfinite(listed_scores[0, :2]).all()


def test_a_reranker_rebuilt_from_its_arguments_lists_the_same():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 6, generator=gen)
    items = torch.stack([torch.randperm(N_ITEMS, generator=gen) for _ in range(3)])
    for reranker in every_method(0.6):
        copy = type(reranker)(**reranker.arguments())
        users = t([0, 1, 0])
        assert torch.equal(copy(users, items, scores, 4)[0], reranker(users, items, scores, 4)[0])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="trade_off"):
        MMR(1.5, 10, VECTORS)
    with pytest.raises(ValueError, match="n_candidates"):
        XQuAD(0.5, 0, GROUPS, t([[1.0, 0, 0]]))
    with pytest.raises(ValueError, match="MMR needs item_vectors"):
        MMR(0.5, 10)
