"""For whom is a model better? A test metric of each run broken down by user and item slice, with bootstrap
confidence intervals, paired tests within each slice, and the winner of each slice.

The per-user results of a run (``results/per_user_test_metrics.parquet``) say each user's slices (columns
``slice_activity``: cold / light / medium / heavy, ``slice_profile``: niche / diverse / blockbuster) and carry
each ranking metric restricted to the relevant items of each item slice (``ndcg_at_10/items_tail``); see
:mod:`recforge.metrics.beyond`. A user slice's value of a run is the mean over its users, an item slice's the
mean over the users with a relevant item in it. Paired tests (:func:`recforge.analysis.significance.paired_tests`:
t-test, Wilcoxon, bootstrap CI of the mean difference) run within each slice among the runs that share a split,
their p-values Holm-corrected over the pairs of that slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from recforge.analysis.plots import mean_with_ci
from recforge.analysis.significance import metric_column, paired_tests, split_groups
from recforge.metrics.beyond import ACTIVITY, ITEM_GROUPS, PROFILE
from recforge.metrics.names import metric_mode

USER_FAMILIES = {"activity": ACTIVITY, "profile": PROFILE}
# every slice, in report order, and its family
SLICE_FAMILY = {**{f"users_{g}": "activity" for g in ACTIVITY}, **{f"users_{g}": "profile" for g in PROFILE},
                **{f"items_{g}": "items" for g in ITEM_GROUPS}}


def slice_values(frames: Mapping[str, pd.DataFrame], metric: str) -> dict[str, dict[str, pd.Series]]:
    """``{slice: {run_id: per-user values}}`` of a test metric (Series indexed by user id, NaN dropped), for the
    slices the runs' per-user results carry, in the order of :data:`SLICE_FAMILY`."""
    column = metric_column(metric)
    out: dict[str, dict[str, pd.Series]] = {}
    for family, groups in USER_FAMILIES.items():
        label = f"slice_{family}"
        for group in groups:
            values = {run: frame.loc[frame[label] == group].set_index("user")[column].astype(float).dropna()
                      for run, frame in frames.items() if label in frame and column in frame}
            if any(len(v) for v in values.values()):
                out[f"users_{group}"] = values
    for group in ITEM_GROUPS:
        name = f"{column}/items_{group}"
        values = {run: frame.set_index("user")[name].astype(float).dropna()
                  for run, frame in frames.items() if name in frame}
        if any(len(v) for v in values.values()):
            out[f"items_{group}"] = values
    return out


def slice_summary(values: Mapping[str, Mapping[str, pd.Series]], n_bootstrap: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> pd.DataFrame:
    """One row per (slice, run): the slice's family, the mean over the slice's users and its percentile bootstrap
    CI, slices in the order of ``values``."""
    tables = [mean_with_ci(runs, n_bootstrap, confidence, seed).assign(slice=name, family=SLICE_FAMILY[name])
              for name, runs in values.items()]
    columns = ["slice", "family", "run_id", "mean", "ci_low", "ci_high", "n_users"]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)


def slice_tests(runs: Sequence, values: Mapping[str, Mapping[str, pd.Series]], metric: str,
                n_bootstrap: int = 10000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Paired tests between the runs of each split within each slice (Holm over that slice's pairs)."""
    tables = []
    for fingerprint, ids in split_groups(runs, metric).items():
        for name, by_run in values.items():
            present = {i: by_run[i] for i in ids if i in by_run and len(by_run[i])}
            if len(present) >= 2:
                table = paired_tests(present, metric, n_bootstrap, confidence, seed)
                tables.append(table.assign(slice=name, split_fingerprint=fingerprint))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def slice_winners(summary: pd.DataFrame, tests: pd.DataFrame, metric: str) -> pd.DataFrame:
    """For each split and slice with paired tests: the best run (by mean; the lowest for a lower-is-better
    metric), the runner-up, the difference best - runner-up with its bootstrap CI and Holm-corrected p-values."""
    if tests.empty:
        return pd.DataFrame()
    best_first = metric_mode(metric) == "max"
    rows = []
    for (fingerprint, name), pairs in tests.groupby(["split_fingerprint", "slice"], sort=False):
        runs = set(pairs["run_a"]) | set(pairs["run_b"])
        ranked = summary[(summary["slice"] == name) & summary["run_id"].isin(runs)]
        ranked = ranked.sort_values("mean", ascending=not best_first, kind="stable")
        best, second = ranked.iloc[0], ranked.iloc[1]
        pair = pairs[((pairs.run_a == best.run_id) & (pairs.run_b == second.run_id))
                     | ((pairs.run_a == second.run_id) & (pairs.run_b == best.run_id))].iloc[0]
        sign = 1.0 if pair.run_a == best.run_id else -1.0
        low, high = sorted((sign * pair.ci_low, sign * pair.ci_high))
        rows.append({"split_fingerprint": fingerprint, "slice": name, "n_users": int(best.n_users),
                     "best": best.run_id, "mean": best["mean"], "ci_low": best.ci_low, "ci_high": best.ci_high,
                     "runner_up": second.run_id, "runner_up_mean": second["mean"], "diff": sign * pair.mean_diff,
                     "diff_ci_low": low, "diff_ci_high": high, "t_pvalue_holm": pair.t_pvalue_holm,
                     "wilcoxon_pvalue_holm": pair.wilcoxon_pvalue_holm})
    order = {name: i for i, name in enumerate(SLICE_FAMILY)}
    return pd.DataFrame(rows).sort_values("slice", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def key_winners(winners: pd.DataFrame, labels: Mapping[str, str], datasets: Mapping[str, str]) -> pd.DataFrame:
    """The winners as a terminal shows them, a dataset's slices together: the dataset (``datasets``: of each run),
    run labels, the best run's mean and CI, its lead over the runner-up, the lead's CI and its Wilcoxon p-value
    (Holm-corrected)."""
    dataset = winners["best"].map(datasets)
    order = {name: i for i, name in enumerate(dict.fromkeys(dataset))}
    table = pd.DataFrame({
        "dataset": dataset, "slice": winners["slice"], "users": winners["n_users"],
        "best": winners["best"].map(labels), "mean": winners["mean"],
        "ci": [f"{lo:.3f}..{hi:.3f}" for lo, hi in zip(winners.ci_low, winners.ci_high)],
        "runner-up": winners["runner_up"].map(labels), "lead": winners["diff"],
        "lead ci": [f"{lo:+.3f}..{hi:+.3f}" for lo, hi in zip(winners.diff_ci_low, winners.diff_ci_high)],
        "p (Holm)": winners["wilcoxon_pvalue_holm"]})
    return table.sort_values("dataset", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
