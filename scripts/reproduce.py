"""Run a reproduction table: each row one experiment, trained and tested as ``recforge-train`` would (in this
process, tracking off), printed as a Markdown table with the command that gives each row.

    python scripts/reproduce.py ml100k-rating            # biased MF, SVD++, I-AutoRec, mlp_rating, BPMF on the u1-u5 folds
    python scripts/reproduce.py implicit --data ml-100k --split leave_one_out [--models ease bpr sasrec ...]
    python scripts/reproduce.py implicit --data lastfm-hetrec --split random --json out.json
    python scripts/reproduce.py gowalla [--models pop itemknn ials rp3beta_tuned gfcf bspm ease bpr ...]
    python scripts/reproduce.py lastfm-gnn --work-dir DIR  # RecBole-GNN's Last.fm protocol, in sittings

Real data is read from ``RECFORGE_DATA_DIR`` (e.g. ``../shared/datasets``) or downloaded. Results are means
over the folds with their standard deviation; every run's metrics are printed as it finishes (``--quiet`` off).
Rows of hours go in sittings with ``--work-dir DIR``: each row trains in a folder of DIR, the same command run again
goes on from a stopped row's last epoch and reads a finished row's metrics back instead of training it again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RATING_MODELS = {  # label -> overrides (each an experiment file tuned on u1's validation part)
    "biased MF": ["experiment=ml100k_mf"],
    "SVD++": ["experiment=ml100k_svdpp"],
    "I-AutoRec": ["experiment=ml100k_autorec"],
    # the model file's lr and weight decay (chosen on random splits' validation, docs/defaults.md#autorec) with
    # the experiment's epoch budget: the experiment's own config but for its u1-tuned optimizer values
    "I-AutoRec, the defaults' lr and weight decay": ["data=ml-100k", "model=autorec", "trainer.max_epochs=150",
                                                     "callbacks.early_stopping.patience=10"],
    "mlp_rating": ["experiment=ml100k_mlp_rating"],
    "BPMF": ["experiment=ml100k_bpmf"],  # nothing tuned: trains on the whole u<k>.base (split.validation=test)
    "BPMF, 90% train": ["experiment=ml100k_bpmf", "split.validation=carve"],  # the rows above's training data
}
RANKING_MODELS = {  # label -> overrides on top of data=<data> split=<split>
    "pop": ["model=pop"],
    "itemknn": ["model=itemknn"],
    "ease": ["model=ease"],
    "ials": ["model=ials"],
    "bpr": ["model=bpr", "trainer.max_epochs=60"],
    "gmf": ["model=gmf", "trainer.max_epochs=30"],
    "mlp": ["model=mlp", "trainer.max_epochs=30"],
    "neumf": ["model=neumf", "trainer.max_epochs=30"],
    "convncf": ["model=convncf", "trainer.max_epochs=30"],
    "fm": ["model=fm", "trainer.max_epochs=60"],
    "deepfm": ["model=deepfm", "trainer.max_epochs=30"],
    "ngcf": ["model=ngcf", "trainer.max_epochs=100"],
    "lightgcn": ["model=lightgcn", "trainer.max_epochs=100"],
    "multvae": ["model=multvae", "trainer.max_epochs=300", "callbacks.early_stopping.patience=30"],
    "multdae": ["model=multdae", "trainer.max_epochs=300", "callbacks.early_stopping.patience=30"],
    "cdae": ["model=cdae", "trainer.max_epochs=200", "callbacks.early_stopping.patience=20"],
    "sasrec": ["model=sasrec"],  # its defaults (docs/defaults.md#sasrec)
    "gru4rec": ["model=gru4rec"],  # its defaults (docs/defaults.md#gru4rec)
    "bert4rec": ["model=bert4rec"],  # its defaults (docs/defaults.md#bert4rec)
    "caser": ["model=caser"],  # its defaults (docs/defaults.md#caser)
}
RANKING_METRICS = ("test/recall_at_10", "test/recall_at_20", "test/ndcg_at_10", "test/ndcg_at_20")
_GOWALLA = ["data=gowalla", "split=lightgcn", "split.validation=test", "eval.ks=[20]", "monitor=val/recall_at_20"]
GOWALLA_MODELS = {  # label -> overrides; the test file doubles as validation where nothing is selected on it
    "pop": [*_GOWALLA, "model=pop"],
    "itemknn": [*_GOWALLA, "model=itemknn"],
    "itemknn1000": [*_GOWALLA, "model=itemknn", "model.k_neighbors=1000"],  # chosen on a carved validation part (below)
    # the same, after asymmetric cosine was added: 200 neighbours, alpha 0.1 (docs/results.md)
    "itemknn_tuned": [*_GOWALLA, "model=itemknn", "model.k_neighbors=200", "model.asymmetric_alpha=0.1"],
    "ials": [*_GOWALLA, "model=ials"],  # today's default, 256 factors (docs/defaults.md#ials)
    "ials32": [*_GOWALLA, "model=ials", "model.factors=32"],  # the default before #20
    "ials64": [*_GOWALLA, "model=ials", "model.factors=64"],  # the other rows' embedding size
    "ials128": [*_GOWALLA, "model=ials", "model.factors=128"],  # tried after 64 (no validation set here)
    "ials256": [*_GOWALLA, "model=ials", "model.factors=256"],
    "ials512": [*_GOWALLA, "model=ials", "model.factors=512"],
    "ease": [*_GOWALLA, "model=ease"],  # closed form at the default L2 (100, chosen on ML-100K and Last.fm); ~14 GB float32
    "ease500": [*_GOWALLA, "model=ease", "model.l2_reg=500"],  # L2 500, the default before #20; nothing chosen here
    "rp3beta": [*_GOWALLA, "model=rp3beta"],  # closed form at its defaults, nothing chosen
    # fsSLIM, each item on its 200 nearest; L1 and L2 chosen on a carved validation part (docs/results.md)
    "slim_tuned": [*_GOWALLA, "model=slim", "model.candidates=200", "model.l1_reg=0.1", "model.l2_reg=30"],
    # chosen on a validation part carved from the training file (docs/results.md), then fitted on all of it
    "rp3beta_tuned": [*_GOWALLA, "model=rp3beta", "model.alpha=0.8", "model.beta=0.2", "model.k_neighbors=1000"],
    # the graph filters at their papers' Gowalla settings, which their authors chose on this split's test file
    "gfcf": [*_GOWALLA, "model=gfcf", "model.factors=256", "model.ideal_weight=0.3"],
    "bspm": [*_GOWALLA, "model=bspm", "model.factors=448", "model.ideal_weight=0.2", "model.sharpening_time=2.5"],
    "bpr": ["experiment=gowalla_bpr"],  # early stopping on a validation part carved from the training file
    "lightgcn": ["experiment=gowalla_lightgcn"],  # the paper's protocol, 1,000 epochs: a GPU run
    "lightgcn_large_batch": ["experiment=gowalla_lightgcn_large_batch"],  # batch 16,384, lr 0.008 cosine, 600 epochs: ~75 min on 2 cores
    "ngcf": ["experiment=gowalla_ngcf"],  # the paper's protocol, 400 epochs: a GPU run
    # the cosine contrastive loss with 1,000 negatives shared by each batch; early stopping on a carved validation part
    "mf_ccl": ["experiment=gowalla_mf_ccl"],  # MF trained with CCL alone, then refit on the whole training file
    "mf_ccl_selection": ["experiment=gowalla_mf_ccl", "refit=false"],  # the model early stopping chose, on 90%
    "simplex": ["experiment=gowalla_simplex"],  # refit on the whole training file, as mf_ccl
    "simplex_selection": ["experiment=gowalla_simplex", "refit=false"],
    "ultragcn": ["experiment=gowalla_ultragcn"],  # 1,500 shared negatives; the reference code's Gowalla weights
    "multvae": ["experiment=gowalla_multvae"],  # dropout, KL annealing chosen on a carved part; stopped there, refit
    "multvae_selection": ["experiment=gowalla_multvae", "refit=false"],
}
_LASTFM_GNN = ["experiment=lastfm_recbole_gnn"]
# label -> overrides: RecForge's defaults (NGCF's of the day its rows ran), then the values RecBole-GNN's table chose
LASTFM_GNN_MODELS = {
    "bpr": [*_LASTFM_GNN, "model=bpr"],
    "bpr_recbole_gnn": [*_LASTFM_GNN, "model=bpr", "optimizer.lr=0.0005"],
    "neumf": [*_LASTFM_GNN, "model=neumf"],
    "neumf_recbole_gnn": [*_LASTFM_GNN, "model=neumf", "optimizer.lr=0.0005"],  # dropout 0.1 is the default
    # NGCF's rows ran at message dropout 0.1, RecBole-GNN's and RecForge's default until 2026-12-07 (now 0.0)
    "ngcf": [*_LASTFM_GNN, "model=ngcf", "model.message_dropout=0.1"],
    "ngcf_recbole_gnn": [*_LASTFM_GNN, "model=ngcf", "model.message_dropout=0.1", "optimizer.lr=0.0005"],
    "lightgcn": [*_LASTFM_GNN, "model=lightgcn"],
    "lightgcn_recbole_gnn": [*_LASTFM_GNN, "model=lightgcn", "model.n_layers=3"],  # lr 1e-3: the default
}
LASTFM_GNN_METRICS = ("test/recall_at_10", "test/mrr_at_10", "test/ndcg_at_10", "test/hr_at_10",
                      "test/precision_at_10")
GOWALLA_DEFAULT = ["pop", "itemknn", "ials32", "ials64", "ials", "bpr"]  # what a 2-core CPU runs in minutes
GOWALLA_METRICS = ("test/recall_at_20", "test/ndcg_at_20")


def compose_train(overrides: list[str]):
    """The train config for ``overrides``, untracked."""
    from hydra import compose, initialize_config_dir

    from recforge.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "tracking=none"])


def run(overrides: list[str], workdir: Path) -> dict[str, float]:
    from omegaconf import open_dict

    from recforge.train import train

    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(workdir / "out")
        cfg.paths.log_dir = str(workdir / "logs")
    return train(cfg)


def resume_overrides(workdir: Path) -> list[str]:
    """``resume_from`` the last checkpoint that a stopped run (Ctrl-C, ``kill``, a session's end) of :func:`run` left
    in ``workdir``, as overrides: none when it left none, and a run killed before its first checkpoint starts clean."""
    checkpoints = workdir / "out" / "checkpoints"
    last = checkpoints / "last.ckpt"
    if not last.is_file() and checkpoints.exists():
        shutil.rmtree(checkpoints)
    return [f"resume_from='{last}'"] if last.is_file() else []


def defaults_digest(overrides: list[str]) -> str:
    """The config RecForge composes from ``overrides`` (every default it trains with; its paths aside) as one hash: a
    folder from before one of them changed is stale, one from before another model's changed is not."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_train(overrides))
    cfg.pop("paths", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:20]


def kept_folder(folder: Path, defaults: str) -> Path:
    """``folder`` for the sittings of a row (of ``quality_recbole.py``) or a run (of ``choose_defaults.py``); emptied
    first if an earlier sitting ran under other RecForge defaults (``defaults``: :func:`defaults_digest` of its
    config)."""
    from recforge.utils.io import atomic_write_text

    stamp = folder / "defaults"
    if folder.exists() and (not stamp.is_file() or stamp.read_text() != defaults):
        print(f"{folder}: from a sitting under other RecForge defaults; starting afresh", file=sys.stderr)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, defaults)
    return folder


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def rating_table(folds: list[str], models: list[str], workdir: Path, verbose: bool) -> tuple[str, dict]:
    results: dict = {}
    lines = ["| model | command | " + " | ".join(folds) + " | mean RMSE | mean MAE | s/epoch |",
             "|---|---|" + "---:|" * (len(folds) + 3)]
    for label in models:
        rmse, mae, speed, fit = [], [], [], []
        for fold in folds:
            metrics = run([*RATING_MODELS[label], "split=predefined", f"split.name={fold}"], workdir / f"{label}-{fold}")
            rmse.append(metrics["test/rmse"]), mae.append(metrics["test/mae"]), speed.append(metrics["time/s_per_epoch"])
            fit.append(metrics["time/fit_s"])
            if verbose:
                print(f"{label} {fold}: test RMSE {rmse[-1]:.4f} MAE {mae[-1]:.4f}", flush=True)
        results[label] = {"rmse": rmse, "mae": mae}
        command = f"`recforge-train -m {' '.join(RATING_MODELS[label])} split=predefined split.name={','.join(folds)}`"
        lines.append(f"| {label} | {command} | " + " | ".join(f"{v:.4f}" for v in rmse)
                     + f" | {mean_std(rmse)} | {mean_std(mae)} | "
                     + (f"{statistics.mean(speed):.2f} |" if any(speed) else f"{statistics.mean(fit):.0f} s fit |"))
    return "\n".join(lines), results


def kept_run(overrides: list[str], folder: Path) -> dict[str, float]:
    """:func:`run` in ``folder`` across sittings: a finished run's metrics are read back, a stopped one goes on from
    its last checkpoint, and one trained under other defaults starts afresh (:func:`kept_folder`)."""
    from recforge.utils.io import atomic_write_text

    kept_folder(folder, defaults_digest(overrides))
    done = folder / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    metrics = {k: float(v) for k, v in run([*overrides, *resume_overrides(folder)], folder).items()
               if isinstance(v, (int, float))}
    atomic_write_text(done, json.dumps(metrics, indent=1))
    return metrics


def ranking_table(rows: dict[str, list[str]], metric_keys: tuple[str, ...], workdir: Path,
                  verbose: bool, kept: bool = False) -> tuple[str, dict]:
    """One row per ``label -> overrides``, with the test metrics ``metric_keys`` and the fit time; ``kept``: each
    row in sittings (:func:`kept_run`)."""
    results: dict = {}
    names = [m.split("/")[1].replace("_at_", "@").replace("recall", "Recall").replace("ndcg", "NDCG")
             .replace("mrr", "MRR").replace("hr", "Hit").replace("precision", "Precision") for m in metric_keys]
    lines = ["| model | command | " + " | ".join(names) + " | fit s |", "|---|---|" + "---:|" * (len(names) + 1)]
    for label, overrides in rows.items():
        metrics = (kept_run if kept else run)(overrides, workdir / label)
        results[label] = {k: metrics[k] for k in metric_keys}
        if verbose:
            print(label, {k: round(v, 4) for k, v in results[label].items()}, flush=True)
        lines.append(f"| {label} | `recforge-train {' '.join(overrides)}` | "
                     + " | ".join(f"{metrics[k]:.4f}" for k in metric_keys) + f" | {metrics['time/fit_s']:.0f} |")
    return "\n".join(lines), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["ml100k-rating", "implicit", "gowalla", "lastfm-gnn"])
    parser.add_argument("--data", default="ml-100k", help="implicit: the data config (ml-100k, lastfm-hetrec, ...)")
    parser.add_argument("--split", default="leave_one_out", help="implicit: the split config (leave_one_out, random)")
    parser.add_argument("--models", nargs="*", help="rows to run (default: all of the table's)")
    parser.add_argument("--folds", nargs="*", default=["u1", "u2", "u3", "u4", "u5"])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--work-dir", type=Path, help="ranking tables: train each row in a folder here, in sittings")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    known = {"ml100k-rating": RATING_MODELS, "implicit": RANKING_MODELS, "gowalla": GOWALLA_MODELS,
             "lastfm-gnn": LASTFM_GNN_MODELS}[args.table]
    models = args.models or (GOWALLA_DEFAULT if args.table == "gowalla" else list(known))
    unknown = sorted(set(models) - set(known))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(known)}")
    logging.disable(logging.WARNING)
    from recforge.cli import quiet_warnings

    quiet_warnings()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir, kept = (args.work_dir / args.table, True) if args.work_dir else (Path(tmp), False)
        if args.table == "ml100k-rating":
            table, results = rating_table(args.folds, models, Path(tmp), not args.quiet)
        elif args.table in ("gowalla", "lastfm-gnn"):
            metric_keys = GOWALLA_METRICS if args.table == "gowalla" else LASTFM_GNN_METRICS
            table, results = ranking_table({m: known[m] for m in models}, metric_keys, workdir, not args.quiet, kept)
        else:
            rows = {m: [f"data={args.data}", f"split={args.split}", *RANKING_MODELS[m]] for m in models}
            table, results = ranking_table(rows, RANKING_METRICS, workdir, not args.quiet, kept)
    print(table)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
