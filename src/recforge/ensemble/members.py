"""Load an ensemble's members from tracked runs: checks that they share a split and an item space, rebuilds the
split once and every member's model from its checkpoint."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from recforge.tracking.client import get_run
from recforge.analysis.significance import FINGERPRINT_TAG, check_same_split
from recforge.config import build_model
from recforge.data.datamodule import RecDataModule
from recforge.errors import RecForgeError
from recforge.models.base import Recommender
from recforge.pipeline import build_datamodule, model_spec

ITEM_IDS_ARTIFACT = "id_maps/item_ids.parquet"


@dataclass
class Member:
    run_id: str
    name: str
    config: DictConfig
    model: Recommender
    spec: tuple[str, dict[str, Any]]   # (import path, constructor kwargs): how a bundle rebuilds it


def _download(client, run_id: str, artifact: str, into: Path) -> Path:
    from mlflow.exceptions import MlflowException

    (into / run_id).mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, artifact, str(into / run_id)))
    except (MlflowException, OSError) as exc:
        raise RecForgeError(f"run {run_id} has no {artifact} artifact ({exc}); ensemble runs logged by "
                            "recforge-train with tracking on and a checkpoint callback") from None


def check_runs(client, run_ids: Sequence[str]) -> list:
    """The runs, after refusing duplicates, rating models, refit models and runs on different splits."""
    if len(run_ids) < 2:
        raise RecForgeError(f"an ensemble needs at least two runs, got {list(run_ids)}: set runs=[id1,id2,...]")
    if len(set(run_ids)) < len(run_ids):
        raise RecForgeError(f"a run id is given twice: {list(run_ids)}")
    runs = [get_run(client, run_id) for run_id in run_ids]
    for run in runs:
        if run.data.tags.get("feedback") != "implicit":
            raise RecForgeError(f"run {run.info.run_id} ({run.data.tags.get('model')}) ranks with "
                                f"{run.data.tags.get('feedback')} feedback; ensembles fuse rankings of implicit-feedback runs")
        if "refit/epochs" in run.data.metrics:
            raise RecForgeError(f"run {run.info.run_id} ({run.data.tags.get('model')}) was trained with refit=true: "
                                "its model learnt the validation part, on which an ensemble chooses its weights; "
                                "fuse the runs trained with refit=false")
    check_same_split({r.info.run_id: r.data.tags.get(FINGERPRINT_TAG, "none") for r in runs}, "they cannot be fused")
    return runs


def check_item_spaces(frames: dict[str, pd.DataFrame]) -> None:
    """Refuse members whose item index -> raw item id maps differ, naming the runs and how."""
    first_id, first = next(iter(frames.items()))
    for run_id, frame in frames.items():
        if len(frame) != len(first):
            raise RecForgeError(f"runs {first_id} and {run_id} have different item spaces ({len(first)} vs "
                                f"{len(frame)} items); fuse only runs trained on the same items")
        if not frame["item"].astype(str).equals(first["item"].astype(str)):
            raise RecForgeError(f"runs {first_id} and {run_id} map item indices to different raw item ids; "
                                "fuse only runs trained on the same data")


def load_members(client, run_ids: Sequence[str], data_dir: str | None = None,
                 max_scores_in_memory: int | None = None) -> tuple[list[Member], RecDataModule]:
    """Every member's model (weights from its checkpoint) and the split they share, rebuilt once."""
    from recforge.tracking.client import fetch_checkpoint
    from recforge.restore import checkpoint_config

    runs = check_runs(client, run_ids)
    with tempfile.TemporaryDirectory(prefix="recforge-ensemble-") as tmp:
        check_item_spaces({r: pd.read_parquet(_download(client, r, ITEM_IDS_ARTIFACT, Path(tmp))) for r in run_ids})
        checkpoints = {}
        for run_id in run_ids:
            (Path(tmp) / "ckpt" / run_id).mkdir(parents=True)
            path = fetch_checkpoint(run_id, client.tracking_uri, ".", Path(tmp) / "ckpt" / run_id)
            checkpoints[run_id] = torch.load(path, map_location="cpu", weights_only=True)
    configs = {run_id: checkpoint_config(checkpoint, f"run {run_id}", data_dir, max_scores_in_memory)
               for run_id, checkpoint in checkpoints.items()}
    first = runs[0]
    datamodule = build_datamodule(configs[first.info.run_id], "implicit")
    if datamodule.fingerprint != first.data.tags[FINGERPRINT_TAG]:
        raise RecForgeError(f"the data now gives split {datamodule.fingerprint}, but the runs were trained on "
                            f"{first.data.tags[FINGERPRINT_TAG]}: the raw data (data_dir) or the split code changed")
    data_kwargs = datamodule.model_kwargs()
    members = []
    for run in runs:
        run_id, cfg = run.info.run_id, configs[run.info.run_id]
        model = build_model(cfg, data_kwargs)
        state = {k[len("model."):]: v for k, v in checkpoints[run_id]["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
        model.eval()
        members.append(Member(run_id, run.data.tags.get("model", run_id[:8]), cfg, model, model_spec(cfg, datamodule)))
    return members, datamodule
