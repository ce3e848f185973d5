"""Explanations of a trained run's test users as a readable report (HTML or Markdown), for ``recforge-eval``.

The model reads the test stage's histories (training, fold-in and validation interactions), as it is evaluated;
each sampled test user's top-``k`` leaves those items out, and each recommended item is shown with its reasons,
item titles where the dataset has them, and whether it is one of the user's test items.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recforge.errors import RecForgeError
from recforge.explain import explainer_for, records
from recforge.explain.base import Explainer, Histories, history_of, model_device
from recforge.explain.features import frame_feature_names, variable_names
from recforge.models.deepfm import DeepFM
from recforge.models.fm import FactorizationMachine
from recforge.utils.io import atomic_write_text

FORMATS = ("html", "md")


@dataclass
class ExplainedRun:
    """A trained model ready to explain on its data: the model reads the test stage's histories."""

    model: torch.nn.Module
    explainer: Explainer
    histories: Histories
    item_ids: list[Any]
    user_ids: np.ndarray
    titles: list[str] | None  # item titles where the dataset has them


def explained_run(exp) -> ExplainedRun:
    """Prepare an experiment (``recforge.pipeline.Experiment`` with trained weights) for explanations."""
    dm, model = exp.datamodule, exp.model
    indptr, items = dm.histories("test")
    if model.reads_histories:
        model.set_histories(indptr.to(model_device(model)), items.to(model_device(model)))
    histories = Histories(indptr, items)
    names = None
    if isinstance(model, (FactorizationMachine, DeepFM)):
        fm = model.fm if isinstance(model, DeepFM) else model
        user = frame_feature_names(dm.user_features) if fm.user_side.has_features else []
        item = frame_feature_names(dm.item_features) if fm.item_side.has_features else []
        names = variable_names(fm, user, item)
    features = dm.item_features
    titles = None
    if features is not None and "title" in features:
        titles = features["title"].fillna("").astype(str).tolist()
    return ExplainedRun(model, explainer_for(model, histories, dm.n_users, names), histories,
                        dm.id_maps.items.tolist(), dm.id_maps.users, titles)


def sample_test_users(exp, n: int, seed: int) -> list[int]:
    """``n`` test users (indices) drawn without replacement with ``seed``, in index order."""
    users = np.unique(exp.datamodule.split.test["user"].to_numpy())
    chosen = np.random.default_rng(seed).choice(users, size=min(n, len(users)), replace=False)
    return sorted(chosen.tolist())


def top_items(run: ExplainedRun, user: int, k: int) -> torch.Tensor:
    """The model's top-``k`` for ``user`` outside the history it is explained from."""
    device = model_device(run.model)
    with torch.no_grad():
        scores = run.model.score_all(torch.tensor([user], device=device))[0].float()
    scores[history_of(run.model, user, run.histories)] = -torch.inf
    return torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices


def write_report(exp, path: str | Path, users: int = 20, k: int = 10, reasons: int = 5, format: str = "html",
                 seed: int = 0) -> Path:
    """Explain the top-``k`` of ``users`` sampled test users (``reasons`` each) into ``path`` as ``format``."""
    if format not in FORMATS:
        raise RecForgeError(f"report.format={format} is not one of {', '.join(FORMATS)}; e.g. report.format=md")
    for key, value in (("users", users), ("k", k), ("reasons", reasons)):
        if not isinstance(value, int) or value < 1:
            raise RecForgeError(f"report.{key}={value} must be a positive integer, e.g. report.{key}=10")
    run = explained_run(exp)
    test = exp.datamodule.split.test
    sections = []
    for user in sample_test_users(exp, users, seed):
        items = top_items(run, user, k)
        explained = run.explainer.explain(user, items, reasons)
        history = history_of(run.model, user, run.histories)
        hits = set(test.loc[test["user"] == user, "item"].tolist())
        sections.append((run.user_ids[user], len(history), records(explained, list(range(len(run.item_ids)))),
                         explained, hits))
    explainer = run.explainer
    header = {"model": type(run.model).__name__, "dataset": exp.datamodule.raw.name, "method": explainer.method,
              "exact": explainer.exact, "note": explainer.note}
    text = (_html if format == "html" else _markdown)(header, sections, run)
    atomic_write_text(path, text)
    return Path(path)


def _label(run: ExplainedRun, item: int) -> str:
    """An item's raw id and, where the dataset has them, its title."""
    title = run.titles[item] if run.titles is not None else ""
    return f"{title} ({run.item_ids[item]})" if title else f"item {run.item_ids[item]}"


def _reason_text(run: ExplainedRun, reason: dict[str, Any], score: float, exact: bool) -> str:
    what = reason["feature"] if "feature" in reason else _label(run, reason["item"])
    weight = f"{reason['weight']:.4g}"
    if exact and score > 0:
        weight += f", {100 * reason['weight'] / score:.0f}% of the score"
    where = f" [position {reason['position']}]" if "position" in reason else ""
    return f"{what}{where}: {weight}"


def _rows(run: ExplainedRun, record: dict[str, Any], explained, hits: set[int]):
    """Per recommended item: rank, label, score, test hit, reason texts."""
    for rank, (entry, score) in enumerate(zip(record["items"], explained.scores.tolist()), start=1):
        reasons = [_reason_text(run, r, score, record["exact"]) for r in entry["reasons"]]
        yield rank, _label(run, entry["item"]), score, entry["item"] in hits, reasons


def _markdown(header: dict[str, Any], sections, run: ExplainedRun) -> str:
    lines = [f"# Why these recommendations: {header['model']} on {header['dataset']}", "",
             f"Method: `{header['method']}` ({'exact' if header['exact'] else 'not a decomposition of the score'}): "
             f"{header['note']}.", "",
             "Each test user's top items, leaving out the items the model read; ✓ marks one of the user's test "
             "items.", ""]
    for user, n_history, record, explained, hits in sections:
        lines += [f"## User {user} ({n_history} history items)", ""]
        if record["note"] != header["note"]:
            lines += [f"_{record['note']}_", ""]
        lines += ["| # | recommended | score | test | reasons |", "|---|---|---|---|---|"]
        for rank, label, score, hit, reasons in _rows(run, record, explained, hits):
            cells = [str(rank), label, f"{score:.4g}", "✓" if hit else "", "<br>".join(reasons) or "none"]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _html(header: dict[str, Any], sections, run: ExplainedRun) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Why these recommendations: {e(header['model'])} on {e(header['dataset'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;width:100%;"
        "margin-bottom:2em}td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}"
        "th{background:#f0f0f0}.hit{color:#080;font-weight:bold}.note{color:#555}ul{margin:0;padding-left:1.2em}"
        "</style></head><body>",
        f"<h1>Why these recommendations: {e(header['model'])} on {e(header['dataset'])}</h1>",
        f"<p>Method: <code>{e(header['method'])}</code> "
        f"({'exact' if header['exact'] else 'not a decomposition of the score'}): {e(header['note'])}.</p>",
        "<p class=\"note\">Each test user's top items, leaving out the items the model read; ✓ marks one of the "
        "user's test items.</p>"]
    for user, n_history, record, explained, hits in sections:
        parts.append(f"<h2>User {e(str(user))} ({n_history} history items)</h2>")
        if record["note"] != header["note"]:
            parts.append(f"<p class=\"note\">{e(record['note'])}</p>")
        parts.append("<table><tr><th>#</th><th>recommended</th><th>score</th><th>test</th><th>reasons</th></tr>")
        for rank, label, score, hit, reasons in _rows(run, record, explained, hits):
            items = "".join(f"<li>{e(r)}</li>" for r in reasons) or "<li>none</li>"
            parts.append(f"<tr><td>{rank}</td><td>{e(label)}</td><td>{score:.4g}</td>"
                         f"<td class=\"hit\">{'✓' if hit else ''}</td><td><ul>{items}</ul></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
