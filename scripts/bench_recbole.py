"""RecBole's side of ``scripts/bench.py --recbole``: train and evaluate one RecBole model on atomic files that
bench.py exported from RecForge's own split, and print one JSON line with the same keys.

Runs under a Python that has RecBole 1.2.1 (keep it out of RecForge's environment: it pins old libraries), e.g.

    python3 -m venv /tmp/rbvenv && /tmp/rbvenv/bin/pip install torch==2.13.0 recbole==1.2.1 'numpy<2'
    python scripts/bench.py --data gowalla --recbole /tmp/rbvenv/bin/python

RecBole 1.2.1 on current libraries needs four shims, kept here and not in the package: NumPy's removed scalar
aliases (``np.float``, ``np.long`` ...), ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (its checkpoints hold pickled
configs), ``scipy.sparse.dok_matrix._update`` (gone from SciPy, used by LightGCN's adjacency) and pandas 3's
``Series.agg(len)`` (now the Series' length, where RecBole wants each token sequence's). Importing this module
applies them (``scripts/recbole_fit.py`` does). Empty token sequences still fail on pandas 3 (RecBole's chained
``fillna(inplace=True)`` no longer writes through), so exported files have none.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402

for alias, target in (("float", float), ("int", int), ("bool", bool), ("object", object), ("str", str),
                      ("long", int), ("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if not hasattr(np, alias):
        setattr(np, alias, target)

import scipy.sparse as sp  # noqa: E402

if not hasattr(sp.dok_matrix, "_update"):
    def _update(self, data):  # the dict.update RecBole's LightGCN calls on a dok_matrix
        for key, value in dict(data).items():
            self[key] = value
    sp.dok_matrix._update = _update

import pandas as pd  # noqa: E402

if not isinstance(pd.Series([[0]]).agg(len), pd.Series):  # pandas 3 applies agg(len) to the whole Series
    _series_agg = pd.Series.agg

    def _agg(self, func=None, *args, **kwargs):  # RecBole's agg(len) means each row's length (token sequences)
        return self.map(len) if func is len else _series_agg(self, func, *args, **kwargs)
    pd.Series.agg = pd.Series.aggregate = _agg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-path", required=True, help="folder holding <dataset>/<dataset>.{train,valid,test}.inter")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="BPR")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--topk", type=int, nargs="+", default=[20])
    args = parser.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model

    config = Config(model=args.model, dataset=args.dataset, config_dict={
        "data_path": args.data_path, "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "embedding_size": args.embedding_size,
        "train_batch_size": args.batch_size, "eval_batch_size": 4096, "epochs": args.epochs,
        "eval_step": args.epochs + 1, "learning_rate": 0.001, "topk": args.topk, "metrics": ["Recall", "NDCG"],
        "valid_metric": f"Recall@{args.topk[0]}", "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}, "device": args.device,
        "use_gpu": args.device != "cpu", "worker": 0, "show_progress": False, "seed": 0,
        "checkpoint_dir": os.path.join(args.data_path, "saved"), "log_wandb": False, "state": "WARNING",
    })
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    model = get_model(args.model)(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    times = []
    for epoch in range(args.epochs):
        if args.device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        if args.device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_s = time.perf_counter() - start
    steady = times[1:] or times
    epoch_s = sum(steady) / len(steady)
    n_train = len(train_data.dataset)
    print(json.dumps({
        "model": f"recbole-{args.model}", "dataset": args.dataset, "batch_size": args.batch_size, "device": args.device,
        "train_s_per_epoch": round(epoch_s, 4), "interactions_per_s": round(n_train / epoch_s), "eval_s": round(eval_s, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device != "cpu" else 0.0,
        "metrics": {k: round(float(v), 4) for k, v in result.items()}, "n_train": n_train,
    }))


if __name__ == "__main__":
    main()
