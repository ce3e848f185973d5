"""Significance helpers: Holm correction, paired tests and bootstrap intervals on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recforge.analysis.significance import (bootstrap_ci, holm, metric_column, paired_tests, pooled_error_tests,
                                            significance_table)
from recforge.errors import RecForgeError


def test_holm_hand_computed():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); monotone step-down
    assert holm([0.04, 0.01, 0.02]).tolist() == pytest.approx([0.04, 0.03, 0.04])
    # a later smaller product is raised to the running maximum, and values are capped at 1
    assert holm([0.02, 0.021, 0.9]).tolist() == pytest.approx([0.06, 0.06, 0.9])
    assert holm([0.6, 0.7]).tolist() == pytest.approx([1.0, 1.0])
    out = holm([float("nan"), 0.01, 0.03])
    assert math.isnan(out[0]) and out[1:].tolist() == pytest.approx([0.02, 0.03])


def test_paired_tests_hand_computed():
    users = [10, 11, 12, 13, 14]
    a = pd.Series([0.5, 0.6, 0.9, 0.4, 0.8], index=users)
    b = pd.Series([0.4, 0.3, 0.9, 0.1, 0.7, 0.2], index=users + [99])  # user 99 only in b: dropped
    c = pd.Series([0.5, 0.6, float("nan"), 0.4, 0.8], index=users)   # a NaN user: dropped for that pair
    table = paired_tests({"A": a, "B": b, "C": c}, metric="test/ndcg_at_10", n_bootstrap=2000, seed=1)
    assert list(zip(table.run_a, table.run_b)) == [("A", "B"), ("A", "C"), ("B", "C")]
    ab = table.iloc[0]
    d = np.array([0.1, 0.3, 0.0, 0.3, 0.1])
    assert ab.n_users == 5 and ab.mean_diff == pytest.approx(0.16)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))  # = 0.16 / (0.13416 / 2.2361) = 2.6667
    assert ab.t_stat == pytest.approx(t)
    assert ab.t_stat == pytest.approx(2.666667, rel=1e-5)
    # Wilcoxon (zero dropped): |d| = .1 .3 .3 .1 -> ranks 1.5 3.5 3.5 1.5, all positive: W = min(10, 0) = 0
    assert ab.wilcoxon_stat == 0.0
    assert ab.ci_low <= ab.mean_diff <= ab.ci_high and ab.ci_low > 0
    ac = table.iloc[1]  # identical on the 4 shared users
    assert ac.n_users == 4 and ac.mean_diff == 0 and ac.t_pvalue == 1.0 and ac.wilcoxon_pvalue == 1.0
    assert (ac.ci_low, ac.ci_high) == (0.0, 0.0)
    # Holm over the three pairs
    assert table.t_pvalue_holm.tolist() == pytest.approx(holm(table.t_pvalue.tolist()).tolist())
    assert (table.t_pvalue_holm >= table.t_pvalue).all()


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.05, 0.2, size=3000)
    low, high = bootstrap_ci(diff, 3000, 0.95, seed=7)
    assert (low, high) == bootstrap_ci(diff, 3000, 0.95, seed=7)
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert low == pytest.approx(diff.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(diff.mean() + 1.96 * se, abs=0.25 * se)


def test_metric_column_and_too_few_runs():
    assert metric_column("test/ndcg_at_10") == "ndcg_at_10" and metric_column("rmse") == "rmse"
    with pytest.raises(RecForgeError, match="test/ndcg_at_10"):
        metric_column("val/ndcg_at_10")
    with pytest.raises(RecForgeError, match="two runs"):
        paired_tests({"A": pd.Series([1.0])})


def test_rating_errors_are_labelled_as_the_mean_of_per_user_errors():
    # the logged test/rmse pools every rating; the tests compare each user's own RMSE averaged over users
    a, b = pd.Series([0.5, 0.9], index=[1, 2]), pd.Series([0.7, 0.8], index=[1, 2])
    assert paired_tests({"A": a, "B": b}, "test/rmse", 100).metric.tolist() == ["test/rmse (mean of per-user)"]
    assert paired_tests({"A": a, "B": b}, "test/mae", 100).metric.tolist() == ["test/mae (mean of per-user)"]
    assert paired_tests({"A": a, "B": b}, "test/ndcg_at_10", 100).metric.tolist() == ["test/ndcg_at_10"]


def test_pooled_rating_errors_are_tested_as_logged_and_can_order_runs_the_other_way():
    # user 1 rates once, user 2 three times. A: errors 1 | 0 0 0; B: 0 | 0.8 0.8 0.8
    a = pd.DataFrame({"user": [1, 2], "rmse": [1.0, 0.0], "mae": [1.0, 0.0], "n_test": [1, 3]})
    b = pd.DataFrame({"user": [1, 2, 7], "rmse": [0.0, 0.8, 5.0], "mae": [0.0, 0.8, 5.0], "n_test": [1, 3, 2]})
    table = significance_table({"A": a, "B": b}, "test/rmse", n_bootstrap=4000, seed=3)
    per_user, pooled = table.iloc[0], table.iloc[1]
    assert per_user.metric == "test/rmse (mean of per-user)" and per_user.mean_diff == pytest.approx(0.1)  # B
    assert pooled.metric == "test/rmse (pooled)" and pooled.n_users == 2  # user 7 is B's only: dropped
    # pooled: A sqrt(1 / 4) = 0.5, B sqrt(3 * 0.64 / 4) = 0.6928: A is better, as the logged values say
    assert (pooled.mean_a, pooled.mean_b) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.48)))
    assert pooled.mean_diff == pytest.approx(0.5 - math.sqrt(0.48))
    # resamples of two users: {1, 1} +1.0, {2, 2} -0.8, {1, 2} -0.193 (half the time): the 95% interval's ends
    assert (pooled.ci_low, pooled.ci_high) == (pytest.approx(-0.8), pytest.approx(1.0))
    assert np.isnan(pooled.t_pvalue) and np.isnan(pooled.wilcoxon_pvalue_holm)  # the interval is the test
    mae = pooled_error_tests({"A": a, "B": b}, "test/mae", n_bootstrap=100).iloc[0]
    assert (mae.mean_a, mae.mean_b) == (pytest.approx(0.25), pytest.approx(0.6))  # 1 / 4 and 2.4 / 4
    assert pooled_error_tests({"A": a, "B": b}, "test/ndcg_at_10").empty
    assert len(significance_table({"A": a, "B": b}, "test/mae", 100)) == 2
    from recforge.analysis.report import key_significance

    shown = key_significance(table, {"A": "A", "B": "B"})  # the terminal says which row is which
    assert shown["value"].tolist() == ["mean of per-user", "pooled"]
    with pytest.raises(RecForgeError, match="n_test"):
        pooled_error_tests({"A": a.drop(columns="n_test"), "B": b}, "test/rmse")


def test_runs_pair_on_one_split_and_for_sampled_metrics_one_seed_of_negatives():
    from types import SimpleNamespace

    from recforge.analysis.significance import split_groups

    def run(run_id, fingerprint, seed):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(
            tags={"split_fingerprint": fingerprint} if fingerprint else {}, params={"eval.sampled.seed": seed}))

    runs = [run("a", "f1", "0"), run("b", "f1", "1"), run("c", "f1", "0"), run("d", "f2", "0"), run("e", None, "0")]
    del runs[2].data.params["eval.sampled.seed"]  # no seed in its config: drawn with the default 0, as run a
    assert split_groups(runs, "test/ndcg_at_10") == {"f1": ["a", "b", "c"], "f2": ["d"]}
    assert split_groups(runs, "test/sampled99_hr_at_10") == {
        "f1 (eval.sampled.seed=0)": ["a", "c"], "f1 (eval.sampled.seed=1)": ["b"], "f2 (eval.sampled.seed=0)": ["d"]}
    assert list(split_groups(runs, "test/popsampled50_ndcg_at_10")) == list(
        split_groups(runs, "test/sampled99_hr_at_10"))


def test_a_split_mismatch_names_the_seed_only_where_a_seed_differs():
    from recforge.analysis.significance import check_same_split

    with pytest.raises(RecForgeError) as plain:
        check_same_split({"a": "f1", "b": "f2"}, "they cannot be fused")
    assert "f1: a; f2: b" in str(plain.value) and "seed" not in str(plain.value)
    with pytest.raises(RecForgeError, match=r"or sampled negatives \(eval.sampled.seed\).*one sampling seed"):
        check_same_split({"a": "f1 (eval.sampled.seed=0)", "b": "f1 (eval.sampled.seed=1)"})
