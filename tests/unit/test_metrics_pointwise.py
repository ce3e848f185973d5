"""Point-wise metrics (AUC, GAUC, log loss) against hand computations and scikit-learn; the labelled pairs
(positives plus never-interacted sampled negatives, fixed by the seed); the evaluator reading pair scores before
masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recforge.data.pairs import labelled_pairs
from recforge.errors import RecForgeError
from recforge.metrics.evaluator import RankingEvaluator
from recforge.metrics.pointwise import auc, group_auc, log_loss, pointwise_metrics, tie_ranks


def test_tie_ranks_average_the_tied_positions_within_each_group():
    assert tie_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    groups = torch.tensor([1, 0, 1, 0, 1])
    # group 0: scores 5, 5 -> 1.5 each; group 1: scores 2, 1, 2 -> 2.5, 1, 2.5
    assert tie_ranks(torch.tensor([2.0, 5.0, 1.0, 5.0, 2.0]), groups).tolist() == [2.5, 1.5, 1.0, 1.5, 2.5]


def test_auc_hand_computed_with_ties_counting_one_half():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 beats 0.1, loses to 0.4; 0.8 beats both -> 3 / 4
    assert float(auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))) == 0.75
    # positives 1, 2 against negatives 1, 0: (1 vs 1) = 1/2, the three others won -> 3.5 / 4
    assert float(auc(torch.tensor([1.0, 1.0, 2.0, 0.0]), torch.tensor([1, 0, 1, 0]))) == 0.875
    assert float(auc(torch.tensor([7.0, 7.0, 7.0]), torch.tensor([1, 0, 0]))) == 0.5   # all tied
    assert math.isnan(float(auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))))   # one class: undefined


def test_group_auc_weights_users_by_their_pairs_and_skips_one_class_users():
    # user 7: scores .9 .1 .5, labels 1 0 0 -> AUC 1 over 3 pairs
    # user 2: scores .2 .6 .3 .3, labels 1 0 1 0 -> .2<.6, .2<.3, .3<.6, .3=.3 -> 0.5 / 4 = 0.125 over 4 pairs
    # user 5: two positives only -> skipped
    users = torch.tensor([7, 2, 7, 5, 2, 2, 7, 5, 2])
    scores = torch.tensor([0.9, 0.2, 0.1, 0.4, 0.6, 0.3, 0.5, 0.1, 0.3])
    labels = torch.tensor([1, 1, 0, 1, 0, 1, 0, 1, 0])
    gauc, per_user, skipped = group_auc(scores, labels, users)
    assert float(gauc) == pytest.approx((3 * 1.0 + 4 * 0.125) / 7)
    assert int(skipped) == 1
    assert per_user[0] == pytest.approx(0.125) and per_user[2] == 1.0 and math.isnan(per_user[1])  # ids 2, 5, 7


def test_log_loss_hand_computed_from_logits():
    # sigmoid(0) = 1/2 for a positive: ln 2; sigmoid(ln 3) = 3/4 for a negative: -ln(1/4) = ln 4
    value = log_loss(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1.0, 0.0]))
    assert float(value) == pytest.approx(1.5 * math.log(2.0))
    assert math.isfinite(float(log_loss(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0]))))  # no overflow


def test_pointwise_metrics_leave_log_loss_out_unless_scores_are_logits():
    scores, labels, users = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])
    assert set(pointwise_metrics(scores, labels, users, logits=False)) == {"auc", "gauc", "gauc_skipped_users"}
    out = pointwise_metrics(scores, labels, users, logits=True)
    assert float(out["gauc_skipped_users"]) == 2.0 and math.isnan(float(out["gauc"]))   # each user one class
    assert float(out["logloss"]) == pytest.approx(float(log_loss(scores, labels)))


def test_against_sklearn_on_random_data_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n = 5000
    scores = np.round(rng.normal(size=n), 1)  # rounded: many ties
    labels = (rng.random(n) < 0.3).astype(np.float32)
    users = rng.integers(0, 40, n)
    assert float(auc(torch.tensor(scores), torch.tensor(labels))) == pytest.approx(
        metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert float(log_loss(torch.tensor(scores), torch.tensor(labels))) == pytest.approx(
        metrics.log_loss(labels, 1 / (1 + np.exp(-scores))), rel=1e-9)
    expected = [(metrics.roc_auc_score(labels[users == u], scores[users == u]), (users == u).sum()) for u in range(40)]
    value = sum(a * w for a, w in expected) / sum(w for _, w in expected)
    gauc, _, skipped = group_auc(torch.tensor(scores), torch.tensor(labels), torch.tensor(users))
    assert float(gauc) == pytest.approx(value, abs=1e-12) and int(skipped) == 0


def test_labelled_pairs_hand_checked():
    # 2 users, 6 items. user 0: test items 1, 2; also interacted (any part) with 0, 3 -> negatives from {4, 5}
    # user 1: test item 5; interacted with 0..4 -> the only possible negative is none: the user is short of 1
    n_items = 6
    blocked = np.array([0 * 6 + i for i in (0, 1, 2, 3)] + [1 * 6 + i for i in (0, 1, 2, 3, 4, 5)])
    users, items, labels, short = labelled_pairs(np.array([0, 0, 1]), np.array([2, 1, 5]), np.ones(3), n_items,
                                                 blocked, negatives=1, seed=3)
    assert users.tolist() == [0, 0, 0, 0, 1] and items.tolist() == [1, 2, 4, 5, 5]
    assert labels.tolist() == [1, 1, 0, 0, 1] and short == 1


def test_labelled_pairs_are_unseen_distinct_balanced_and_fixed_by_the_seed():
    rng = np.random.default_rng(1)
    n_users, n_items = 50, 200
    seen = np.unique(rng.integers(0, n_users, 3000) * n_items + rng.integers(0, n_items, 3000))
    test = seen[rng.random(len(seen)) < 0.2]
    args = (test // n_items, test % n_items, np.ones(len(test)), n_items, seen)
    users, items, labels, short = labelled_pairs(*args, negatives=2, seed=0)
    keys = users * n_items + items
    assert short == 0 and len(np.unique(keys)) == len(keys)
    assert not np.isin(keys[labels == 0], seen).any() and set(keys[labels == 1]) == set(test)
    np.testing.assert_array_equal(np.bincount(users[labels == 0], minlength=n_users),
                                  2 * np.bincount(users[labels == 1], minlength=n_users))
    again = labelled_pairs(*args, negatives=2, seed=0)
    np.testing.assert_array_equal(again[1], items)
    assert not np.array_equal(labelled_pairs(*args, negatives=2, seed=1)[1], items)
    allowed = np.zeros(n_items, bool)
    allowed[:100] = True
    _, items_in, labels_in, _ = labelled_pairs(*args, negatives=1, seed=0, allowed=allowed)
    assert (items_in[labels_in == 0] < 100).all()


def test_labelled_pairs_threshold_labels_the_rated_pairs():
    users, items, labels, short = labelled_pairs(np.array([1, 0, 0]), np.array([3, 2, 1]), np.array([5.0, 2.0, 4.0]),
                                                 5, np.array([], np.int64), threshold=4.0)
    assert users.tolist() == [0, 0, 1] and items.tolist() == [1, 2, 3] and labels.tolist() == [1, 0, 1]
    with pytest.raises(RecForgeError, match="eval.pointwise_negatives"):
        labelled_pairs(np.array([0]), np.array([1]), np.ones(1), 5, np.array([], np.int64), negatives=0)


def test_evaluator_reads_pair_scores_before_masking_and_aggregates_over_chunks():
    # chunk 1: users 4, 9; chunk 2: user 11. The pair (user 4, item 0) is also an excluded item: its score is read
    # before the mask sets it to -inf.
    chunk1 = {"users": torch.tensor([4, 9]), "exclude_rows": torch.tensor([0]), "exclude_cols": torch.tensor([0]),
              "relevant_rows": torch.tensor([0, 1]), "relevant_cols": torch.tensor([1, 2]),
              "pair_rows": torch.tensor([0, 0, 1, 1]), "pair_cols": torch.tensor([1, 0, 2, 3]),
              "pair_labels": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    chunk2 = {"users": torch.tensor([11]), "exclude_rows": torch.tensor([], dtype=torch.long),
              "exclude_cols": torch.tensor([], dtype=torch.long), "relevant_rows": torch.tensor([0]),
              "relevant_cols": torch.tensor([0]), "pair_rows": torch.tensor([0, 0]), "pair_cols": torch.tensor([0, 3]),
              "pair_labels": torch.tensor([1.0, 0.0])}
    scores1 = torch.tensor([[2.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])   # user 4: pos 3 > neg 2; user 9: tie
    scores2 = torch.tensor([[-1.0, 0.0, 0.0, 0.5]])                          # user 11: pos -1 < neg 0.5
    ev = RankingEvaluator(ks=[2], logits=True)
    outputs = [ev.evaluate_scores(scores1, chunk1), ev.evaluate_scores(scores2, chunk2)]
    assert outputs[0]["pair_scores"].tolist() == [3.0, 2.0, 1.0, 1.0]
    metrics, _ = ev.aggregate(outputs)
    # all pairs: positives 3, 1, -1 vs negatives 2, 1, 0.5: 3 beats all (3), 1 beats 0.5, ties 1, loses 2 (1.5),
    # -1 loses all (0) -> 4.5 / 9; per user: 1, 0.5, 0 with 2 pairs each -> 0.5
    assert float(metrics["auc"]) == pytest.approx(0.5) and float(metrics["gauc"]) == pytest.approx(0.5)
    expected = float(log_loss(torch.tensor([3.0, 2.0, 1.0, 1.0, -1.0, 0.5]), torch.tensor([1.0, 0, 1, 0, 1, 0])))
    assert float(metrics["logloss"]) == pytest.approx(expected)
    assert "auc" not in RankingEvaluator(ks=[2]).aggregate([ev.evaluate_scores(scores2.clone(), {
        k: v for k, v in chunk2.items() if not k.startswith("pair")})])[0]
