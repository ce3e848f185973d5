"""DDP on 2 CPU processes (gloo): training runs, and its evaluation equals a single process's on the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recforge.eval import evaluate
from tests.conftest import REPO, compose_train


def test_ddp_two_cpu_processes_match_single_process_evaluation(tmp_path):
    log_dir = tmp_path / "logs"
    # 60 items, 1,000 scores per chunk: 16 users per evaluation chunk, an odd number of chunks per stage
    cmd = [sys.executable, "-m", "recforge.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "trainer.max_epochs=2",
           "datamodule.batch_size=128", "datamodule.max_scores_in_memory=1000", "tracking=none",
           f"paths.log_dir={log_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in (log_dir / "runs").iterdir() if (p / "metrics.json").exists()]
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "train_ddp_process_1.log").exists()  # a second process really ran

    cfg = compose_train([f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"], tmp_path / "eval", config_name="eval")
    single = evaluate(cfg)
    tested = {k: v for k, v in ddp.items() if k.startswith("test/")}
    assert tested and set(tested) == set(single)
    for name, value in tested.items():
        assert single[name] == pytest.approx(value, abs=1e-6), name


def test_training_batches_are_sharded_disjointly_and_evenly():
    import torch

    from recforge.data.batches import ShuffledBatches

    tensors = (torch.arange(10), torch.arange(10), torch.ones(10))
    one = ShuffledBatches(tensors, 3, seed=0)
    full = [b[0].tolist() for b in one.batches()]
    shards = [[b[0].tolist() for b in ShuffledBatches(tensors, 3, seed=0).batches(rank, 2)] for rank in range(2)]
    assert [len(s) for s in shards] == [2, 2]  # 4 batches of 3, 3, 3, 1 over 2 processes
    assert shards[0] == [full[0], full[2]] and shards[1] == [full[1], full[3]]
    three = [[b[0].tolist() for b in ShuffledBatches(tensors, 3, seed=0).batches(rank, 3)] for rank in range(3)]
    assert [len(s) for s in three] == [2, 2, 2] and three[1][1] == full[0]  # the last round wraps around


def test_split_eval_batch_keeps_every_users_rows():
    import torch

    from recforge.data.batches import split_eval_batch

    batch = {"users": torch.tensor([4, 5, 6]), "exclude_rows": torch.tensor([0, 2, 2]),
             "exclude_cols": torch.tensor([1, 3, 4]), "relevant_rows": torch.tensor([1, 2]),
             "relevant_cols": torch.tensor([0, 2]), "relevant_gains": torch.tensor([5.0, 3.0]),
             "later_rows": torch.tensor([0, 2]), "later_cols": torch.tensor([7, 8])}
    first, second = split_eval_batch(batch, 2)
    assert first["later_rows"].tolist() == [0] and second["later_rows"].tolist() == [0]
    assert first["later_cols"].tolist() == [7] and second["later_cols"].tolist() == [8]
    assert first["users"].tolist() == [4, 5] and second["users"].tolist() == [6]
    assert first["exclude_rows"].tolist() == [0] and second["exclude_cols"].tolist() == [3, 4]
    assert first["relevant_rows"].tolist() == [1] and second["relevant_rows"].tolist() == [0]
    assert second["relevant_gains"].tolist() == [3.0]


def test_each_ddp_process_draws_its_own_random_stream():
    """Every process starts from the run's one seed (a resumed run from rank 0's saved generators); at the start of
    training each reseeds from that stream and its rank, so their negatives and dropout masks differ, the same seed
    gives each rank the same draws again, and another seed other draws."""
    from types import SimpleNamespace

    import torch

    from recforge.training.checkpoint import CheckpointState

    def draws(rank: int, world: int, seed: int = 42, resumed_from: torch.Tensor | None = None) -> torch.Tensor:
        torch.manual_seed(seed)
        trainer = SimpleNamespace(world_size=world, global_rank=rank, ckpt_path=None, checkpoint_callbacks=[])
        callback = CheckpointState("", "")
        if resumed_from is not None:   # Lightning restores the callback's state before training starts
            callback.on_load_checkpoint(trainer, None, {"recforge_rng": {"cpu": resumed_from, "cuda": []}})
        callback.on_train_start(trainer, None)
        return torch.randint(1000, (8,))

    first, second = draws(0, 2), draws(1, 2)
    assert not torch.equal(first, second)
    assert torch.equal(first, draws(0, 2)) and torch.equal(second, draws(1, 2))
    assert not torch.equal(first, draws(0, 2, seed=43)) and not torch.equal(second, draws(1, 2, seed=43))
    saved = torch.manual_seed(7).get_state()   # rank 0's generators in a checkpoint
    resumed = [draws(rank, 2, resumed_from=saved) for rank in (0, 1)]
    assert not torch.equal(*resumed) and torch.equal(resumed[1], draws(1, 2, seed=0, resumed_from=saved))
    alone = draws(0, 1)
    torch.manual_seed(42)
    assert torch.equal(alone, torch.randint(1000, (8,)))  # one process: the seeded stream is left as it was
