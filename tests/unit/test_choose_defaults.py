"""``scripts/choose_defaults.py`` ranks candidates on validation within each (dataset, split) (equal values share the
mean of their places), by mean rank, breaks a tie in mean rank by the mean share of each setting's best validation
value, and ranks a candidate that collapses on one setting (below 0.8 of its best) after those that do not."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "choose_defaults.py"
_spec = importlib.util.spec_from_file_location("choose_defaults", SCRIPT)
choose_defaults = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(SCRIPT.parent))  # the script imports reproduce beside it
try:
    _spec.loader.exec_module(choose_defaults)
finally:
    sys.path.remove(str(SCRIPT.parent))
TINY = ["data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "datamodule.batch_size=256",
        "trainer.max_epochs=4", "callbacks.early_stopping.patience=100"]


def rows(table: dict[str, dict[str, float]]) -> list[dict]:
    """{candidate: {"data/split": val}} -> the script's JSON-lines rows."""
    return [{"data": setting.split("/")[0], "split": setting.split("/")[1], "candidate": cand.split(), "val": val,
             "test_ndcg_at_10": 1.0}  # test values play no part
            for cand, vals in table.items() for setting, val in vals.items()]


def test_mean_rank_prefers_good_everywhere_over_best_once():
    table = choose_defaults.mean_ranks(rows({
        "lr=a": {"d1/s": 0.30, "d2/s": 0.10, "d3/s": 0.10},   # ranks 1, 3, 3: mean 2.33
        "lr=b": {"d1/s": 0.29, "d2/s": 0.20, "d3/s": 0.20},   # ranks 2, 1, 1: mean 1.33
        "lr=c": {"d1/s": 0.10, "d2/s": 0.15, "d3/s": 0.15},   # ranks 3, 2, 2: mean 2.33
    }))
    # the tie between a and c: a reaches (1 + 0.5 + 0.5) / 3 = 0.667 of the best, c (1/3 + 0.75 + 0.75) / 3 = 0.611
    assert [t.candidate for t in table] == [("lr=b",), ("lr=a",), ("lr=c",)]
    assert [round(t.rank, 2) for t in table] == [1.33, 2.33, 2.33]
    assert [round(t.worst, 3) for t in table] == [0.967, 0.5, 0.333]
    assert table[1].share == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert table[2].share == pytest.approx((0.10 / 0.30 + 0.75 + 0.75) / 3)


def test_an_error_metric_ranks_the_lowest_first_and_shares_are_best_over_value():
    table = choose_defaults.mean_ranks([{**r, "monitor": "val/rmse"} for r in rows({
        "lr=a": {"d1/s": 0.90, "d2/s": 0.85},   # ranks 2, 2
        "lr=b": {"d1/s": 0.95, "d2/s": 0.80},   # ranks 3, 1: tied with a on mean rank, nearer the best on average
        "lr=c": {"d1/s": 0.85, "d2/s": 1.20},   # ranks 1, 3, but 0.80 / 1.20 = 0.667 of the best on d2: collapsed
    })])
    assert [t.candidate for t in table] == [("lr=b",), ("lr=a",), ("lr=c",)]
    assert [t.rank for t in table] == [2.0, 2.0, 2.0]
    assert table[0].share == pytest.approx((0.85 / 0.95 + 1) / 2)
    assert table[1].share == pytest.approx((0.85 / 0.90 + 0.80 / 0.85) / 2)
    assert table[2].worst == pytest.approx(0.80 / 1.20)
    for other in ("val/ndcg_at_10", "val/mae"):  # another metric, maximised or minimised alike, is not ranked with it
        mixed = [{**r, "monitor": "val/rmse"} for r in rows({"x=1": {"d1/s": 0.9}})] + \
            [{**r, "monitor": other} for r in rows({"x=2": {"d1/s": 0.7}})]
        with pytest.raises(SystemExit, match="cannot be ranked together"):
            choose_defaults.mean_ranks(mixed)


def test_equal_validation_values_share_the_mean_of_their_places():
    """A grid key with no effect (ItemKNN's asymmetric alpha at 0.5, which is the cosine) repeats a candidate's
    values; the two must not be told apart by their names."""
    table = choose_defaults.mean_ranks(rows({
        "k=b": {"d1/s": 0.30, "d2/s": 0.25},   # places 1-2 and 2-3, tied with a: 1.5 and 2.5
        "k=a": {"d1/s": 0.30, "d2/s": 0.25},
        "k=c": {"d1/s": 0.27, "d2/s": 0.30},   # places 3 and 1; nobody below the collapse floor
    }))
    assert {t.candidate: t.rank for t in table} == {("k=a",): 2.0, ("k=b",): 2.0, ("k=c",): 2.0}
    assert [t.candidate for t in table][0] == ("k=c",)  # mean share: (0.9 + 1) / 2 for c, (1 + 0.833) / 2 for a, b
    assert min(t.worst for t in table) >= choose_defaults.FLOOR


def test_a_candidate_missing_a_setting_is_left_out():
    table = choose_defaults.mean_ranks(rows({"x=1": {"d1/s": 0.2, "d2/s": 0.2}, "x=2": {"d1/s": 0.3}}))
    assert [t.candidate for t in table] == [("x=1",)]


def test_a_candidate_that_collapses_somewhere_ranks_after_the_safe_ones():
    table = choose_defaults.mean_ranks(rows({
        "neg=4": {"d1/s": 0.25, "d2/s": 0.080, "d3/s": 0.059},   # ranks 1, 1, 3: mean 1.67, but 0.059 / 0.116 = 0.51
        "neg=1": {"d1/s": 0.23, "d2/s": 0.070, "d3/s": 0.116},   # ranks 3, 3, 1: mean 2.33, worst 0.070 / 0.080 = 0.875
        "d=32": {"d1/s": 0.24, "d2/s": 0.079, "d3/s": 0.107},    # ranks 2, 2, 2: mean 2.00, worst 0.922
    }))
    assert [t.candidate for t in table] == [("d=32",), ("neg=1",), ("neg=4",)]
    assert table[2].worst == pytest.approx(0.059 / 0.116)
    assert table[1].worst == pytest.approx(0.070 / 0.080)
    # without the collapse the mean rank alone decides: neg=4 first
    table = choose_defaults.mean_ranks(rows({"neg=4": {"d1/s": 0.25, "d2/s": 0.080, "d3/s": 0.100},
                                             "neg=1": {"d1/s": 0.23, "d2/s": 0.070, "d3/s": 0.116}}))
    assert [t.candidate for t in table] == [("neg=4",), ("neg=1",)]


def test_grid_values_may_be_lists():
    assert choose_defaults.candidates(["model.mlp_layers=[64,32,16,8],[128,128,64]", "model.gmf_dim=8,64"]) == [
        ("model.mlp_layers=[64,32,16,8]", "model.gmf_dim=8"), ("model.mlp_layers=[64,32,16,8]", "model.gmf_dim=64"),
        ("model.mlp_layers=[128,128,64]", "model.gmf_dim=8"), ("model.mlp_layers=[128,128,64]", "model.gmf_dim=64")]
    assert choose_defaults.candidates(["optimizer.lr=0.001"]) == [("optimizer.lr=0.001",)]


def test_explicit_candidates_follow_the_grid_and_stand_alone_without_one():
    both = "model.gmf_dim=64 model.mlp_layers=[128,128,64] model.dropout=0.1"
    assert choose_defaults.candidates(["model.gmf_dim=8"], [both]) == [
        ("model.gmf_dim=8",), ("model.gmf_dim=64", "model.mlp_layers=[128,128,64]", "model.dropout=0.1")]
    assert choose_defaults.candidates([], [both, "model.gmf_dim=8"]) == [
        ("model.gmf_dim=64", "model.mlp_layers=[128,128,64]", "model.dropout=0.1"), ("model.gmf_dim=8",)]
    assert choose_defaults.candidates([]) == [()]


def test_stop_with_patience_replays_lightning_early_stopping_on_a_curve():
    curve = [0.10, 0.20, 0.20, 0.19, 0.25, 0.24, 0.23, 0.22, 0.30]
    # a tie (epoch 3) is no gain: with patience 2, epochs 3 and 4 follow the best at 2 and stop the run at 4
    assert choose_defaults.stop_with_patience(curve, 2) == (0.20, 2, 4)
    assert choose_defaults.stop_with_patience(curve, 3) == (0.25, 5, 8)
    assert choose_defaults.stop_with_patience(curve, 4) == (0.30, 9, 9)     # the curve ends first: the cap
    assert choose_defaults.stop_with_patience([0.5, 0.4, 0.45, 0.3], 1, mode="min") == (0.4, 2, 3)
    # an epoch without a value (not validated, not finite) is no gain either
    assert choose_defaults.stop_with_patience([0.1, None, 0.2, None, None], 2) == (0.2, 3, 5)


def test_kept_at_patience_replays_a_shorter_patience_as_a_share_of_the_best():
    curve = [0.1, 0.09, 0.1, 0.08, 0.2, 0.15, 0.14]   # 3 without a gain (an equal value is none), then the best
    assert choose_defaults.kept_at_patience(curve, 3) == pytest.approx(0.5)   # stopped on the plateau at 0.1
    assert choose_defaults.kept_at_patience(curve, 4) == 1.0
    # an error (lower is better) that stalls once before its best: patience 1 keeps 0.4 where 0.3 was reachable
    assert choose_defaults.kept_at_patience([0.5, 0.4, None, 0.3, 0.45], 1, "min") == pytest.approx(0.75)
    assert choose_defaults.kept_at_patience([0.5, 0.4, None, 0.3, 0.45], 2, "min") == 1.0
    assert choose_defaults.kept_at_patience([None], 10) is None


def test_the_table_replays_each_candidates_runs_at_patience_10_when_they_ran_longer(tmp_path, monkeypatch, capsys):
    plateau = [0.13] * 12 + [0.2, 0.26]   # 12 validations at a popularity ranker's level, then the climb
    out = tmp_path / "rows.jsonl"
    table = {"optimizer.lr=0.003": {"ml-100k/random": 0.26, "ml-100k/leave_one_out": 0.09},
             "optimizer.lr=0.01": {"ml-100k/random": 0.25, "ml-100k/leave_one_out": 0.08}}
    lines = []
    for extra in ([], ["callbacks.early_stopping.patience=30"]):
        for r in rows(table):
            curve = plateau if r["candidate"] == ["optimizer.lr=0.003"] and r["split"] == "random" else [r["val"]]
            lines.append({**r, "model": "ultragcn", "extra": extra, "monitor": "val/ndcg_at_10", "val_curve": curve})
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    argv = ["choose_defaults.py", "--model", "ultragcn", "--print-only", "--json-out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--override", "callbacks.early_stopping.patience=30"])
    choose_defaults.main()
    printed = capsys.readouterr().out
    assert "| `optimizer.lr=0.003` | 0.0900 | 0.2600 | 0.500 |" in printed   # 0.13 of 0.26 kept at patience 10
    assert "| `optimizer.lr=0.01` | 0.0800 | 0.2500 | 1.000 |" in printed
    monkeypatch.setattr(sys, "argv", argv)   # the same rows run at patience 10: nothing to replay
    choose_defaults.main()
    assert "| 0.0900 | 0.2600 | - |" in capsys.readouterr().out


def test_validation_curve_reads_the_monitored_value_of_each_epoch_line():
    import logging

    from recforge.training.progress import EpochLines

    class Module:
        def epoch_loss(self):
            return 0.5

    class Trainer:
        current_epoch, callback_metrics = 0, {}

    logger = logging.getLogger("recforge")
    level = logger.level
    logger.setLevel(logging.INFO)
    read = []
    for max_epochs in (3, -1):   # lines read "epoch 2/3 ..." and, with no cap, "epoch 2 ..."
        curve = choose_defaults.ValidationCurve("val/ndcg_at_10")
        logger.addHandler(curve)
        try:
            lines, trainer = EpochLines("val/ndcg_at_10", "max"), Trainer()
            trainer.max_epochs = max_epochs
            for epoch, value in enumerate([0.21134, None, 0.25, 0.24]):   # epoch 2 not validated
                trainer.current_epoch = epoch
                trainer.callback_metrics = {"val/ndcg_at_100": 0.9, **({"val/ndcg_at_10": value} if value else {})}
                lines.on_train_epoch_end(trainer, Module())
        finally:
            logger.removeHandler(curve)
        read.append(curve.values)
    logger.setLevel(level)
    assert read == [[0.2113, None, 0.25, 0.24]] * 2


def test_print_only_prints_the_table_from_the_file_and_trains_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.jsonl"
    table = {"optimizer.lr=0.001": {"ml-100k/random": 0.30, "ml-100k/leave_one_out": 0.08},
             "optimizer.lr=0.002": {"ml-100k/random": 0.32, "ml-100k/leave_one_out": 0.09}}
    out.write_text("".join(json.dumps({**r, "model": "recvae", "extra": [], "monitor": "val/ndcg_at_10"}) + "\n"
                           for r in rows(table)))
    monkeypatch.setattr(choose_defaults, "run_one", lambda *a: pytest.fail("--print-only trained a run"))
    monkeypatch.setattr(sys, "argv", ["choose_defaults.py", "--model", "recvae", "--print-only",
                                      "--json-out", str(out)])
    choose_defaults.main()
    printed = capsys.readouterr().out
    assert "| 1.00 | 1.000 (1.000) | `optimizer.lr=0.002` |" in printed and "| kept at patience 10 (worst) |" in printed
    assert "| 2.00 |" in printed and "`optimizer.lr=0.001`" in printed and len(out.read_text().splitlines()) == 4
    # rows run with another --override are not this table's: the script says which overrides the file has
    monkeypatch.setattr(sys, "argv", ["choose_defaults.py", "--model", "recvae", "--print-only", "--json-out", str(out),
                                      "--override", "callbacks.early_stopping.patience=30"])
    choose_defaults.main()
    printed = capsys.readouterr().out
    assert "| 1.00 |" not in printed
    assert ("no recvae candidate has a row on every data/split with --override "
            "'callbacks.early_stopping.patience=30'; the file's recvae rows were run with --override ''") in printed


def test_the_table_reads_rows_that_a_run_beside_this_one_appended_meanwhile(tmp_path, monkeypatch, capsys):
    """Two processes (one per split, say) append to one file: the one that ends last prints every row, not only
    those it read at its start and ran itself."""
    out = tmp_path / "rows.jsonl"
    mine, theirs = ({**r, "model": "recvae", "extra": [], "monitor": "val/ndcg_at_10"}
                    for r in rows({"optimizer.lr=0.002": {"ml-100k/random": 0.32},
                                   "optimizer.lr=0.001": {"ml-100k/random": 0.30}}))

    def run_one(*args):   # while this run trains, the other process appends its row
        out.write_text(out.read_text() + json.dumps(theirs) + "\n" if out.exists() else json.dumps(theirs) + "\n")
        return mine

    monkeypatch.setattr(choose_defaults, "run_one", run_one)
    monkeypatch.setattr(sys, "argv", ["choose_defaults.py", "--model", "recvae", "--candidate", "optimizer.lr=0.002",
                                      "--data", "ml-100k", "--split", "random", "--json-out", str(out)])
    choose_defaults.main()
    printed = capsys.readouterr().out
    assert "| 1.00 | 1.000 (1.000) | `optimizer.lr=0.002` |" in printed
    assert "| 2.00 | 0.938 (0.938) | `optimizer.lr=0.001` |" in printed


def test_a_run_stopped_in_a_sitting_goes_on_from_its_last_epoch_and_its_curve(tmp_path, monkeypatch, capsys):
    """--work-dir: a run killed after its second of four epochs (Ctrl-C, a kill, the session's end) keeps its folder
    and stores no row; the same command goes on from there, and its row (validation curve included) is the
    uninterrupted run's; the finished run's folder goes."""
    from recforge.training.module import RecommenderModule

    monkeypatch.setenv("RECFORGE_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["choose_defaults.py", "--model", "bpr", "--data", "synthetic", "--split", "random",
            "--grid", "optimizer.lr=0.01", "--override", *TINY]
    monkeypatch.setattr(sys, "argv", [*argv, "--json-out", str(tmp_path / "whole.jsonl")])
    choose_defaults.main()
    whole = json.loads((tmp_path / "whole.jsonl").read_text())
    assert whole["epochs"] == 4 and len(whole["val_curve"]) == 4 and "resumed" not in whole
    original = RecommenderModule.on_train_epoch_end

    def killed_in_the_third(self):
        original(self)
        if self.current_epoch == 2:  # after epoch 3's line is logged, before its checkpoint
            raise KeyboardInterrupt

    out, work = tmp_path / "rows.jsonl", tmp_path / "state"
    monkeypatch.setattr(sys, "argv", [*argv, "--json-out", str(out), "--work-dir", str(work)])
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", killed_in_the_third)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into exit(1)
        choose_defaults.main()
    folder = choose_defaults.run_folder(work, "bpr", "synthetic", "random", ("optimizer.lr=0.01",), TINY)
    assert not out.exists() and list(work.iterdir()) == [folder]
    assert (folder / "out" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((folder / "curve.json").read_text()) == whole["val_curve"][:3]
    trained = []

    def counted(self):
        trained.append(self.current_epoch)
        original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", counted)
    choose_defaults.main()
    assert trained == [2, 3]  # the third epoch again (it was not checkpointed), then the fourth
    row = json.loads(out.read_text())
    assert row.pop("resumed") is True
    differs = {"fit_s", "resumed"}
    assert {k: v for k, v in row.items() if k not in differs} == {k: v for k, v in whole.items() if k not in differs}
    assert list(work.iterdir()) == []
    log = capsys.readouterr().err   # each sitting's progress: the run, then its epoch lines
    assert all(f"synthetic random optimizer.lr=0.01: epoch {n}/" in log for n in (3, 4))
