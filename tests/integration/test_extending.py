"""Extending RecForge from a user's own repository (docs/extending.md), with no change to RecForge: a model, a loss,
a dataset and a split in the user's package, their options in the user's config folder (RECFORGE_CONFIG_PATH),
then train, a two-trial sweep, compare and serve through RecForge's own commands, and the contract checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from recforge.data.sources.synthetic import SyntheticSource

PACKAGE = '''
"""A user's own recommender pieces, in their own package."""
import numpy as np
import pandas as pd
import torch
from torch import nn

from recforge.data.sources.base import RawData
from recforge.data.split import Split, Splitter
from recforge.losses import SampledNegativesLoss
from recforge.models.base import Recommender


class HybridMF(Recommender):
    """Dot product of user and item factors plus an item bias."""

    feedbacks = ("implicit",)

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 16) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.users, self.items = nn.Embedding(n_users, embedding_dim), nn.Embedding(n_items, embedding_dim)
        self.bias = nn.Embedding(n_items, 1)
        for table in (self.users, self.items):
            nn.init.normal_(table.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, users, items):
        u = self.users(users)
        if items.dim() == 2:
            u = u.unsqueeze(1)
        return (u * self.items(items)).sum(-1) + self.bias(items).squeeze(-1)

    def score_all(self, users):
        return self.users(users) @ self.items.weight.T + self.bias.weight.T


class SoftplusPairLoss(SampledNegativesLoss):
    """softplus(s_neg - s_pos): BPR written another way."""

    def __init__(self, num_negatives: int = 2) -> None:
        super().__init__(num_negatives)

    def forward(self, pos, neg):
        return nn.functional.softplus(neg - pos.unsqueeze(-1)).mean()


class TinyCsv:
    """Interactions from a CSV with user, item, rating and timestamp columns."""

    name = "tinycsv"

    def __init__(self, path: str) -> None:
        self.path = path

    def spec(self) -> dict:
        return {"source": "tinycsv", "path": self.path}

    def load(self) -> RawData:
        frame = pd.read_csv(self.path)
        return RawData(self.name, frame.astype({"rating": "float32", "timestamp": "int64"}), (1.0, 5.0),
                       origin=self.path)


class LastTwoOut(Splitter):
    """Each user's latest interaction is the test item, the one before it validates."""

    def __call__(self, frame):
        order = frame.sort_values(["user", "timestamp"], kind="stable")
        rank = order.groupby("user").cumcount(ascending=False).to_numpy()
        parts = [order[rank >= 2], order[rank == 1], order[rank == 0]]
        return Split(*(p.reset_index(drop=True) for p in parts), meta={"kind": "leave_one_out"})
'''

CONFIGS = {
    "model/hybridmf.yaml": """
        # @package _global_
        # HybridMF: user and item factors plus an item bias (mypkg).
        defaults:
          - override /loss: softplus
        model:
          _target_: mypkg.HybridMF
          embedding_dim: 16
        optimizer:
          lr: 0.01
    """,
    "loss/softplus.yaml": """
        # @package _global_
        # softplus(s_neg - s_pos) over sampled negatives (mypkg).
        loss:
          _target_: mypkg.SoftplusPairLoss
          num_negatives: 2
        monitor: val/ndcg_at_10
    """,
    "data/tinycsv.yaml": """
        # A CSV of interactions (mypkg).
        _target_: mypkg.TinyCsv
        path: ???
    """,
    "split/last_two_out.yaml": """
        # The latest interaction of each user is the test item, the one before it validates (mypkg).
        _target_: mypkg.LastTwoOut
    """,
    "hparams_search/hybridmf.yaml": """
        # @package _global_
        # Optuna search for HybridMF: its size and learning rate.
        defaults:
          - override /model: hybridmf
          - override /hydra/sweeper: optuna
        optimized_metric: val/ndcg_at_10
        hydra:
          sweeper:
            n_trials: 2
            params:
              model.embedding_dim: choice(8, 16)
              optimizer.lr: tag(log, interval(0.001, 0.05))
    """,
}


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("user_repo")
    (repo / "mypkg").mkdir()
    (repo / "mypkg" / "__init__.py").write_text(PACKAGE)
    for name, text in CONFIGS.items():
        (repo / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "conf" / name).write_text(textwrap.dedent(text).lstrip())
    raw = SyntheticSource(n_users=120, n_items=60, mean_interactions=12).load().interactions
    raw[["user", "item", "rating", "timestamp"]].to_csv(repo / "interactions.csv", index=False)
    return repo


def command(repo: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "RECFORGE_CONFIG_PATH": str(repo / "conf"), "PYTHONPATH": str(repo)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return [sys.executable, *args], env


def run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    cmd, env = command(repo, *args)
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def experiment(repo: Path) -> list[str]:
    return ["model=hybridmf", "data=tinycsv", f"data.path={repo / 'interactions.csv'}", "split=last_two_out",
            "trainer.max_epochs=3", "datamodule.batch_size=256", f"paths.log_dir={repo / 'logs'}",
            f"paths.cache_dir={repo / 'cache'}"]


def test_train_sweep_compare_and_serve_a_users_own_model(user_repo):
    out = user_repo / "run"
    run(user_repo, "-m", "recforge.train", *experiment(user_repo), f"paths.output_dir={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test/ndcg_at_10"] <= 1

    run(user_repo, "-m", "recforge.train", "-m", "hparams_search=hybridmf", "hydra/sweeper/pruner=none",
        *experiment(user_repo), f"hydra.sweep.dir={user_repo / 'sweep'}")
    assert list((user_repo / "sweep").rglob("best_*.yaml")), "the sweep wrote no best experiment"

    uri = f"sqlite:///{user_repo / 'logs' / 'mlflow.db'}"
    compared = run(user_repo, "-m", "recforge.compare", "--tracking-uri", uri, "--experiment", "recforge",
                   "--no-plots", "--out", str(user_repo / "report"))
    assert "HybridMF" in compared.stdout or "hybridmf" in compared.stdout
    assert list((user_repo / "report").glob("*.csv"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd, env = command(user_repo, "-m", "recforge.serving.cli", "--bundle", str(out / "model"), "--port", str(port),
                       "--trust", "mypkg.*")
    server = subprocess.Popen(cmd, cwd=user_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        user = int(pd.read_csv(user_repo / "interactions.csv")["user"].iloc[0])
        body = json.dumps({"user": user, "k": 5}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the service did not answer within 120 s"
                time.sleep(0.5)
        assert len(answer["items"]) == 5 and not answer["fallback"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serving_a_users_model_needs_it_trusted(user_repo):
    out = user_repo / "untrusted"
    run(user_repo, "-m", "recforge.train", *experiment(user_repo), "trainer.max_epochs=1", "tracking=none",
        f"paths.output_dir={out}")
    cmd, env = command(user_repo, "-m", "recforge.serving.batch", "--bundle", str(out / "model"), "-o",
                       str(user_repo / "recs.parquet"))
    result = subprocess.run(cmd, cwd=user_repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "mypkg.HybridMF" in result.stderr and "trust" in result.stderr


def test_the_contract_checks_run_on_a_users_model(user_repo, monkeypatch):
    from recforge.testing import CONTRACT_CHECKS

    monkeypatch.syspath_prepend(str(user_repo))
    for check in CONTRACT_CHECKS:
        check("hybridmf", config_dirs=[user_repo / "conf"])


def test_a_config_path_that_is_not_a_folder_is_one_line(tmp_path):
    env = {**os.environ, "RECFORGE_CONFIG_PATH": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "recforge.train", "tracking=none"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "RECFORGE_CONFIG_PATH" in result.stderr and "missing" in result.stderr
