"""A comparison report of selected runs: table (CSV + Markdown), plots (PNG) and paired significance tests, the
metric by user and item slice (:mod:`recforge.analysis.slices`), and accuracy against beyond-accuracy metrics
for re-ranked runs.

``compare_report`` is what ``recforge-compare`` runs; the notebook calls the same pieces one by one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recforge.analysis.plots import (mean_with_ci, plot_learning_curves, plot_metric_by_slice, plot_metric_ci,
                                     plot_metric_vs_param, plot_tradeoff)
from recforge.analysis.runs import (epoch_history, option_name, rerank_option, runs_table, to_markdown,
                                   varying_params)
from recforge.analysis.significance import (FINGERPRINT_TAG, fetch_per_user, per_user_values, significance_table,
                                            split_groups)
from recforge.analysis.slices import slice_summary, slice_tests, slice_values, slice_winners
from recforge.errors import RecForgeError
from recforge.utils.io import atomic_path, atomic_write_text


@dataclass
class Report:
    table: pd.DataFrame
    significance: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    slices: pd.DataFrame = field(default_factory=pd.DataFrame)        # mean and CI per (slice, run)
    slice_tests: pd.DataFrame = field(default_factory=pd.DataFrame)   # paired tests within each slice and split
    winners: pd.DataFrame = field(default_factory=pd.DataFrame)       # the best run of each slice and its lead


TRADEOFF_METRICS = ("ild", "miscalibration", "aplt")  # drawn against --metric for re-ranked runs by default


def run_labels(runs: Sequence) -> dict[str, str]:
    """Short unique labels: :func:`unique_labels` of the runs' names (or model tags)."""
    return unique_labels([r.info.run_id for r in runs],
                         [r.info.run_name or r.data.tags.get("model", "run") for r in runs])


def model_labels(runs: Sequence) -> dict[str, str]:
    """Labels that say what each run is in a few characters, for tables that also name the dataset: its model
    option, with its re-ranker and trade-off (``ease+mmr 0.5``); :func:`unique_labels` tells equal ones on the same
    dataset apart."""
    by_dataset: dict[str, dict[str, str]] = {}
    for run in runs:
        name = option_name(run, "model") or run.data.tags.get("model", "run")
        if rerank_option(run.data.params) != "none":
            name += f"+{rerank_option(run.data.params)} {run.data.params.get('rerank.trade_off', '')}".rstrip()
        by_dataset.setdefault(run.data.tags.get("dataset", ""), {})[run.info.run_id] = name
    return {run_id: label for names in by_dataset.values()
            for run_id, label in unique_labels(list(names), list(names.values())).items()}


def unique_labels(run_ids: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``{run_id: name}``, with the first run-id characters after each name that two runs share."""
    counts = Counter(names)
    return {run_id: name if counts[name] == 1 else f"{name} ({run_id[:6]})" for run_id, name in zip(run_ids, names)}


def significance_by_split(client, runs: Sequence, metric: str, n_bootstrap: int = 10000, confidence: float = 0.95,
                          seed: int = 0, frames: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Paired tests within every group of runs that share a split fingerprint (groups of one are skipped)."""
    tables = []
    for fingerprint, ids in split_groups(runs, metric).items():
        if len(ids) < 2:
            continue
        group_frames = {i: frames[i] for i in ids} if frames is not None else fetch_per_user(client, ids)
        table = significance_table(group_frames, metric, n_bootstrap, confidence, seed)
        tables.append(table.assign(split_fingerprint=fingerprint))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def compare_report(client, runs: Sequence, out_dir: Path | None, metric: str = "test/ndcg_at_10",
                   metrics: Sequence[str] | None = None, params: Sequence[str] | None = None,
                   curve_metric: str = "val/ndcg_at_10", vs_param: str | None = None, significance: bool = True,
                   plots: bool = True, n_bootstrap: int = 10000, confidence: float = 0.95, seed: int = 0,
                   tradeoff: Sequence[str] | None = None) -> Report:
    """Tabulate ``runs``; with ``out_dir``, write runs.csv, runs.md and the plots, significance.csv, and for runs
    with per-user slices slices.csv, slice_significance.csv and slice_winners.csv. ``tradeoff``: the
    beyond-accuracy metrics to draw ``metric`` against (default: intra-list diversity, miscalibration and
    long-tail share at ``metric``'s cut-off, when a selected run was re-ranked)."""
    if vs_param is not None:
        known = {k for r in runs for k in r.data.params}
        if vs_param not in known:
            raise RecForgeError(f"--vs-param {vs_param} is not a parameter of the selected runs, e.g. "
                                f"{', '.join(sorted(k for k in known if k.startswith(('model.', 'optimizer.'))))}")
        params = list(params if params is not None else varying_params(runs))
        params += [vs_param] if vs_param not in params else []
    table = runs_table(runs, metrics, params)
    labels = run_labels(runs)
    if metric not in table.columns:
        logged = sorted(c for c in table.columns if c.startswith(("val/", "test/")))
        raise RecForgeError(f"--metric {metric} was not logged by the selected runs; logged: {', '.join(logged)}")
    frames, ranked = None, []
    if (significance or plots) and metric.startswith("test/"):
        # runs that logged the metric (a rating model has no ranking metrics) and a split to pair users on
        ranked = [r for r in runs if r.data.tags.get(FINGERPRINT_TAG) and metric in r.data.metrics]
        frames = fetch_per_user(client, [r.info.run_id for r in ranked]) if ranked else {}
    sig = (significance_by_split(client, ranked, metric, n_bootstrap, confidence, seed, frames)
           if significance and frames is not None else pd.DataFrame())
    report = Report(table, sig)
    values = slice_values(frames, metric) if frames else {}
    if values:
        report.slices = slice_summary(values, min(n_bootstrap, 2000), confidence, seed)
        if significance:
            report.slice_tests = slice_tests(ranked, values, metric, n_bootstrap, confidence, seed)
            report.winners = slice_winners(report.slices, report.slice_tests, metric)
    if out_dir is None:
        return report
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "runs.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "runs.md", to_markdown(table))
    report.files += [out_dir / "runs.csv", out_dir / "runs.md"]
    for name, frame in (("significance", sig), ("slices", report.slices), ("slice_significance", report.slice_tests),
                        ("slice_winners", report.winners)):
        if not frame.empty:
            with atomic_path(out_dir / f"{name}.csv") as tmp:
                frame.to_csv(tmp, index=False)
            report.files.append(out_dir / f"{name}.csv")
    if plots:
        safe = metric.replace("/", "_")
        if frames:
            summary = mean_with_ci(per_user_values(frames, metric), min(n_bootstrap, 2000), confidence, seed)
            report.files.append(plot_metric_ci(summary, table, labels, metric, out_dir / f"{safe}_ci.png",
                                               confidence))
        history = epoch_history(client, [r.info.run_id for r in runs], curve_metric)
        report.files.append(plot_learning_curves(history, table, labels, curve_metric,
                                                 out_dir / f"curves_{curve_metric.replace('/', '_')}.png"))
        if vs_param is not None:
            report.files.append(plot_metric_vs_param(table, vs_param, metric,
                                                     out_dir / f"{safe}_vs_{vs_param.replace('/', '_')}.png"))
        if not report.slices.empty:
            report.files.append(plot_metric_by_slice(report.slices, table, model_labels(runs), metric,
                                                     out_dir / f"{safe}_by_slice.png", confidence))
        settings = rerank_settings(runs)
        if tradeoff is None and (settings["rerank"] != "none").any():
            cutoff = metric.rpartition("_at_")[2]
            tradeoff = [f"test/{m}_at_{cutoff}" for m in TRADEOFF_METRICS]
        for beyond in tradeoff or ():
            if beyond in table.columns and table[beyond].notna().any():
                runs_with = table.drop(columns=["rerank", "rerank.trade_off"], errors="ignore").merge(settings)
                report.files.append(plot_tradeoff(runs_with, metric, beyond,
                                                  out_dir / f"{safe}_vs_{beyond.replace('/', '_')}.png"))
    return report


def rerank_settings(runs: Sequence) -> pd.DataFrame:
    """Each run's re-ranker (its ``rerank`` option, ``none`` without one) and ``rerank.trade_off`` (0 without)."""
    rows = [{"run_id": run.info.run_id, "rerank": rerank_option(run.data.params),
             "rerank.trade_off": float(run.data.params.get("rerank.trade_off", 0.0))} for run in runs]
    return pd.DataFrame(rows, columns=["run_id", "rerank", "rerank.trade_off"])


TEST_METRICS = ("test/ndcg_at_10", "test/recall_at_20", "test/rmse", "test/mae", "test/hr_at_10",
                "test/mrr_at_10")


def key_columns(table: pd.DataFrame, metric: str = "test/ndcg_at_10", n_metrics: int = 5) -> pd.DataFrame:
    """The columns a terminal shows of a runs table: run (:func:`unique_labels`), model, its re-ranker and trade-off
    when some run was re-ranked, dataset, split, seconds per epoch, the validation metric(s) the runs monitored and
    test metrics up to ``n_metrics`` metrics in all (``metric`` first, then ``TEST_METRICS`` the runs logged); when
    some run was ranked through an ANN index, its retrieval (exact or ann) and ``ann_recall`` at ``metric``'s K;
    ``_at_`` is written ``@``. The least important column comes last, the first one a narrow terminal leaves out."""
    monitored = list(dict.fromkeys(m for m in table["monitor"] if m in table.columns))
    tests = [m for m in dict.fromkeys([metric, *TEST_METRICS]) if m in table.columns and table[m].notna().any()]
    columns = list(dict.fromkeys(["model", "dataset", "split", "s_per_epoch", *monitored, *tests]))[:4 + n_metrics]
    view = table[columns].rename(columns=lambda c: "s/epoch" if c == "s_per_epoch" else c.replace("_at_", "@"))
    view.insert(0, "run", table["run_id"].map(unique_labels(table["run_id"], table["run_name"].fillna(""))))
    if "rerank" in table and (table["rerank"] != "none").any():  # re-ranked runs: which re-ranker, which setting
        trade_off = table.get("rerank.trade_off", pd.Series("", index=table.index)).fillna("").astype(str)
        view.insert(2, "rerank", (table["rerank"] + " " + trade_off.where(table["rerank"] != "none", "")).str.strip())
    if "s/epoch" in view:
        view["s/epoch"] = view["s/epoch"].where(view["s/epoch"] > 0)  # fitted without epochs: shown as "-"
    recall = f"{metric.split('/')[0]}/ann_recall_at_{metric.rsplit('_at_', 1)[1]}" if "_at_" in metric else None
    if recall in table and table[recall].notna().any():  # runs ranked through an ANN index (eval.retrieval=ann)
        view.insert(2, "retrieval", table[recall].notna().map({True: "ann", False: "exact"}))
        shown = metric.replace("_at_", "@")
        view.insert(view.columns.get_loc(shown) + 1 if shown in view else len(view.columns),
                    recall.replace("_at_", "@"), table[recall])
    return view


def key_significance(significance: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The paired tests as a terminal shows them: run labels instead of ids, the mean difference, its CI and the
    Holm-corrected p-values; on a ``(pooled)`` RMSE or MAE row the difference of the pooled values, whose interval
    is the test (no p-values), under a ``value`` column that says which row is which."""
    frame = significance
    view = pd.DataFrame({"run a": frame["run_a"].map(labels), "run b": frame["run_b"].map(labels),
                         "users": frame["n_users"], "mean a-b": frame["mean_diff"],
                         "ci low": frame["ci_low"], "ci high": frame["ci_high"],
                         "p t (Holm)": frame["t_pvalue_holm"], "p Wilcoxon (Holm)": frame["wilcoxon_pvalue_holm"]})
    if frame["metric"].nunique() > 1:  # RMSE and MAE: "mean of per-user" errors, then the "pooled" value
        view.insert(0, "value", frame["metric"].str.rpartition(" (")[2].str.rstrip(")"))
    return view
