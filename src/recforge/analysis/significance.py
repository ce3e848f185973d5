"""Are the differences between runs real? Paired tests over users, on the runs' per-user test metrics.

Every training run logs ``results/per_user_test_metrics.parquet`` (one row per test user: raw user id and
each per-user metric) and the tag ``split_fingerprint`` (a hash of the train/val/test split). Runs are
comparable user by user only when they share the fingerprint; :func:`compare_runs` refuses otherwise and
names the runs that differ.

For every pair of runs (a, b), over the users both evaluated with a finite value (per-user metrics are NaN for
users without relevant items): the mean difference ``mean(a - b)``, a paired t-test and a Wilcoxon
signed-rank test (two-sided, ``scipy.stats``), each family of p-values Holm-corrected across all the pairs
compared (Holm 1979: controls the family-wise error rate without assuming independence), and a percentile
bootstrap confidence interval of the mean difference (users resampled with replacement, seeded). For RMSE and MAE,
whose logged value pools every rating rather than averaging users, :func:`pooled_error_tests` adds the pooled
difference with its paired bootstrap interval.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError
from recforge.metrics.names import SAMPLED_PREFIXES, SAMPLED_SEED

PER_USER_ARTIFACT = "results/per_user_test_metrics.parquet"
FINGERPRINT_TAG = "split_fingerprint"
COLUMNS = ["metric", "run_a", "run_b", "n_users", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high",
           "t_stat", "t_pvalue", "t_pvalue_holm", "wilcoxon_stat", "wilcoxon_pvalue", "wilcoxon_pvalue_holm"]


def pairing_key(run, metric: str = "") -> str | None:
    """What runs must share to be paired user by user on ``metric``: the split fingerprint, and for a sampled
    protocol's metric (``sampled99_*``, ``popsampled99_*``) the seed of its negatives (another seed ranks each user
    among other items); None without a fingerprint."""
    fingerprint = run.data.tags.get(FINGERPRINT_TAG)
    if fingerprint and metric.rpartition("/")[2].startswith(SAMPLED_PREFIXES):
        seed = run.data.params.get("eval.sampled.seed", str(SAMPLED_SEED))  # a config without one draws with 0
        return f"{fingerprint} (eval.sampled.seed={seed})"
    return fingerprint


def split_groups(runs: Sequence, metric: str = "") -> dict[str, list[str]]:
    """``{pairing key: [run ids]}`` (:func:`pairing_key`): the runs that can be paired user by user on ``metric``
    (runs without a fingerprint in none)."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        key = pairing_key(run, metric)
        if key:
            groups.setdefault(key, []).append(run.info.run_id)
    return groups


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def bootstrap_ci(diff: np.ndarray, n_bootstrap: int = 10000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(diff)``: users resampled with replacement, in memory-bounded blocks."""
    return _bootstrap_interval(lambda idx: diff[idx].mean(axis=1), len(diff), n_bootstrap, confidence, seed)


def _bootstrap_interval(statistic, n: int, n_bootstrap: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of ``statistic(idx)`` (``idx``: ``(k, n)`` resampled user positions -> ``(k,)`` values)
    over ``n_bootstrap`` resamples of the ``n`` users, drawn in memory-bounded blocks."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n_bootstrap)
    block = max(1, (1 << 22) // n)
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        values[start:stop] = statistic(rng.integers(0, n, size=(stop - start, n)))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def pooled_error_tests(frames: Mapping[str, pd.DataFrame], metric: str, n_bootstrap: int = 10000,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For ``test/rmse`` or ``test/mae``: the logged value, which pools every test rating (RMSE: the root of the
    summed squared errors over the summed counts), compared pair by pair. Each run's per-user frame gives every
    user's error sum (``n_test`` times the per-user RMSE squared, or the MAE) and count; ``mean_a``/``mean_b`` are
    the pooled values over the users both runs rated and the interval is a paired bootstrap over those users (the
    same resample for both runs) of the pooled difference. There is no t or Wilcoxon test of a pooled value: the
    interval is the test (it excludes 0 at the ``confidence`` level). Other metrics: an empty table."""
    name = metric.rpartition("/")[2]
    if name not in ("rmse", "mae") or len(frames) < 2:
        return pd.DataFrame(columns=COLUMNS)
    sums = {}
    for run_id, frame in frames.items():
        if "n_test" not in frame.columns:
            raise RecForgeError(f"run {run_id}'s per-user results have no n_test column, so its pooled {metric} "
                                "cannot be rebuilt; retrain it with this version of recforge-train")
        by_user = frame.set_index("user")
        error, count = by_user[name].astype(float), by_user["n_test"].astype(float)
        sums[run_id] = pd.DataFrame({"sum": count * (error**2 if name == "rmse" else error), "n": count})
    root = np.sqrt if name == "rmse" else (lambda v: v)
    rows = []
    for a, b in itertools.combinations(frames, 2):
        joined = sums[a].join(sums[b], how="inner", lsuffix="_a", rsuffix="_b").dropna()
        sa, na, sb, nb = (joined[c].to_numpy(float) for c in ("sum_a", "n_a", "sum_b", "n_b"))
        pooled_a, pooled_b = (float(root(s.sum() / n.sum())) if len(n) else float("nan") for s, n in ((sa, na),
                                                                                                    (sb, nb)))
        low, high = _bootstrap_interval(
            lambda idx: root(sa[idx].sum(1) / na[idx].sum(1)) - root(sb[idx].sum(1) / nb[idx].sum(1)),
            len(joined), n_bootstrap, confidence, seed)
        rows.append({"metric": f"{metric} (pooled)", "run_a": a, "run_b": b, "n_users": len(joined),
                     "mean_a": pooled_a, "mean_b": pooled_b, "mean_diff": pooled_a - pooled_b, "ci_low": low,
                     "ci_high": high})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def paired_tests(values: Mapping[str, pd.Series], metric: str = "", n_bootstrap: int = 10000,
                 confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The comparison table for per-user values of several runs (each a Series indexed by user id).

    One row per pair (a, b) in the given order; users are aligned by index and those missing or NaN in
    either run are dropped for that pair.
    """
    from scipy import stats

    if len(values) < 2:
        raise RecForgeError("significance needs at least two runs to compare")
    rows = []
    for a, b in itertools.combinations(values, 2):
        joined = pd.concat({"a": values[a], "b": values[b]}, axis=1, join="inner").dropna()
        x, y = joined["a"].to_numpy(float), joined["b"].to_numpy(float)
        diff = x - y
        n = len(diff)
        t_stat = t_p = w_stat = w_p = float("nan")
        if n >= 2:
            if np.all(diff == diff[0]):  # no variance: the t statistic is undefined unless the runs agree
                t_stat, t_p = (0.0, 1.0) if diff[0] == 0 else (float("inf") * np.sign(diff[0]), 0.0)
            else:
                t = stats.ttest_rel(x, y)
                t_stat, t_p = float(t.statistic), float(t.pvalue)
            if np.any(diff != 0):
                w = stats.wilcoxon(x, y, zero_method="wilcox")
                w_stat, w_p = float(w.statistic), float(w.pvalue)
            else:
                w_stat, w_p = 0.0, 1.0
        low, high = bootstrap_ci(diff, n_bootstrap, confidence, seed)
        rows.append({"metric": per_user_label(metric), "run_a": a, "run_b": b, "n_users": n,
                     "mean_a": float(x.mean()) if n else float("nan"),
                     "mean_b": float(y.mean()) if n else float("nan"),
                     "mean_diff": float(diff.mean()) if n else float("nan"), "ci_low": low, "ci_high": high,
                     "t_stat": t_stat, "t_pvalue": t_p, "wilcoxon_stat": w_stat, "wilcoxon_pvalue": w_p})
    table = pd.DataFrame(rows)
    table["t_pvalue_holm"] = holm(table["t_pvalue"].to_numpy())
    table["wilcoxon_pvalue_holm"] = holm(table["wilcoxon_pvalue"].to_numpy())
    return table[COLUMNS]


def per_user_label(metric: str) -> str:
    """What the paired tests compare for ``metric``: its per-user values' mean. For RMSE and MAE that is each user's
    own error averaged over users (every user weighs the same, as in the ranking metrics), not the logged value,
    which pools every test rating (heavy raters weigh more): the two can order runs differently, so it says so."""
    return f"{metric} (mean of per-user)" if metric.rpartition("/")[2] in ("rmse", "mae") else metric


def metric_column(metric: str) -> str:
    """``test/ndcg_at_10`` -> ``ndcg_at_10`` (the per-user file's column); plain column names pass through."""
    stage, _, name = metric.rpartition("/")
    if stage and stage != "test":
        raise RecForgeError(f"--metric {metric}: per-user results exist for test metrics only; "
                            f"use test/{name}")
    return name


def check_same_split(fingerprints: Mapping[str, str], purpose: str = "their users cannot be paired") -> None:
    """Raise, naming which runs are on which split, unless every run has the same ``split_fingerprint`` (or the same
    :func:`pairing_key`: for a sampled metric, the seed of its negatives too)."""
    if len(set(fingerprints.values())) > 1:
        groups: dict[str, list[str]] = {}
        for run_id, fingerprint in fingerprints.items():
            groups.setdefault(fingerprint, []).append(run_id)
        detail = "; ".join(f"{fp}: {', '.join(ids)}" for fp, ids in groups.items())
        seeds = "eval.sampled.seed" in detail
        raise RecForgeError(f"runs were evaluated on different splits (split_fingerprint differs)"
                            f"{' or sampled negatives (eval.sampled.seed)' if seeds else ''}, so {purpose}: {detail}. "
                            f"Use only runs on the same data and split{', and one sampling seed' if seeds else ''}")


def load_per_user(run_ids: Sequence[str], tracking_uri: str | None = None, metric: str = "") -> dict[str, pd.DataFrame]:
    """Each run's per-user test metrics, after checking that all runs share one split fingerprint (and, for a
    sampled ``metric``, one seed of its negatives)."""
    from recforge.tracking.client import get_run, tracking_client

    if len(set(run_ids)) < len(run_ids):
        raise RecForgeError(f"a run id is given twice: {list(run_ids)}")
    client = tracking_client(tracking_uri)
    fingerprints = {}
    for run_id in run_ids:
        run = get_run(client, run_id)
        fingerprint = pairing_key(run, metric)
        if not fingerprint:
            raise RecForgeError(f"run {run_id} has no {FINGERPRINT_TAG} tag, so it cannot be aligned user by user; "
                                "compare runs logged by recforge-train")
        fingerprints[run_id] = fingerprint
    check_same_split(fingerprints)
    return fetch_per_user(client, run_ids)


def fetch_per_user(client, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Download each run's ``results/per_user_test_metrics.parquet`` (no split check)."""
    from mlflow.exceptions import MlflowException

    frames = {}
    with tempfile.TemporaryDirectory(prefix="recforge-compare-") as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts(run_id, PER_USER_ARTIFACT, os.path.join(tmp, run_id))
            except (MlflowException, OSError) as exc:
                raise RecForgeError(f"run {run_id} has no {PER_USER_ARTIFACT} artifact ({exc}); "
                                    "it was not trained to the test stage by recforge-train") from None
            frames[run_id] = pd.read_parquet(Path(path))
    return frames


def compare_runs(run_ids: Sequence[str], metric: str = "test/ndcg_at_10", tracking_uri: str | None = None,
                 n_bootstrap: int = 10000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Download the runs' per-user test metrics, align users and return the significance table (see module doc)."""
    if len(run_ids) < 2:
        raise RecForgeError("significance needs at least two run ids")
    if not 0 < confidence < 1:
        raise RecForgeError(f"confidence={confidence} must lie in (0, 1), e.g. 0.95")
    return significance_table(load_per_user(run_ids, tracking_uri, metric), metric, n_bootstrap, confidence, seed)


def significance_table(frames: Mapping[str, pd.DataFrame], metric: str, n_bootstrap: int = 10000,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The paired tests of the runs' per-user ``metric`` (:func:`paired_tests`), and for RMSE and MAE also of the
    pooled, logged value (:func:`pooled_error_tests`)."""
    table = paired_tests(per_user_values(frames, metric), metric, n_bootstrap, confidence, seed)
    pooled = pooled_error_tests(frames, metric, n_bootstrap, confidence, seed)
    return pd.concat([table, pooled], ignore_index=True) if len(pooled) else table


def per_user_values(frames: Mapping[str, pd.DataFrame], metric: str) -> dict[str, pd.Series]:
    """Each run's per-user values of a test metric as a Series indexed by raw user id."""
    column = metric_column(metric)
    values = {}
    for run_id, frame in frames.items():
        if column not in frame.columns or "user" not in frame.columns:
            available = sorted(f"test/{c}" for c in frame.columns if c not in ("user", "n_test"))
            raise RecForgeError(f"run {run_id} has no per-user {metric}; available: {', '.join(available)}")
        values[run_id] = frame.set_index("user")[column].astype(float)
    return values
