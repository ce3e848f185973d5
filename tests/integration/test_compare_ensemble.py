"""Comparing tracked runs (selection, table, plots, significance, the notebook) and ensembling them
(refusals, member metrics equal to their runs', tuning on validation, the logged ensemble serves)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest

from recforge.analysis.runs import epoch_history, runs_table, select_runs, varying_params
from recforge.compare import main as compare_main
from recforge.errors import RecForgeError
from recforge.tracking.client import final_metrics, tracking_client
from recforge.train import train
from tests.conftest import REPO, TINY, compose_train

MEMBERS = ("bpr", "itemknn", "ease")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three implicit runs on one split, one run on another split, one rating run: one SQLite store."""
    tmp = tmp_path_factory.mktemp("store")
    runs = {}
    for name, extra in [*((m, [f"model={m}"]) for m in MEMBERS),
                        ("other_split", ["model=pop", "split.seed=7"]),
                        ("rating", ["model=mf", "datamodule.implicit_threshold=null"])]:
        cfg = compose_train(TINY[:3] + ["trainer.max_epochs=3", f"tracking.run_name={name}", *extra], tmp / name)
        cfg.paths.log_dir = str(tmp / "logs")
        runs[name] = train(cfg)
    uri = f"sqlite:///{(tmp / 'logs').resolve()}/mlflow.db"
    return uri, {name: metrics["run_id"] for name, metrics in runs.items()}, runs, tmp


def test_select_runs_by_experiment_ids_filter_and_tags(store):
    uri, ids, _, _ = store
    client = tracking_client(uri)
    assert [r.info.run_id for r in select_runs(client, ["recforge"])] == list(ids.values())  # oldest first
    assert [r.info.run_id for r in select_runs(client, run_ids=[ids["ease"], ids["bpr"]])] == [ids["ease"], ids["bpr"]]
    assert [r.info.run_name for r in select_runs(client, tags={"model": "EASE"})] == ["ease"]
    picked = select_runs(client, filter_string="params.`model._target_` LIKE '%ItemKNN'")
    assert [r.info.run_name for r in picked] == ["itemknn"]
    with pytest.raises(RecForgeError, match="experiment 'nope' not found") as info:
        select_runs(client, ["nope"])
    assert "known: Default, recforge" in str(info.value) and "tracking.experiment_name=" in str(info.value)
    with pytest.raises(RecForgeError, match="bad filter"):
        select_runs(client, filter_string="metrics.x >>> 1")


def test_runs_table_has_models_key_params_metrics_and_costs(store):
    uri, ids, runs, _ = store
    selected = select_runs(tracking_client(uri), run_ids=[ids[m] for m in MEMBERS])
    table = runs_table(selected)
    assert list(table["model"]) == ["bpr", "itemknn", "ease"]  # the config options, not the classes
    assert list(table["model_class"]) == ["MatrixFactorization", "ItemKNN", "EASE"]
    assert set(table["split"]) == {"random"} and set(table["monitor"]) == {"val/ndcg_at_10"}
    assert {"model.embedding_dim", "model.k_neighbors", "model.l2_reg"} <= set(varying_params(selected))
    assert "data.n_users" not in table.columns  # the same for every run: not a key param
    assert table.loc[0, "test/ndcg_at_10"] == pytest.approx(runs["bpr"]["test/ndcg_at_10"])
    # validation is the best checkpoint's (val_best/*), not the last epoch's value of the val/* curve
    assert table.loc[0, "val/ndcg_at_10"] == pytest.approx(runs["bpr"]["val/ndcg_at_10"])
    assert table.loc[0, "n_parameters"] == runs["bpr"]["params/n_parameters"] and table.loc[0, "s_per_epoch"] > 0


def test_compare_cli_writes_table_plots_and_tests_within_splits(store, tmp_path, capsys):
    uri, ids, runs, _ = store
    code = compare_main(["--tracking-uri", uri, "--runs", *[ids[m] for m in (*MEMBERS, "other_split")],
                         "--vs-param", "optimizer.lr", "--n-bootstrap", "200", "--out", str(tmp_path)])
    assert code == 0
    # the terminal gets the key columns in 120 characters (not a terminal here), models by their config names
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 120
    assert lines[0].split() == ["run", "model", "dataset", "split", "s/epoch", "val/ndcg@10", "test/ndcg@10",
                                "test/recall@20", "test/hr@10", "test/mrr@10"]
    assert [line.split()[:2] for line in lines[1:5]] == [["bpr", "bpr"], ["itemknn", "itemknn"], ["ease", "ease"],
                                                         ["other_split", "pop"]]
    table = pd.read_csv(tmp_path / "runs.csv")  # the files have everything
    assert len(table) == 4 and (tmp_path / "runs.md").read_text().startswith("| run_id | run_name | model |")
    assert {"model.embedding_dim", "test/gini_at_20", "n_parameters"} <= set(table.columns)
    for png in ("test_ndcg_at_10_ci.png", "curves_val_ndcg_at_10.png", "test_ndcg_at_10_vs_optimizer.lr.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir()} == {oct(0o666 & ~umask)}
    sig = pd.read_csv(tmp_path / "significance.csv")
    assert len(sig) == 3  # the three same-split runs pairwise; the other split's run is not paired
    assert ids["other_split"] not in set(sig["run_a"]) | set(sig["run_b"])
    row = sig[(sig.run_a == ids["itemknn"]) & (sig.run_b == ids["ease"])].iloc[0]
    assert row["mean_diff"] == pytest.approx(runs["itemknn"]["test/ndcg_at_10"] - runs["ease"]["test/ndcg_at_10"],
                                             abs=1e-6)
    # a rating run beside a ranking run: each monitored metric gets a column, each run its values
    assert compare_main(["--tracking-uri", uri, "--runs", ids["bpr"], ids["rating"], "--no-plots"]) == 0
    header, bpr, rating = capsys.readouterr().out.splitlines()[:3]
    assert header.split()[4:7] == ["s/epoch", "val/ndcg@10", "val/rmse"] and "test/rmse" in header
    assert rating.split()[:2] == ["rating", "mf"] and bpr.split()[:2] == ["bpr", "bpr"]
    assert compare_main(["--tracking-uri", uri, "--runs", ids["bpr"], "--metric", "test/nope"]) == 2
    assert "was not logged" in capsys.readouterr().err


def test_learning_curves_are_per_epoch_and_untrained_runs_are_one_value(store):
    uri, ids, runs, _ = store
    client = tracking_client(uri)
    history = epoch_history(client, [ids["bpr"], ids["ease"]], "val/ndcg_at_10")
    bpr = history[history.run_id == ids["bpr"]]
    assert list(bpr["epoch"]) == [1, 2, 3]  # after each training epoch; the final validation is not an epoch
    logged = [m.value for m in client.get_metric_history(ids["bpr"], "val/ndcg_at_10")]
    assert list(bpr["value"]) == logged[:3]
    ease = history[history.run_id == ids["ease"]]
    assert len(ease) == 1 and ease["epoch"].isna().all()
    assert ease["value"].iloc[0] == pytest.approx(runs["ease"]["val/ndcg_at_10"])


def test_eval_by_run_id_says_it_matches_the_logged_run(store, tmp_path, capsys):
    from recforge.eval import evaluate

    uri, ids, _, _ = store
    evaluate(compose_train([f"run_id={ids['bpr']}", f"tracking_uri={uri}"], tmp_path, config_name="eval"))
    lines = capsys.readouterr().out.splitlines()
    ndcg = next(line for line in lines if line.startswith("test/ndcg_at_10 "))
    assert ndcg.split()[1] == ndcg.split()[2] and ndcg.endswith("matches")
    assert re.fullmatch(rf"(\d+) of \1 test metrics match those logged by run {ids['bpr']}", lines[-1])


def run_notebook(cwd: Path, monkeypatch) -> object:
    """Execute compare_runs.ipynb headless in ``cwd`` as Jupyter would (the notebook's folder is the working
    folder), with no tracking settings in the environment."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for name in ("MLFLOW_TRACKING_URI", "RECFORGE_ROOT", "RECFORGE_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebook_runs_from_its_folder_and_finds_the_repositorys_store(store, monkeypatch):
    _, _, _, tmp = store  # tmp/logs/mlflow.db, as in a repository; the notebook runs in tmp/notebooks
    (tmp / "notebooks").mkdir(exist_ok=True)
    nb = run_notebook(tmp / "notebooks", monkeypatch)
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "| itemknn |" in text and "| ease |" in text
    out = tmp / "reports" / "compare_runs"
    assert sorted(p.name for p in out.glob("*.png")) == ["curves.png", "metric_ci.png", "metric_vs_param.png"]


def test_notebook_without_runs_says_what_to_do(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    (tmp_path / "notebooks").mkdir()
    with pytest.raises(CellExecutionError) as info:
        run_notebook(tmp_path / "notebooks", monkeypatch)
    assert "there is no tracking store" in str(info.value) and "train some runs first" in str(info.value)


def ensemble_cfg(tmp_path: Path, uri: str, run_ids, *overrides: str):
    cfg = compose_train([f"runs=[{','.join(run_ids)}]", f"tracking.uri={uri}", *overrides], tmp_path,
                        config_name="ensemble")
    return cfg


def test_ensemble_refuses_other_splits_rating_runs_and_one_run(store, tmp_path):
    from recforge.ensemble.cli import ensemble

    uri, ids, _, _ = store
    with pytest.raises(RecForgeError, match="different splits") as info:
        ensemble(ensemble_cfg(tmp_path, uri, [ids["bpr"], ids["other_split"]]))
    assert ids["bpr"] in str(info.value) and ids["other_split"] in str(info.value)
    with pytest.raises(RecForgeError, match="explicit feedback"):
        ensemble(ensemble_cfg(tmp_path, uri, [ids["bpr"], ids["rating"]]))
    with pytest.raises(RecForgeError, match="at least two runs"):
        ensemble(ensemble_cfg(tmp_path, uri, [ids["bpr"]]))
    with pytest.raises(RecForgeError, match="method='mean'"):
        ensemble(ensemble_cfg(tmp_path, uri, [ids["bpr"], ids["ease"]], "method=mean"))


def test_ensemble_refuses_a_refit_run_whose_model_learnt_the_validation_part(store, tmp_path):
    """A ``refit=true`` run's model trained on train + validation: the ensemble would choose its weights on
    interactions that member has seen, so it is refused, whichever place it has, with the run named."""
    from recforge.ensemble.cli import ensemble

    uri, ids, _, tmp = store
    cfg = compose_train(TINY[:3] + ["model=itemknn", "refit=true", "tracking.run_name=refit",
                         "tracking.experiment_name=refit"], tmp / "refit")   # not among the runs the others select
    cfg.paths.log_dir = str(tmp / "logs")
    refit = train(cfg)["run_id"]
    for order in ([ids["ease"], refit], [refit, ids["ease"]]):
        with pytest.raises(RecForgeError, match="refit=true") as info:
            ensemble(ensemble_cfg(tmp_path, uri, order))
        assert refit in str(info.value) and "refit=false" in str(info.value)


def test_item_spaces_must_match():
    from recforge.ensemble.members import check_item_spaces

    check_item_spaces({"a": pd.DataFrame({"item": [5, 7]}), "b": pd.DataFrame({"item": [5, 7]})})
    with pytest.raises(RecForgeError, match="runs a and b have different item spaces"):
        check_item_spaces({"a": pd.DataFrame({"item": [5, 7]}), "b": pd.DataFrame({"item": [5]})})
    with pytest.raises(RecForgeError, match="different raw item ids"):
        check_item_spaces({"a": pd.DataFrame({"item": [5, 7]}), "b": pd.DataFrame({"item": [7, 5]})})


def test_ensemble_tunes_on_validation_tests_once_and_logs_a_servable_run(store, tmp_path):
    import mlflow

    from recforge.ensemble.cli import ensemble

    uri, ids, runs, _ = store
    member_ids = [ids[m] for m in MEMBERS]
    metrics = ensemble(ensemble_cfg(tmp_path, uri, member_ids, "search=grid", "grid_step=0.25", "method=rrf",
                                    "n_bootstrap=200"))
    members = pd.read_csv(tmp_path / "out" / "members.csv")
    # each member's metrics, recomputed from its checkpoint on the rebuilt split, equal its training run's
    for i, name in enumerate(MEMBERS):
        assert members.loc[i, "run_id"] == ids[name]
        assert members.loc[i, "val/ndcg_at_10"] == pytest.approx(runs[name]["val/ndcg_at_10"], abs=1e-6)
        assert members.loc[i, "test/ndcg_at_10"] == pytest.approx(runs[name]["test/ndcg_at_10"], abs=1e-6)
    # the grid contains every member alone, so the tuned ensemble is at least as good on validation
    assert metrics["val/ndcg_at_10"] >= max(runs[m]["val/ndcg_at_10"] for m in MEMBERS) - 1e-9
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 15  # the 0.25-step simplex of 3 weights
    client = tracking_client(uri)
    run = client.get_run(metrics["run_id"])
    assert run.data.tags["ensemble.members"] == ",".join(member_ids) and run.data.tags["model"] == "Ensemble"
    weights = [float(run.data.params[f"weight.{i}.{m}"]) for i, m in enumerate(members["member"][:3])]
    assert sum(weights) == pytest.approx(1.0) and run.data.params["method"] == "rrf"
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test/ndcg_at_10"])
    assert 0 <= run.data.metrics["ensemble/t_pvalue"] <= 1
    # the per-user results make the ensemble comparable like any run
    assert compare_main(["--tracking-uri", uri, "--significance", metrics["run_id"], ids["ease"],
                         "--n-bootstrap", "100"]) == 0
    # the logged model serves: runs:/<id>/model recommends unseen items, unknown users get popularity
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{metrics['run_id']}/model")
    finally:
        mlflow.set_tracking_uri(None)
    recs = model.predict(pd.DataFrame({"user": [0, 999_999], "k": [5, 5]}))
    assert len(recs) == 10 and recs.loc[recs.user == 999_999, "fallback"].all()
    assert not recs.loc[recs.user == 0, "fallback"].any()


def test_a_runs_validation_result_is_its_best_checkpoints():
    logged = {"val/ndcg_at_10": 0.21, "val_best/ndcg_at_10": 0.25, "val_best/epoch": 4.0, "test/ndcg_at_10": 0.24}
    assert final_metrics(logged) == {**logged, "val/ndcg_at_10": 0.25}
    assert final_metrics({"val/ndcg_at_10": 0.3}) == {"val/ndcg_at_10": 0.3}   # closed-form: one validation
