"""The benchmark harness: training and evaluation throughput of the real training path (LightningModule +
DataModule) for (model, dataset, batch size, device).

Prints, per dataset: seconds per training epoch and interactions/s (mean of the epochs after the first), the
same epoch as a bare PyTorch loop over the same batches (the floor Lightning adds to), full-ranking
evaluation time, peak host and GPU memory and the final test metrics. ``--json`` prints one object per line
with the keys model, dataset, batch_size, device, train_s_per_epoch, interactions_per_s, eval_s, peak_rss_mb,
peak_gpu_mb and metrics (plus the bare-loop numbers and sizes).

    python scripts/bench.py                                    # BPR-MF on ML-100K (if the data is found) and synthetic 1M
    python scripts/bench.py --data gowalla --batch-size 2048 --epochs 3 --sparse   # SparseAdam, sparse embedding grads
    python scripts/bench.py --data synthetic-1m --batch-size 65536 --device cuda --json
    python scripts/bench.py --data gowalla --override model.embedding_dim=128
    python scripts/bench.py --interactions /tmp/inter16m.parquet --model lightgcn --batch-size 65536 \
        --epochs 1 --limit-batches 10 --no-bare-loop --no-eval-warmup --json     # what bench_scale.py runs

``--interactions`` takes any user,item[,rating,timestamp] file (``data=custom``, random 80/10/10 split), e.g. one
written by ``scripts/gen_interactions.py``. ``--limit-batches N`` trains N batches per epoch (interactions/s
then counts N x batch size), for models whose full epoch is too long on the device at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import recforge  # noqa: F401  (first: it tunes OpenBLAS before numpy loads, see recforge/__init__.py)
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from recforge.config import CONFIG_DIR
from recforge.pipeline import build_experiment

DATASETS = {
    "ml-100k": ["data=ml-100k"],
    "gowalla": ["data=gowalla", "split=lightgcn", "split.validation=test", "eval.ks=[20]", "monitor=val/recall_at_20"],
    "synthetic-1m": ["data.n_users=20000", "data.n_items=5000", "data.mean_interactions=50"],
}


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)

    @staticmethod
    def _sync(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()


def bare_loop_epoch(exp, device: torch.device, batch_size: int, limit_batches: int | None = None) -> float:
    """The same epoch with no Lightning: shuffle (one gather, as ``ShuffledBatches`` does), slice, sample
    negatives, forward, backward, step (the first ``limit_batches`` batches only, when given)."""
    module = exp.module.to(device)
    optimizer = module.configure_optimizers()
    tensors = [t.to(device) for t in exp.datamodule.train_tensors]
    order = torch.randperm(len(tensors[0]), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    users, items, ratings = (t[order] for t in tensors)
    stop = len(order) if limit_batches is None else min(len(order), limit_batches * batch_size)
    for s in range(0, stop, batch_size):
        optimizer.zero_grad(set_to_none=True)
        module.compute_loss((users[s : s + batch_size], items[s : s + batch_size],
                             ratings[s : s + batch_size])).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


RECBOLE_MODELS = {"bpr": "BPR", "lightgcn": "LightGCN", "neumf": "NeuMF", "ease": "EASE", "itemknn": "ItemKNN"}


ATOMIC_FIELDS = {"user": "user_id:token", "item": "item_id:token", "timestamp": "timestamp:float",
                 "history": "item_id_list:token_seq"}  # frame column -> RecBole atomic field


def export_atomic(parts: dict[str, pd.DataFrame], folder: Path, name: str) -> None:
    """RecBole atomic benchmark files ``<name>.<part>.inter`` (``benchmark_filename``), one per frame of ``parts``
    (train, valid, test), with the frame's columns among user, item, timestamp and history (a sequential model's
    input items, space-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, frame in parts.items():
        columns = [c for c in ATOMIC_FIELDS if c in frame]
        frame[columns].to_csv(folder / f"{name}.{part}.inter", sep="\t", index=False,
                              header=[ATOMIC_FIELDS[c] for c in columns])


def recbole_json(python: str, script: str, args: list[str], cwd: Path) -> dict:
    """Run ``scripts/<script>`` under RecBole's interpreter ``python`` in ``cwd`` (RecBole writes logs and
    checkpoints there) and return the JSON object its last output line holds."""
    import subprocess

    done = subprocess.run([python, str(Path(__file__).with_name(script)), *args], capture_output=True, text=True,
                          cwd=cwd)
    if done.returncode != 0:  # the first line says how it ended (a kill leaves no traceback), then stderr's tail
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        last = (done.stderr.strip().splitlines() or ["no output on stderr"])[-1]
        raise RuntimeError(f"RecBole run failed ({how}): {last}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_recbole(python: str, datamodule, data: str, model: str, batch_size: int, epochs: int, device: str,
                tmp: Path) -> dict:
    """RecBole 1.2.1 on the same split, in its own interpreter (scripts/bench_recbole.py)."""
    name = "rf_" + "".join(c if c.isalnum() else "_" for c in Path(data.removeprefix("file:")).stem)
    split = datamodule.split
    export_atomic({"train": split.train, "valid": split.val, "test": split.test}, tmp / "recbole" / name, name)
    return recbole_json(python, "bench_recbole.py", [
        "--data-path", str(tmp / "recbole"), "--dataset", name, "--model", RECBOLE_MODELS.get(model, model),
        "--batch-size", str(batch_size), "--epochs", str(epochs), "--device", device], tmp)


def data_overrides(data: str) -> list[str]:
    """Config overrides for a named benchmark dataset, or ``file:<path>`` for an interactions file."""
    if data.startswith("file:"):
        return ["data=custom", f"data.path={data.removeprefix('file:')}"]
    return DATASETS[data]


def experiment(data: str, overrides: list[str], tmp: Path):
    """The experiment of the train config on benchmark dataset ``data`` with ``overrides``, tracking and callbacks
    off, outputs under ``tmp``, seeded."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=data_overrides(data) + ["tracking=none", "callbacks=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
    pl.seed_everything(0, verbose=False)
    return build_experiment(cfg)


def timed_fit(exp, device: str, epochs: int, limit_batches: int | None = None) -> list[float]:
    """Seconds of each training epoch of a Lightning fit of ``exp`` (no validation, logger or checkpoints)."""
    timer = EpochTimer()
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=epochs, logger=False,
                         callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         limit_train_batches=limit_batches)
    trainer.fit(exp.module, datamodule=exp.datamodule)
    return timer.times


def run(data: str, model: str, batch_size: int, epochs: int, device: str, tmp: Path,
        extra: list[str] | None = None, recbole: str | None = None, limit_batches: int | None = None,
        bare_loop: bool = True, eval_warmup: bool = True) -> dict:
    exp = experiment(data, [f"model={model}", f"datamodule.batch_size={batch_size}", f"trainer.max_epochs={epochs}",
                            *(extra or [])], tmp)
    n_train = len(exp.datamodule.split.train)
    accelerator = "gpu" if device == "cuda" else "cpu"
    train_start = time.perf_counter()
    times = timed_fit(exp, device, epochs, limit_batches)
    fit_s = time.perf_counter() - train_start
    steady = times[1:] or times
    epoch_s = sum(steady) / len(steady)
    n_epoch = n_train if limit_batches is None else min(n_train, limit_batches * batch_size)  # trained per epoch
    exp.module.to(torch.device(device))
    eval_trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                              enable_model_summary=False)
    if eval_warmup:
        eval_trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    metrics = eval_trainer.test(exp.module, datamodule=exp.datamodule, verbose=False)[0]
    if device == "cuda":
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - start
    # after the evaluation: the bare epoch trains the model further, and the metrics are those of the fit
    bare_s = bare_loop_epoch(exp, torch.device(device), batch_size, limit_batches) if bare_loop else None
    row = {
        "model": model, "dataset": data, "batch_size": batch_size, "device": device,
        "n_train": n_train, "users": exp.datamodule.n_users, "items": exp.datamodule.n_items,
        "eval_users": len(np.unique(exp.datamodule.split.test["user"].to_numpy())),
        "limit_batches": limit_batches, "fit_s": round(fit_s, 2),
        "train_s_per_epoch": round(epoch_s, 4), "interactions_per_s": round(n_epoch / epoch_s),
        "bare_loop_s_per_epoch": None if bare_s is None else round(bare_s, 4),
        "bare_loop_interactions_per_s": None if bare_s is None else round(n_epoch / bare_s),
        "eval_s": round(eval_s, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else 0.0,
        "metrics": {k: round(v, 4) for k, v in metrics.items() if k.split("/")[-1] in (
            "ndcg_at_10", "recall_at_10", "ndcg_at_20", "recall_at_20")},
    }
    if recbole:
        other = run_recbole(recbole, exp.datamodule, data, model, batch_size, epochs, device, tmp)
        row["recbole"] = other
        row["speedup_vs_recbole"] = round(row["interactions_per_s"] / other["interactions_per_s"], 2)
        row["eval_speedup_vs_recbole"] = round(other["eval_s"] / row["eval_s"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=None, choices=sorted(DATASETS))
    parser.add_argument("--interactions", type=Path, default=None,
                        help="an interactions file (user,item[,rating,timestamp]) instead of --data")
    parser.add_argument("--limit-batches", type=int, default=None, help="train only this many batches per epoch")
    parser.add_argument("--no-bare-loop", action="store_true", help="skip the bare PyTorch epoch")
    parser.add_argument("--no-eval-warmup", action="store_true", help="time the first evaluation (no warm-up run)")
    parser.add_argument("--model", default="bpr")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sparse", action="store_true",
                        help="sparse embedding gradients + lazy Adam (model.sparse_grad=true optimizer=sparse_adam)")
    parser.add_argument("--override", nargs="*", default=[], help="extra train config overrides")
    parser.add_argument("--recbole", metavar="PYTHON", default=None,
                        help="also run RecBole 1.2.1 on the same split with this interpreter and print the ratio")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # --override last: it wins over what --sparse sets (e.g. --sparse --override optimizer.lr=0.02)
    extra = (["optimizer=sparse_adam", "model.sparse_grad=true", "optimizer.lr=0.005"] if args.sparse else []) + list(
        args.override)
    if args.interactions is not None:
        if not args.interactions.is_file():
            parser.error(f"--interactions {args.interactions}: file not found")
        data = [f"file:{args.interactions.resolve()}"]
    else:
        data = args.data or (["ml-100k"] if os.environ.get("RECFORGE_DATA_DIR") else []) + ["synthetic-1m"]
    import tempfile

    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}", file=sys.stderr)
    for name in data:
        with tempfile.TemporaryDirectory() as tmp:
            row = run(name, args.model, args.batch_size, args.epochs, args.device, Path(tmp), extra, args.recbole,
                      args.limit_batches, not args.no_bare_loop, not args.no_eval_warmup)
            row["overrides"] = extra
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['dataset']:>13} {row['model']} batch {row['batch_size']} on {row['device']}: "
                  f"{row['train_s_per_epoch']:.3f} s/epoch ({row['interactions_per_s']:,} interactions/s; "
                  f"bare PyTorch loop {row['bare_loop_s_per_epoch'] or float('nan'):.3f} s), full-ranking eval {row['eval_s']:.3f} s, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB, GPU {row['peak_gpu_mb']:.0f} MB, {row['metrics']}")
            if "recbole" in row:
                other = row["recbole"]
                print(f"{'RecBole 1.2.1':>13} {other['model']}: {other['train_s_per_epoch']:.3f} s/epoch "
                      f"({other['interactions_per_s']:,} interactions/s), eval {other['eval_s']:.3f} s, {other['metrics']}; "
                      f"RecForge is {row['speedup_vs_recbole']}x in training, {row['eval_speedup_vs_recbole']}x in eval")


if __name__ == "__main__":
    main()
