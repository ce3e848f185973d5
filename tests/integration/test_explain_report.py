"""``recforge-eval ... report.users=N`` writes a readable explanations report of sampled test users, and
``scripts/explain_faithfulness.py`` measures a run's explanations (tiny synthetic data; ML-100K with item titles
when the real datasets are there)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from recforge.errors import RecForgeError
from recforge.eval import evaluate
from recforge.train import train
from tests.conftest import REPO, compose_train, shared_datasets


def load_script():
    spec = importlib.util.spec_from_file_location("explain_faithfulness", REPO / "scripts" / "explain_faithfulness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory):
    """A tiny EASE run (fitted in closed form, no epochs) and its checkpoint."""
    tmp = tmp_path_factory.mktemp("ease_run")
    cfg = compose_train(["data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "tracking=none",
                         "model=ease", "model.l2_reg=10"], tmp)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", tmp


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_eval_writes_an_explanations_report(ease_run, fmt):
    ckpt, tmp = ease_run
    cfg = compose_train([f"ckpt_path={ckpt}", "report.users=3", "report.k=4", "report.reasons=2",
                         f"report.format={fmt}"], tmp / fmt, config_name="eval")
    evaluate(cfg)
    text = (Path(cfg.paths.output_dir) / f"explanations.{fmt}").read_text(encoding="utf-8")
    assert "Why these recommendations: EASE on synthetic" in text and "item_weights" in text
    assert text.count("User ") == 3 and "% of the score" in text
    if fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and text.count("<tr>") == 3 * (4 + 1)
    else:
        assert text.count("| 4 | item ") == 3  # each user's 4th item, labelled by raw id (no titles here)


@pytest.mark.parametrize("override,message", [("report.format=pdf", "report.format=pdf is not one of html, md"),
                                              ("+report.colour=red", "report.colour is not a key of report"),
                                              ("report.k=0", "report.k=0 must be a positive integer")])
def test_report_mistakes_name_the_key(ease_run, override, message):
    ckpt, tmp = ease_run
    cfg = compose_train([f"ckpt_path={ckpt}", "report.users=2", override], tmp / "bad", config_name="eval")
    with pytest.raises(RecForgeError, match=message):
        evaluate(cfg)


def test_faithfulness_script_measures_a_run(ease_run, capsys):
    ckpt, tmp = ease_run
    out = tmp / "faithfulness.md"
    load_script().main(["--ckpt", str(ckpt), "--label", "tiny", "--users", "30", "--k", "3", "--remove", "2",
                        "--draws", "2", "--output", str(out)])
    rows = out.read_text().splitlines()
    assert rows[0] == capsys.readouterr().out.splitlines()[0] and len(rows) == 3
    cells = [cell.strip() for cell in rows[2].strip("|").split("|")]
    assert cells[:3] == ["EASE (tiny)", "item_weights", "history_removal"]
    pairs, reasons, random = int(cells[3]), float(cells[4]), float(cells[5])
    assert pairs > 0 and reasons > random and cells[8] == "100%"  # its own ranking: the counterfactual is exact


@pytest.mark.data
@pytest.mark.skipif(shared_datasets() is None, reason="the real datasets folder is absent")
def test_report_on_movielens_shows_titles(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_DATA_DIR", str(shared_datasets()))
    cfg = compose_train(["data=ml-100k", "model=itemknn", "tracking=none"], tmp_path)
    train(cfg)
    eval_cfg = compose_train([f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'best.ckpt'}",
                              "report.users=2", "report.format=md"], tmp_path / "eval", config_name="eval")
    evaluate(eval_cfg)
    text = (Path(eval_cfg.paths.output_dir) / "explanations.md").read_text(encoding="utf-8")
    assert "ItemKNN on ml-100k" in text and " (19" in text  # titles carry their year, e.g. "Star Wars (1977)"
