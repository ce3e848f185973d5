"""RecBole's side of ``scripts/quality_recbole.py``: train one RecBole 1.2.1 model with its own defaults on atomic
benchmark files (train/valid/test) exported from RecForge's split, early-stopped on validation as RecBole does, and
print one JSON line with its test metrics.

    /tmp/rbvenv/bin/python scripts/recbole_fit.py SPEC.json

``SPEC.json`` holds ``data_path``, ``dataset``, ``model`` (RecBole's name) and ``config`` (what overrides RecBole's
defaults: data path, files, evaluation protocol, device, seed, what the model family needs). Runs under RecBole's
own interpreter (the shims of ``scripts/bench_recbole.py`` make 1.2.1 import on current libraries).

With ``state_dir`` in the spec, training can stop and go on: after each validation the whole training state (the
weights, every optimizer the trainer holds, the epoch, early stopping's counters, every random generator, the model's
plain counters such as Mult-VAE's annealing step) is written there, atomically, with the spec's ``input`` digest, and
a run that finds a state of the same input continues after that epoch (one of another input is set aside); the
uninterrupted run and a stopped-and-continued one train the same. ``budget_s`` stops training at the first validation
past that many seconds (of this process), with the state saved, and prints ``{"paused": true, "epoch": ...}``: how
RecBole sides that take hours (SASRec on one CPU thread: about 4 minutes an epoch) run across several sittings.

Two sets of test metrics come back: ``reported``, RecBole's own evaluator on its best checkpoint, and ``metrics``,
the same model's scores ranked by RecForge's metric code (``src/recforge/metrics/ranking.py``, loaded by path) with
RecForge's mask: training items at validation, training and validation items at test. For general models the two
agree (RecBole masks the same items); RecBole's sequential evaluation masks nothing, so there only ``metrics``
follows RecForge's protocol.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import bench_recbole  # noqa: F401  (its shims first: RecBole 1.2.1 imports removed NumPy aliases)

RANKING = Path(__file__).resolve().parents[1] / "src" / "recforge" / "metrics" / "ranking.py"


def load_ranking():
    """RecForge's ranking metrics module, without importing the package (this interpreter does not have it)."""
    spec = importlib.util.spec_from_file_location("recforge_ranking", RANKING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seen_items(dataset, data_path: Path, name: str) -> dict[int, list[int]]:
    """RecBole user id -> RecBole item ids a test user must not be recommended: training and validation pairs
    except those that are test targets (RecForge's test mask). A sequential model's files hold them in
    ``<name>.seen.inter``: its training file lacks each user's first item, which has no input sequence."""
    import pandas as pd

    read = lambda part: pd.read_csv(data_path / name / f"{name}.{part}.inter", sep="\t", dtype=str,  # noqa: E731
                                    usecols=["user_id:token", "item_id:token"])
    seen = data_path / name / f"{name}.seen.inter"
    known = (read("seen") if seen.is_file() else pd.concat([read("train"), read("valid")])).drop_duplicates()
    test = read("test")
    known = known.merge(test, how="left", indicator=True)
    known = known[known["_merge"] == "left_only"]
    users = dataset.token2id(dataset.uid_field, known["user_id:token"].to_numpy())
    items = dataset.token2id(dataset.iid_field, known["item_id:token"].to_numpy())
    out: dict[int, list[int]] = {}
    for user, item in zip(users.tolist(), items.tolist()):
        out.setdefault(user, []).append(item)
    return out


def masked_metrics(trainer, test_data, seen: dict[int, list[int]], ks: list[int]) -> dict[str, float]:
    """Mean test Recall/NDCG over users of ``trainer.model``'s full ranking, computed by RecForge's code."""
    import torch

    ranking = load_ranking()
    uid_field = test_data._dataset.uid_field
    totals: dict[str, list] = {}
    trainer.model.eval()
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            users = interaction[uid_field].tolist()
            rows = [torch.full((len(seen.get(u, [])),), r, dtype=torch.long) for r, u in enumerate(users)]
            cols = [torch.as_tensor(seen.get(u, []), dtype=torch.long) for u in users]
            scores = ranking.mask_scores_(scores.float(), torch.cat(rows), torch.cat(cols))
            values, top = ranking.topk_items(scores, max(ks))
            hits, n_rel, ideal = ranking.relevance_matrix(len(users), top, positive_u, positive_i,
                                                          valid=torch.isfinite(values))
            for key, value in ranking.ranking_metrics(hits, n_rel, ks).items():
                if key.startswith(("recall_at_", "ndcg_at_")):
                    totals.setdefault(key, []).append(value)
    return {k: float(torch.cat(v).nanmean()) for k, v in totals.items()}


def pad_item_lists(config, loaders) -> None:
    """Pad sequential models' input lists to ``MAX_ITEM_LIST_LENGTH`` columns, as RecBole's own augmentation does;
    benchmark files are padded only to their longest list, too short for Caser (a kernel that tall)."""
    import torch

    field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    for loader in loaders:
        feat = loader._dataset.inter_feat
        lists = feat[field]
        feat.interaction[field] = torch.nn.functional.pad(lists, (0, config["MAX_ITEM_LIST_LENGTH"] - lists.shape[1]))


class Paused(Exception):
    """Training stopped at a validation past the time budget, its state saved."""


def training_state(trainer, train_data, scores: dict[int, float], epoch: int, wall_s: float) -> dict:
    """Everything the next epoch depends on, after ``epoch`` (from 0) and its validation; ``wall_s``: seconds so far,
    every sitting's."""
    import numpy as np
    import torch

    plain = {k: v for k, v in vars(trainer.model).items() if type(v) in (int, float, bool)}
    return {"epoch": epoch, "wall_s": wall_s, "cur_step": trainer.cur_step,
            "best_valid_score": trainer.best_valid_score, "scores": scores, "model": trainer.model.state_dict(),
            "plain": plain, "other_parameter": trainer.model.other_parameter(), "optimizers": optimizers(trainer),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "loader": train_data.generator.get_state()}}


def optimizers(trainer) -> dict[str, dict]:
    """The state of every optimizer ``trainer`` holds, by attribute: RecVAE's trainer has one for the encoder and one
    for the decoder, and points ``optimizer`` at the one of the latest phase (saved once, under its own name)."""
    import torch

    held = {name: value for name, value in vars(trainer).items() if isinstance(value, torch.optim.Optimizer)}
    named = sorted(held, key=lambda name: name == "optimizer")  # "optimizer" last: an alias of another if one is
    return {name: held[name].state_dict() for i, name in enumerate(named)
            if not any(held[name] is held[other] for other in named[:i])}


def save_state(path: Path, state: dict) -> None:
    import torch

    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_state(path: Path, digest: str | None) -> dict | None:
    """The training state of an earlier sitting on the same input (the files and settings, as ``digest``), if any;
    one of another input (a default or a file changed since) is set aside, not continued."""
    import torch

    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("input") == digest:
        return state
    os.replace(path, path.with_suffix(".stale"))
    print(f"recbole_fit: {path} was saved for other input files or settings; it is set aside ({path.stem}.stale) and "
          "training starts afresh", file=sys.stderr)
    return None


def restore_state(trainer, train_data, state: dict) -> tuple[dict[int, float], float]:
    """Put ``state`` back into ``trainer`` (and the training loader's generator); return the validation scores and
    the seconds the earlier sittings took."""
    import numpy as np
    import torch

    trainer.model.load_state_dict(state["model"])
    trainer.model.load_other_parameter(state["other_parameter"])
    for key, value in state["plain"].items():
        setattr(trainer.model, key, value)
    for name, optimizer in state["optimizers"].items():
        getattr(trainer, name).load_state_dict(optimizer)
    trainer.start_epoch, trainer.cur_step = state["epoch"] + 1, state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    train_data.generator.set_state(state["rng"]["loader"])
    return state["scores"], state["wall_s"]


def finished(trainer, epochs: int) -> bool:
    """Whether training ends after ``epochs`` epochs: early stopping's patience is spent, or the epochs are."""
    return trainer.cur_step > trainer.stopping_step or epochs >= trainer.epochs


def main() -> None:
    started = time.perf_counter()  # wall_s: from here (RecBole's imports on), every sitting's together
    spec = json.loads(Path(sys.argv[1]).read_text())
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import ModelType, get_model, get_trainer, init_seed

    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        pad_item_lists(config, (train_data, valid_data, test_data))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])  # as RecBole's run_recbole does
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    scores: dict[int, float] = {}  # epoch (from 1) -> validation score, at each validation
    earlier_s = 0.0  # seconds of earlier sittings
    state_dir = Path(spec["state_dir"]) if spec.get("state_dir") else None
    budget = spec.get("budget_s")
    if state_dir:
        state_dir.mkdir(parents=True, exist_ok=True)
        trainer.saved_model_file = str(state_dir / "best.pth")  # the best epoch's weights, kept across sittings
        saved = load_state(state_dir / "state.pth", spec.get("input"))
        if saved:
            scores, earlier_s = restore_state(trainer, train_data, saved)

    def after_validation(epoch: int, score: float) -> None:
        scores[epoch + 1] = float(score)
        if state_dir:
            wall_s = earlier_s + time.perf_counter() - started
            save_state(state_dir / "state.pth", {**training_state(trainer, train_data, scores, epoch, wall_s),
                                                 "input": spec.get("input")})
        if budget is not None and time.perf_counter() - started > budget and not finished(trainer, epoch + 1):
            raise Paused(epoch + 1)

    if scores and finished(trainer, max(scores)):  # a state saved at the last validation: nothing left to train
        trainer.eval_collector.data_collect(train_data)  # what fit would have collected
    else:
        try:
            trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=after_validation)
        except Paused as paused:
            print(json.dumps({"model": spec["model"], "paused": True, "epoch": paused.args[0],
                              "best_valid": max(scores.values()), "valid_metric": config["valid_metric"],
                              "wall_s": round(earlier_s + time.perf_counter() - started, 1)}))
            return
    reported = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    data_path = Path(spec["data_path"])
    metrics = masked_metrics(trainer, test_data, seen_items(dataset, data_path, spec["dataset"]), config["topk"])
    best = max(scores.values())
    print(json.dumps({
        "model": spec["model"], "metrics": metrics,
        "reported": {k.replace("@", "_at_"): float(v) for k, v in reported.items()},
        "epochs": max(scores), "best_epoch": max(e for e, v in scores.items() if v == best),  # RecBole keeps the latest
        "best_valid": best, "wall_s": round(earlier_s + time.perf_counter() - started, 1),
        "n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1, "n_train": len(train_data._dataset),
    }))


if __name__ == "__main__":
    main()
