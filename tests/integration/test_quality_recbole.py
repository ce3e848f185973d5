"""``scripts/quality_recbole.py``: RecForge's side on tiny synthetic data and the RecBole atomic files it writes,
read back: the same split, and for sequential models the same input histories RecForge's models read. RecBole's
side runs (marked slow) only where its interpreter exists (/tmp/rbvenv; CI has no RecBole)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recforge.pipeline import build_datamodule

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
RECBOLE_PYTHON = Path("/tmp/rbvenv/bin/python")
needs_recbole = pytest.mark.skipif(not RECBOLE_PYTHON.is_file(), reason="RecBole 1.2.1's interpreter "
                                   "/tmp/rbvenv/bin/python is absent (CI has no RecBole): RecBole's side not run")
TINY = ["data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "trainer.max_epochs=2",
        "datamodule.batch_size=256"]


@pytest.fixture
def quality(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports bench and reproduce beside it
    monkeypatch.setenv("RECFORGE_CACHE_DIR", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("quality_recbole", SCRIPTS / "quality_recbole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    logging.disable(logging.NOTSET)  # main() quiets logging for its run


def read_back(folder: Path, part: str, users: pd.Index, items: pd.Index) -> pd.DataFrame:
    frame = pd.read_csv(folder / f"rf.{part}.inter", sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame["user"] = users[frame["user_id"].astype(int)]
    frame["item"] = items[frame["item_id"].astype(int)]
    if "item_id_list" in frame:
        frame["history"] = [list(items[[int(i) for i in h.split()]]) for h in frame["item_id_list"]]
    return frame


def test_atomic_files_round_trip_to_recforges_split_and_histories(quality, tmp_path):
    side = quality.recforge_side("synthetic", "leave_one_out", "bpr", TINY, tmp_path)
    assert side["epochs"] == 2 and side["best_epoch"] in (1, 2) and 0 < side["ndcg_at_10"] <= side["recall_at_10"]
    out = tmp_path / "out"
    parts, users, items = quality.coded_split(out)
    shuffled = {part: frame.sample(frac=1.0, random_state=0) for part, frame in parts.items()}  # time orders them
    quality.export_atomic(quality.atomic_parts(shuffled, quality.SEQUENTIAL, max_len=5), tmp_path / "rb", "rf")
    dm = build_datamodule(OmegaConf.load(out / "config.yaml"), "implicit")  # the run's split, from its cache
    raw_user, raw_item = dm.id_maps.users, dm.id_maps.items
    back = {part: read_back(tmp_path / "rb", part, users, items) for part in ("train", "valid", "test", "seen")}
    known = pd.concat([dm.split.train, dm.split.val])  # the test mask: every training pair, each user's first too
    assert sorted(zip(back["seen"]["user"], back["seen"]["item"])) == sorted(
        zip(raw_user[known["user"]], raw_item[known["item"]]))
    for part, split in (("valid", dm.split.val), ("test", dm.split.test)):
        assert sorted(zip(back[part]["user"], back[part]["item"])) == sorted(
            zip(raw_user[split["user"]], raw_item[split["item"]]))
        indptr, inputs = dm.histories("val" if part == "valid" else "test")
        expected = {raw_user[u]: list(raw_item[inputs[indptr[u]:indptr[u + 1]].numpy()][-5:])
                    for u in np.unique(split["user"])}
        assert {u: h for u, h in zip(back[part]["user"], back[part]["history"])} == expected
    # training rows: every training pair but each user's first in time order, after its (latest 5) predecessors
    train = dm.split.train
    firsts = pd.DataFrame({"u": raw_user[train["user"]], "i": raw_item[train["item"]]}).iloc[
        np.lexsort((train["timestamp"].to_numpy(), train["user"].to_numpy()))].drop_duplicates("u")
    assert len(back["train"]) == len(train) - len(firsts)
    assert not set(zip(back["train"]["user"], back["train"]["item"])) & set(zip(firsts["u"], firsts["i"]))
    sequences = dm.train_sequences().numpy()
    for user, group in back["train"].groupby("user", sort=False):
        sequence = list(raw_item[sequences[1][raw_user[sequences[0]] == user]])
        assert list(group["item"]) == sequence[1:]
        assert [h for h in group["history"]] == [sequence[max(0, i - 5):i] for i in range(1, len(sequence))]


def test_features_become_recbole_tokens_and_one_flag_sequence(quality):
    frame = pd.DataFrame({"age": [24, 53, np.nan], "gender": ["M", "F", "M"], "title": ["a", "b", "c"],
                          "genre_Action": [1, 0, 0], "genre_Film-Noir": [1, 1, 0]}, index=[7, 8, 9])
    fields = quality.atomic_features(frame, "item", max_categories=2)
    assert list(fields.columns) == ["age:token", "gender:token", "item_flags:token_seq"]  # title: 3 values > 2
    assert fields["age:token"].tolist() == ["24", "53", ""]
    assert fields["item_flags:token_seq"].tolist() == ["genre_Action genre_Film_Noir", "genre_Film_Noir", "none"]


@pytest.mark.slow
@needs_recbole
def test_both_sides_rows_json_out_and_resume(quality, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rows.jsonl"
    argv = ["--data", "synthetic", "--split", "random", "--models", "bpr", "ials", "--recbole", str(RECBOLE_PYTHON),
            "--override", *TINY, "--recbole-override", "epochs=2", "--json-out", str(out)]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    bpr, ials = (json.loads(line) for line in printed[:2])
    assert ials == {"dataset": "synthetic", "split": "random", "model": "ials", "recbole_model": None,
                    "note": "RecBole 1.2.1 has no ials"}
    rb = bpr["recbole"]
    assert rb["epochs"] == 2 and rb["best_epoch"] in (1, 2)
    for key in quality.METRICS:  # RecForge's metric code on RecBole's ranking == RecBole's evaluator (4 decimals)
        assert rb[key] == pytest.approx(rb["reported"][key], abs=6e-5)
    assert bpr["ratio_ndcg_at_10"] == pytest.approx(bpr["recforge"]["ndcg_at_10"] / rb["ndcg_at_10"])
    assert printed[-3].startswith("| synthetic | random | ials | - | RecBole 1.2.1 has no ials |")
    below = bpr["ratio_ndcg_at_10"] < 0.98
    assert printed[-1] == "NDCG@10 ratio below the target 0.98: " + (
        f"synthetic/random/bpr {bpr['ratio_ndcg_at_10']:.2f}" if below else "none")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [bpr, ials]
    monkeypatch.setattr(quality, "compare", lambda *args: pytest.fail("a row in --json-out ran again"))
    assert quality.main(argv) == 0  # resumed: both rows come from the file
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()[:2]] == [bpr, ials]
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.slow
@needs_recbole
def test_a_recbole_side_paused_every_epoch_trains_as_the_uninterrupted_one(quality, tmp_path, capsys):
    """Negatives (BPR), a plain counter (Mult-VAE's annealing step), dropout (SASRec) and two optimizers taking turns
    (RecVAE's encoder and decoder): four sittings of one epoch each end where one sitting of four epochs does, to the
    last digit."""
    models = ["bpr", "multvae", "sasrec", "recvae"]
    base = ["--data", "synthetic", "--split", "leave_one_out", "--models", *models,
            "--recbole", str(RECBOLE_PYTHON), "--override", *TINY, "--recbole-override", "epochs=4"]
    assert quality.main(base) == 0
    whole = [json.loads(line) for line in capsys.readouterr().out.splitlines()[:len(models)]]
    argv = [*base, "--work-dir", str(tmp_path / "state"), "--recbole-budget-min", "0"]
    for sitting in (1, 2, 3):
        assert quality.main(argv) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()[:len(models)]]
        assert [r["note"].split(" (")[0] for r in rows] == [f"RecBole's side paused after epoch {sitting}"] * 4
    assert quality.main(argv) == 0
    last = [json.loads(line) for line in capsys.readouterr().out.splitlines()[:len(models)]]
    for one, four in zip(whole, last):
        assert four["recbole"]["epochs"] == 4
        assert {k: four["recbole"][k] for k in (*quality.METRICS, "best_epoch", "reported")} == \
            {k: one["recbole"][k] for k in (*quality.METRICS, "best_epoch", "reported")}
    assert list((tmp_path / "state").iterdir()) == []


@pytest.mark.slow
@needs_recbole
def test_a_recbole_side_stopped_after_its_last_validation_only_tests(quality, tmp_path):
    """A sitting killed between its last validation and its test: the next one trains nothing and tests the same
    best epoch; a state saved for other input is set aside, not continued."""
    quality.recforge_side("synthetic", "random", "bpr", TINY, tmp_path)
    side = lambda: quality.recbole_side(str(RECBOLE_PYTHON), quality.GENERAL, "BPR", {}, {"epochs": 2},  # noqa: E731
                                        tmp_path, keep_state=True)
    first = side()
    saved = [tmp_path / "recbole_state" / name for name in ("state.pth", "best.pth")]
    written = [path.stat().st_mtime_ns for path in saved]
    again = side()
    assert {k: again[k] for k in (*quality.METRICS, "epochs", "best_epoch", "reported")} == \
        {k: first[k] for k in (*quality.METRICS, "epochs", "best_epoch", "reported")}
    assert [path.stat().st_mtime_ns for path in saved] == written  # no epoch trained, no checkpoint written
    other = quality.recbole_side(str(RECBOLE_PYTHON), quality.GENERAL, "BPR", {}, {"epochs": 3}, tmp_path,
                                 keep_state=True)
    assert other["epochs"] == 3 and (tmp_path / "recbole_state" / "state.stale").is_file()


def test_json_out_keys_rows_by_their_overrides_and_rerun_runs_them_again(quality, tmp_path, capsys, monkeypatch):
    """A row is skipped only when --json-out has the same comparison (pair, model, both sides' overrides); a pair
    RecBole cannot compare is skipped whatever the overrides; --rerun runs every row again."""
    out = tmp_path / "rows.jsonl"
    calls = []

    def compare(data, split, model, args, recbole_overrides, known=None):
        calls.append((model, tuple(args.override)))
        if model == "ials":
            return {"dataset": data, "split": split, "model": model, "recbole_model": None, "note": "no ials"}
        metrics = dict.fromkeys(quality.METRICS, 0.1)
        return {"dataset": data, "split": split, "model": model, "recbole_model": "BPR",
                "recforge": {**metrics, "epochs": 1, "best_epoch": 1, "wall_s": 0.0},
                "recbole": {**metrics, "epochs": 1, "best_epoch": 1, "wall_s": 0.0}, "ratio_ndcg_at_10": 1.0,
                "overrides": args.override, "recbole_overrides": recbole_overrides}

    monkeypatch.setattr(quality, "compare", compare)
    argv = ["--data", "synthetic", "--split", "random", "--models", "bpr", "ials", "--recbole", sys.executable,
            "--json-out", str(out)]
    assert quality.main(argv) == 0
    assert quality.main(argv) == 0
    assert calls == [("bpr", ()), ("ials", ())]
    assert quality.main([*argv, "--override", "seed=7"]) == 0
    assert calls[2:] == [("bpr", ("seed=7",))]
    assert quality.main([*argv, "--rerun"]) == 0
    assert calls[3:] == [("bpr", ()), ("ials", ())]
    assert len(out.read_text().splitlines()) == 5
    capsys.readouterr()


def test_recbole_side_is_reused_only_on_byte_identical_input(quality, tmp_path, monkeypatch):
    """A rerun after a RecForge default changed trains RecBole again only if what RecBole is given changed."""
    calls = []

    def fake_fit(python, script, argv, workdir):
        calls.append(json.loads(Path(argv[0]).read_text())["config"].get("epochs"))
        return {"metrics": dict.fromkeys(quality.METRICS, 0.2), "epochs": 3, "best_epoch": 2, "reported": {},
                "wall_s": 1.0}

    monkeypatch.setattr(quality, "recbole_json", fake_fit)
    quality.recforge_side("synthetic", "random", "bpr", TINY, tmp_path)
    known = {}
    first = quality.recbole_side(sys.executable, quality.GENERAL, "BPR", {}, {"epochs": 3}, tmp_path, known)
    assert calls == [3] and "reused" not in first and len(first["input"]) == 20
    quality.remember(known, {"recbole": first})
    again = quality.recbole_side(sys.executable, quality.GENERAL, "BPR", {}, {"epochs": 3}, tmp_path, known)
    assert calls == [3] and again == {**first, "reused": True}
    elsewhere = tmp_path / "another_run"  # a later process: the same split exported into another temporary folder
    shutil.copytree(tmp_path / "out", elsewhere / "out")
    moved = quality.recbole_side(sys.executable, quality.GENERAL, "BPR", {}, {"epochs": 3}, elsewhere, known)
    assert calls == [3] and moved == {**first, "reused": True}
    other = quality.recbole_side(sys.executable, quality.GENERAL, "BPR", {}, {"epochs": 4}, tmp_path, known)
    assert calls == [3, 4] and other["input"] != first["input"]
    folder = tmp_path / "recbole"  # the files RecBole read: one changed byte is a new input
    inter = sorted(folder.rglob("*.train.inter"))[0]
    digest = quality.input_digest("BPR", {"epochs": 3}, folder)
    lines = inter.read_text().splitlines(keepends=True)
    inter.write_text("".join([lines[0], lines[2], lines[1], *lines[3:]]))  # two rows swapped
    assert quality.input_digest("BPR", {"epochs": 3}, folder) != digest


def test_work_dir_keeps_an_unfinished_row_and_the_next_sitting_goes_on_from_it(quality, tmp_path, monkeypatch, capsys):
    """--work-dir: RecForge's side trains once, RecBole's sitting is told where its state lives and its budget; a
    paused row is printed, not stored, and keeps its folder; the row that finishes is stored and its folder goes."""
    sittings, trained = [], []
    real_side = quality.recforge_side

    def recforge_side(*args):
        trained.append(args[2])
        return real_side(*args)

    def fake_fit(python, script, argv, workdir):
        spec = json.loads(Path(argv[0]).read_text())
        sittings.append((spec["state_dir"], spec["budget_s"]))
        if len(sittings) < 3:
            return {"model": "BPR", "paused": True, "epoch": 2 * len(sittings), "best_valid": 0.1, "wall_s": 9.0,
                    "valid_metric": "NDCG@10"}
        return {"metrics": dict.fromkeys(quality.METRICS, 0.2), "epochs": 6, "best_epoch": 5, "wall_s": 27.0,
                "reported": {}}

    monkeypatch.setattr(quality, "recforge_side", recforge_side)
    monkeypatch.setattr(quality, "recbole_json", fake_fit)
    work, out = tmp_path / "state", tmp_path / "rows.jsonl"
    argv = ["--data", "synthetic", "--split", "random", "--models", "bpr", "--recbole", sys.executable,
            "--override", *TINY, "--work-dir", str(work), "--recbole-budget-min", "0.5", "--json-out", str(out)]
    for sitting in (1, 2):
        assert quality.main(argv) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        assert row["failed"] and row["note"] == (f"RecBole's side paused after epoch {2 * sitting} (best validation "
                                                 "NDCG@10 0.1000, 9 s so far): run the same command to go on")
        assert not out.exists() and list(work.iterdir()) == [quality.row_dir(work, quality.row_key(
            "synthetic", "random", "bpr", TINY, {}))]
    folder = next(work.iterdir())
    assert (folder / "recforge.json").is_file() and (folder / "out" / "config.yaml").is_file()
    assert (folder / "defaults").read_text() == quality.defaults_digest(
        quality.recforge_overrides("synthetic", "random", "bpr", TINY))
    assert json.loads((folder / "recbole_spec.json").read_text())["input"]  # RecBole's state is kept for this input
    assert quality.main(argv) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["recbole"]["epochs"] == 6 and row["recbole"]["wall_s"] == 27.0 and "failed" not in row
    assert [json.loads(line) for line in out.read_text().splitlines()] == [row]
    assert trained == ["bpr"] and list(work.iterdir()) == []
    assert sittings == [(str(folder / "recbole_state"), 30.0)] * 3
    # a folder left by a paused sitting: another model's default changed since leaves it be; one of its own restarts it
    from recforge import config

    conf = tmp_path / "conf"
    shutil.copytree(config.CONFIG_DIR, conf)
    monkeypatch.setattr(config, "CONFIG_DIR", str(conf))  # read by the digest and by training alike
    sittings.clear()
    other = [*argv[:-2], "--json-out", str(tmp_path / "other.jsonl")]
    assert quality.main(other) == 0 and trained == ["bpr", "bpr"]  # paused, its folder kept
    simplex = conf / "model" / "simplex.yaml"
    simplex.write_text(simplex.read_text().replace("embedding_dim: 64", "embedding_dim: 32"))
    capsys.readouterr()
    assert quality.main(other) == 0 and trained == ["bpr", "bpr"]  # paused again, nothing retrained
    assert "starting afresh" not in capsys.readouterr().err
    bpr = conf / "model" / "bpr.yaml"
    bpr.write_text(bpr.read_text().replace("init_std: 0.01 ", "init_std: 0.02 "))
    assert quality.main(other) == 0
    assert "from a sitting under other RecForge defaults; starting afresh" in capsys.readouterr().err
    assert trained == ["bpr", "bpr", "bpr"]


def test_a_recforge_side_killed_in_training_goes_on_from_its_last_checkpoint(quality, tmp_path, monkeypatch):
    """Killed after its second of four epochs (Ctrl-C, a kill, the session's end), RecForge's side run again in the
    same folder resumes there and ends where the uninterrupted side ends."""
    from recforge.training.module import RecommenderModule

    tiny = [*TINY, "trainer.max_epochs=4", "callbacks.early_stopping.patience=100"]
    whole = quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "whole")
    original = RecommenderModule.on_train_epoch_end

    def killed_in_the_third(self):
        original(self)
        if self.current_epoch == 2:  # before epoch 3's checkpoint: epoch 2's is the last one on disk
            raise KeyboardInterrupt

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", killed_in_the_third)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into exit(1)
        quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "cut")
    trained = []

    def counted(self):
        trained.append(self.current_epoch)
        original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", counted)
    resumed = quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "cut")
    assert trained == [2, 3]  # the last two epochs, not four from the start
    assert resumed.pop("resumed") is True and "resumed" not in whole
    assert {k: v for k, v in resumed.items() if k != "wall_s"} == {k: v for k, v in whole.items() if k != "wall_s"}
    assert whole["epochs"] == 4


def test_a_recforge_side_killed_after_early_stopping_only_tests_its_best_checkpoint(quality, tmp_path, monkeypatch):
    """Stopped early (no validation beats the first by 1.0, patience 1: two epochs of four) and killed during its
    test, the side run again trains no further epoch."""
    from recforge.training.module import RecommenderModule

    tiny = [*TINY, "trainer.max_epochs=4", "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0"]
    whole = quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "whole")
    assert whole["epochs"] == 2 and whole["best_epoch"] == 1

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(RecommenderModule, "on_test_start", killed, raising=False)
    with pytest.raises(SystemExit):
        quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "cut")
    monkeypatch.undo()
    resumed = quality.recforge_side("synthetic", "random", "bpr", tiny, tmp_path / "cut")
    assert resumed.pop("resumed") is True
    assert {k: v for k, v in resumed.items() if k != "wall_s"} == {k: v for k, v in whole.items() if k != "wall_s"}


def test_recbole_budget_needs_a_work_dir(quality, capsys):
    with pytest.raises(SystemExit):
        quality.main(["--recbole", sys.executable, "--recbole-budget-min", "5"])
    assert "--recbole-budget-min needs --work-dir DIR" in capsys.readouterr().err


def test_summary_is_each_models_latest_default_ratio_per_pair_with_its_later_seeds(quality):
    def row(model, split, ratio, overrides=()):
        return {"dataset": "d", "split": split, "model": model, "recforge": {}, "recbole": {},
                "ratio_ndcg_at_10": ratio, "overrides": list(overrides), "recbole_overrides": {}}

    rows = [row("bpr", "random", 0.87), row("bpr", "random", 1.013), row("bpr", "loo", 0.979),
            {"dataset": "d", "split": "random", "model": "sasrec", "note": "loo only"},
            # seed replicates: each seed's latest row since the latest default row; a row with any other override is
            # not one
            row("neumf", "loo", 0.5, ["seed=3"]), row("neumf", "loo", 0.951),
            row("bpr", "random", 0.3, ["seed=10"]), row("bpr", "random", 0.5, ["seed=10"]),
            row("bpr", "random", 1.2, ["seed=2"]), row("bpr", "random", 2.0, ["seed=2", "model.dim=8"])]
    assert quality.summary(rows).splitlines() == [
        "| model | d loo | d random |", "|---|---:|---:|",
        "| bpr | **0.979** | 1.01 (seed 2: 1.20, seed 10: **0.50**; mean of 3: **0.90**) |", "| neumf | **0.95** |  |",
        "| sasrec |  | n/a |"]


def test_summary_takes_a_rerun_capped_at_the_known_best_epoch_when_recbole_trained_the_same_model(quality):
    def row(ratio, reported, recbole_overrides=None):
        return {"dataset": "d", "split": "loo", "model": "gru4rec", "recforge": {}, "overrides": [],
                "recbole": {"reported": reported}, "ratio_ndcg_at_10": ratio, "recbole_overrides": recbole_overrides}

    first = {"ndcg_at_10": 0.0706}
    same = [row(0.979, first), row(0.978, dict(first), {"epochs": 36})]
    assert quality.summary(same).splitlines()[-1] == "| gru4rec | **0.978** |"
    other_model = [row(0.979, first), row(1.5, {"ndcg_at_10": 0.05}, {"epochs": 3})]
    assert quality.summary(other_model).splitlines()[-1] == "| gru4rec | **0.979** |"
    other_setting = [row(0.979, first), row(1.5, dict(first), {"epochs": 36, "learning_rate": 0.1})]
    assert quality.summary(other_setting).splitlines()[-1] == "| gru4rec | **0.979** |"
    assert "gru4rec" not in quality.summary([row(1.5, first, {"epochs": 36})])  # no default row to match


def test_a_recbole_run_killed_without_a_traceback_says_so(quality, tmp_path):
    # a kill (the OOM killer) leaves only warnings on stderr: the row's note must say how the run ended
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'UserWarning: a warning line' >&2\nkill -9 $$\n")
    python.chmod(0o755)
    with pytest.raises(RuntimeError) as failed:
        quality.recbole_json(str(python), "recbole_fit.py", [], tmp_path)
    assert str(failed.value).splitlines()[0] == "RecBole run failed (killed by signal 9): UserWarning: a warning line"


def test_recbole_sides_test_mask_keeps_each_users_first_item(quality, tmp_path):
    """RecBole's sequential training file lacks each user's first item (it has no input), so the test mask comes from
    the ``seen`` file: every training and validation pair but test targets, as RecForge masks them."""
    quality.recforge_side("synthetic", "leave_one_out", "sasrec", TINY, tmp_path)
    parts = quality.coded_split(tmp_path / "out")[0]
    quality.export_atomic(quality.atomic_parts(parts, quality.SEQUENTIAL, max_len=5), tmp_path / "rb" / "rf", "rf")
    # recbole_fit patches NumPy, pandas and torch.load's default for RecBole: it runs in a process of its own, its
    # RecBole dataset stood in for by the identity token -> id map
    probe = ("import json, sys; import numpy as np; from pathlib import Path; import recbole_fit\n"
             "class Tokens:\n    uid_field, iid_field = 'user_id', 'item_id'\n"
             "    def token2id(self, field, tokens): return np.asarray(tokens, dtype=np.int64)\n"
             "print(json.dumps(recbole_fit.seen_items(Tokens(), Path(sys.argv[1]), 'rf')))")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "rb")], capture_output=True, text=True,
                          cwd=SCRIPTS, env={**os.environ, "PYTHONPATH": str(SCRIPTS)})
    assert done.returncode == 0, done.stderr
    seen = {int(u): items for u, items in json.loads(done.stdout.splitlines()[-1]).items()}
    known, test = pd.concat([parts["train"], parts["valid"]]), set(zip(parts["test"]["user"], parts["test"]["item"]))
    expected: dict[int, set] = {}
    for user, item in zip(known["user"], known["item"]):
        if (user, item) not in test:
            expected.setdefault(int(user), set()).add(int(item))
    assert {u: set(i) for u, i in seen.items()} == expected
    first = parts["train"].sort_values(["user", "timestamp"], kind="stable").drop_duplicates("user")
    assert all(int(i) in seen[int(u)] for u, i in zip(first["user"], first["item"]))
