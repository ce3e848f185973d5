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

from recforge.data.context import context_names
from recforge.errors import RecForgeError
from recforge.explain import explainer_for, records
from recforge.explain.base import Explainer, Histories, history_of, model_device
from recforge.explain.features import variable_names
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
    context = dm.query_context("test") if model.reads_context else None   # the context the test ranking scores in
    if isinstance(model, (FactorizationMachine, DeepFM)):
        fm = model.fm if isinstance(model, DeepFM) else model
        feature_names = dm.feature_names()  # the columns the model was built with, in their order
        user = feature_names.get("user_features", []) if fm.user_side.has_features else []
        item = feature_names.get("item_features", []) if fm.item_side.has_features else []
        names = variable_names(fm, user, item, context_names(dm.context_columns) if model.reads_context else None)
    features = dm.item_features
    titles = None
    if features is not None and "title" in features:
        titles = features["title"].fillna("").astype(str).tolist()
    return ExplainedRun(model, explainer_for(model, histories, dm.n_users, names, context), histories,
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
        scores = run.explainer.score_all(torch.tensor([user], device=device))[0].float()
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
        sections.append(Section(run.user_ids[user], len(history), hits,
                                records(explained, list(range(len(run.item_ids)))), explained.scores.tolist()))
    explainer = run.explainer
    header = {"model": type(run.model).__name__, "dataset": exp.datamodule.raw.name, "method": explainer.method,
              "exact": explainer.exact, "note": explainer.note, "k": k}
    text = (_html if format == "html" else _markdown)(header, sections, run)
    atomic_write_text(path, text)
    return Path(path)


@dataclass
class Section:
    """One sampled test user: raw id, history length, test items (indices), the explanations' JSON form
    (:func:`recforge.explain.records` with item indices) and the recommended items' scores."""

    user: Any
    n_history: int
    hits: set[int]
    record: dict[str, Any]
    scores: list[float]

    def heading(self, k: int) -> str:
        found = sum(entry["item"] in self.hits for entry in self.record["items"])
        return (f"User {self.user} · {self.n_history} history items · test items in the top {k}: {found} of "
                f"{len(self.hits)}")


def _label(run: ExplainedRun, item: int, markup: bool) -> str:
    """An item's title (where the dataset has them) and raw id, as text or HTML."""
    raw, title = str(run.item_ids[item]), run.titles[item] if run.titles is not None else ""
    if not title:
        return f"item {html.escape(raw) if markup else raw}"
    return f"{html.escape(title)} <span class=\"id\">#{html.escape(raw)}</span>" if markup else f"{title} · #{raw}"


def _reason_text(run: ExplainedRun, reason: dict[str, Any], score: float, exact: bool, markup: bool) -> str:
    if "feature" in reason:
        what = html.escape(reason["feature"]) if markup else reason["feature"]
    else:
        what = _label(run, reason["item"], markup)
    if "position" in reason:
        what += ", position 1 (the latest)" if reason["position"] == 1 else f", position {reason['position']}"
    weight = f"{reason['weight']:.3g}"
    if exact and score > 0:
        weight += f" ({100 * reason['weight'] / score:.0f}% of the score)"
    return f"{what}: {weight}"


def _rows(run: ExplainedRun, section: Section, markup: bool):
    """Per recommended item: rank, label, score, test hit, reason texts."""
    record = section.record
    for rank, (entry, score) in enumerate(zip(record["items"], section.scores), start=1):
        reasons = [_reason_text(run, r, score, record["exact"], markup) for r in entry["reasons"]]
        yield rank, _label(run, entry["item"], markup), score, entry["item"] in section.hits, reasons


def _shared(rows: list) -> list[str] | None:
    """The reasons when every item has the same ones (attention rollout's do not depend on the item), else None."""
    first = rows[0][4] if rows else []
    return first if len(rows) > 1 and first and all(row[4] == first for row in rows) else None


def _intro(header: dict[str, Any], method: str) -> list[str]:
    """The method line (``method``: its name as shown) and the legend."""
    kind = "exact: the score splits into such weights and a rest" if header["exact"] else \
        "not a decomposition of the score"
    return [f"Method: {method} ({kind}): {header['note']}.",
            f"Each sampled test user's top {header['k']}, leaving out the items the model read; ✓ marks one of the "
            f"user's test items."]


def _markdown(header: dict[str, Any], sections: list[Section], run: ExplainedRun) -> str:
    method, legend = _intro(header, f"`{header['method']}`")
    lines = [f"# Why these recommendations: {header['model']} on {header['dataset']}", "", method, "", legend, ""]
    for section in sections:
        lines += [f"## {section.heading(header['k'])}", ""]
        if section.record["note"] != header["note"]:
            lines += [f"_{section.record['note']}_", ""]
        rows = list(_rows(run, section, markup=False))
        shared = _shared(rows)
        if shared is not None:
            lines += ["The same reasons for every item:", ""] + [f"* {reason}" for reason in shared] + [""]
        lines += ["| # | recommended | score | test |" + ("" if shared else " reasons |"),
                  "|---|---|---|---|" + ("" if shared else "---|")]
        for rank, label, score, hit, reasons in rows:
            cells = [str(rank), label, f"{score:.4g}", "✓" if hit else ""]
            if shared is None:
                cells.append("<br>".join(reasons) or "none")
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:72em;color:#222}"
         "table{border-collapse:collapse;width:100%;table-layout:fixed;margin-bottom:2em}"
         "td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}th{background:#f0f0f0}"
         ".num{text-align:right}.hit{color:#080;font-weight:bold;text-align:center}.note{color:#555}"
         ".id{color:#888;font-size:.85em}ul{margin:0 0 1em;padding-left:1.2em}td ul{margin:0}"
         "col.rank{width:2.5em}col.item{width:34%}col.score{width:5em}col.test{width:3em}"
         "table.compact{width:auto;min-width:40em;table-layout:auto}table.compact col.item{width:auto}")


def _html(header: dict[str, Any], sections: list[Section], run: ExplainedRun) -> str:
    e = html.escape
    method, legend = _intro({**header, "note": e(header["note"])}, f"<code>{e(header['method'])}</code>")
    title = f"Why these recommendations: {e(header['model'])} on {e(header['dataset'])}"
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{title}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{title}</h1>",
             f"<p>{method}</p>", f"<p class=\"note\">{legend}</p>"]
    for section in sections:
        parts.append(f"<h2>{e(section.heading(header['k']))}</h2>")
        if section.record["note"] != header["note"]:
            parts.append(f"<p class=\"note\">{e(section.record['note'])}</p>")
        rows = list(_rows(run, section, markup=True))
        shared = _shared(rows)
        if shared is not None:
            parts.append("<p>The same reasons for every item:</p><ul>" + "".join(f"<li>{r}</li>" for r in shared)
                         + "</ul>")
        parts.append(("<table class=\"compact\">" if shared else "<table>")
                     + "<colgroup><col class=\"rank\"><col class=\"item\"><col class=\"score\"><col class=\"test\">"
                     + ("" if shared else "<col>") + "</colgroup><tr><th>#</th>"
                     "<th>recommended</th><th class=\"num\">score</th><th>test</th>"
                     + ("" if shared else "<th>reasons</th>") + "</tr>")
        for rank, label, score, hit, reasons in rows:
            cells = (f"<td>{rank}</td><td>{label}</td><td class=\"num\">{score:.4g}</td>"
                     f"<td class=\"hit\">{'✓' if hit else ''}</td>")
            if shared is None:
                cells += "<td><ul>" + ("".join(f"<li>{r}</li>" for r in reasons) or "<li>none</li>") + "</ul></td>"
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
