"""Select tracked runs and tabulate them: what ``recforge-compare`` and ``notebooks/compare_runs.ipynb`` build on.

Runs are selected from any MLflow tracking store (the local SQLite file ``recforge-train`` writes by default, or
a tracking server's ``http://`` URI) by experiment name, run ids, an MLflow filter string
(``"metrics.\\`test/ndcg_at_10\\` > 0.1"``, ``"params.\\`model._target_\\` LIKE '%EASE'"``) and tags.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence

import pandas as pd

from recforge.errors import RecForgeError
from recforge.tracking.client import final_metrics, get_run
from recforge.utils.options import matching_option

log = logging.getLogger("recforge")

# "monitor" is an id column, so HIDDEN_PARAM_PREFIXES keeps the param of that name out of the param columns
ID_COLUMNS = ["run_id", "run_name", "model", "model_class", "dataset", "split", "split_fingerprint", "rerank",
              "monitor", "status"]
COST_COLUMNS = {"time/s_per_epoch": "s_per_epoch", "params/n_parameters": "n_parameters"}
HIDDEN_PARAM_PREFIXES = ("paths.", "tracking.", "hydra", "datamodule.cache", "callbacks.", "trainer.enable",
                         "trainer.default_root_dir", "task_name", "optimized_metric", "monitor", "data_report.")
OPTION_PARAMS = ("model", "data", "split", "loss", "sampler", "optimizer", "scheduler", "rerank")  # option_name


def parse_tags(tags: Sequence[str]) -> dict[str, str]:
    """``["model=EASE", "dataset=ml-100k"]`` -> ``{"model": "EASE", ...}``."""
    out = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise RecForgeError(f"--tag {tag!r}: write tags as key=value, e.g. --tag model=EASE")
        out[key] = value
    return out


def select_runs(client, experiments: Sequence[str] = (), run_ids: Sequence[str] = (), filter_string: str = "",
                tags: dict[str, str] | None = None, include_failed: bool = False, max_results: int = 1000) -> list:
    """Runs by id (in the given order), else the runs of ``experiments`` matching ``filter_string`` and ``tags``.

    With run ids, ``filter_string`` and ``tags`` still filter them. Failed and running runs are left out unless
    ``include_failed``. Runs come back oldest first, so tables and plots keep a stable order.
    """
    from mlflow.exceptions import MlflowException

    clauses = [filter_string] if filter_string else []
    clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    if not include_failed:
        clauses.append("attributes.status = 'FINISHED'")
    query = " AND ".join(clauses)
    if run_ids:
        runs = [get_run(client, run_id) for run_id in dict.fromkeys(run_ids)]
        experiment_ids = sorted({r.info.experiment_id for r in runs})
        wanted = ", ".join(f"'{r.info.run_id}'" for r in runs)
        query = " AND ".join([*clauses, f"attributes.run_id IN ({wanted})"])
        try:
            matching = {r.info.run_id for r in client.search_runs(experiment_ids, query, max_results=len(runs))}
        except MlflowException as exc:
            raise RecForgeError(f"bad filter {query!r}: {exc.message.splitlines()[0]}") from None
        dropped = [f"{r.info.run_id} ({r.info.status})" for r in runs if r.info.run_id not in matching]
        if dropped:
            log.warning("left out by the filter%s: %s", "" if include_failed else " or not FINISHED",
                        ", ".join(dropped))
        return [r for r in runs if r.info.run_id in matching]
    names = list(experiments) or ["recforge"]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(e.name for e in client.search_experiments())
            raise RecForgeError(f"experiment {name!r} not found in {client.tracking_uri}; known: "
                                f"{', '.join(known) or 'none'} (recforge-train logs into 'recforge' unless "
                                "tracking.experiment_name=<name> says otherwise; select a dataset or model with "
                                "--tag dataset=ml-100k or --tag model=<class>)")
        ids.append(experiment.experiment_id)
    try:
        runs = client.search_runs(ids, query, max_results=max_results, order_by=["attributes.start_time ASC"])
    except MlflowException as exc:
        raise RecForgeError(f"bad filter {query!r}: {exc.message.splitlines()[0]}") from None
    return list(runs)


def option_name(run, group: str) -> str:
    """The config option of ``group`` a run used (``model``: ``bpr``, ``split``: ``leave_one_out``): the param of that
    name runs log since the option names became params; for older runs, found from the logged values
    (:func:`recforge.utils.options.matching_option`); else the class of its ``_target_`` (or "")."""
    params = run.data.params
    return params.get(group) or matching_option(group, params) \
        or params.get(f"{group}._target_", "").rsplit(".", 1)[-1]


def rerank_option(params: dict[str, str]) -> str:
    """The re-ranker a run's lists were re-ranked by (its ``rerank`` option), ``none`` without one."""
    option = params.get("rerank", "none")
    return "none" if option in ("None", "") else option


def varying_params(runs: Sequence) -> list[str]:
    """The "key params" of a comparison: every ``model.*`` hyperparameter, and any other parameter that takes
    two or more values among the runs that have it (output folders and tracking settings left out, and the
    option names and classes the id columns show: ``model``, ``split``, ``rerank``)."""
    keys = sorted({k for r in runs for k in r.data.params
                   if not k.startswith(HIDDEN_PARAM_PREFIXES) and k not in OPTION_PARAMS})

    def differs(key: str) -> bool:
        return len({r.data.params[key] for r in runs if key in r.data.params}) > 1

    classes = ("model._target_", "rerank._target_")
    chosen = [k for k in keys if k not in classes and (k.startswith("model.") or differs(k))]
    return sorted(chosen, key=lambda k: (not k.startswith("model."), k))


def runs_table(runs: Sequence, metrics: Sequence[str] | None = None,
               params: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: ids, model (the config option, e.g. ``bpr``, and its class), dataset, split (option and
    fingerprint), the monitored metric, the chosen (default: varying) params, val/test metrics and costs.

    ``metrics`` defaults to every ``val/*`` and ``test/*`` metric the runs logged except the per-slice ones
    (``test/ndcg_at_10/users_cold``: the slice report has those); missing values are NaN.
    """
    if not runs:
        raise RecForgeError("no runs selected: check the experiment name, run ids, filter or tags")
    params = list(params) if params is not None else varying_params(runs)
    if metrics is None:
        found = {k for r in runs for k in r.data.metrics if k.startswith(("val/", "test/")) and k.count("/") == 1}
        metrics = sorted(found, key=lambda k: (not k.startswith("val/"), k))
    rows = []
    for run in runs:
        tags, values = run.data.tags, final_metrics(run.data.metrics)
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name,
               "model": option_name(run, "model") or tags.get("model", ""),
               "model_class": tags.get("model", ""), "dataset": tags.get("dataset", ""),
               "split": option_name(run, "split"), "split_fingerprint": tags.get("split_fingerprint", ""),
               "rerank": rerank_option(run.data.params),
               "monitor": run.data.params.get("monitor", ""), "status": run.info.status}
        row.update({p: run.data.params.get(p) for p in params})
        row.update({m: values.get(m, math.nan) for m in metrics})
        row.update({name: values.get(key, math.nan) for key, name in COST_COLUMNS.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=ID_COLUMNS + list(params) + list(metrics) + list(COST_COLUMNS.values()))


def to_markdown(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else float_format.format(value)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_text(frame: pd.DataFrame, width: int = 120, min_text: int = 10) -> str:
    """``frame`` as a plain-text table no wider than ``width`` characters (numbers right-aligned, missing as ``-``):
    the widest text columns are cut first (in the middle, to no fewer than ``min_text`` characters, the cut marked
    ``…``), then columns are left out from the right, and a last line names them."""
    columns = list(frame.columns)
    cells = {c: [_text_cell(v, frame[c]) for v in frame[c]] for c in columns}
    numeric = {c: pd.api.types.is_numeric_dtype(frame[c]) for c in columns}
    widths = {c: max([len(str(c)), *map(len, cells[c])]) for c in columns}
    dropped = []
    while len(columns) > 1 and sum(widths[c] for c in columns) + 2 * (len(columns) - 1) > width:
        excess = sum(widths[c] for c in columns) + 2 * (len(columns) - 1) - width
        floor = {c: max(min_text, len(str(c))) for c in columns if not numeric[c]}
        cuttable = [c for c in floor if widths[c] > floor[c]]
        if cuttable:
            widest = max(cuttable, key=lambda c: widths[c])
            widths[widest] = max(floor[widest], widths[widest] - excess)
        else:
            dropped.append(columns.pop())

    def fit(text: str, c) -> str:
        if len(text) > widths[c]:  # cut in the middle: a label's end (a run id) tells runs apart
            head = widths[c] // 2
            text = text[:head] + "…" + text[len(text) - (widths[c] - head - 1):]
        return text.rjust(widths[c]) if numeric[c] else text.ljust(widths[c])

    lines = ["  ".join(fit(str(c), c) for c in columns).rstrip()]
    lines += ["  ".join(fit(cells[c][i], c) for c in columns).rstrip() for i in range(len(frame))]
    if dropped:
        lines += textwrap.wrap(f"(not shown for width: {', '.join(map(str, reversed(dropped)))})", width)
    return "\n".join(lines)


def _text_cell(value, column: pd.Series) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if column.abs().max() < 10 else f"{value:.1f}"
    return str(value)


def epoch_history(client, run_ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Long frame (run_id, epoch, value): ``metric`` (e.g. ``val/ndcg_at_10``) after each training epoch, epoch 1
    being the first.

    Lightning logs a validation metric at the step where an epoch's training ended, beside ``train/loss`` and an
    ``epoch`` metric; the final validation of the best checkpoint comes after training and is left out. A run
    without training epochs (EASE, ItemKNN, popularity) has one row, its final value, with epoch NaN.
    """
    rows = []
    for run_id in run_ids:
        epochs = {m.step: m.value + 1 for m in client.get_metric_history(run_id, "epoch")}
        trained = {m.step for m in client.get_metric_history(run_id, "train/loss")}
        values = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        points = [(run_id, epochs[m.step], m.value) for m in values if m.step in trained and m.step in epochs]
        if not points and values:
            points = [(run_id, math.nan, values[-1].value)]
        rows += points
    return pd.DataFrame(rows, columns=["run_id", "epoch", "value"])
