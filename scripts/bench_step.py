"""Per-step cost of BPR-MF training, Lightning's share of it, and what each remedy buys.

For each optimizer variant and batch size it times the fastest epoch after a warm-up one (the fastest, since a
shared host's neighbours slow some epochs and never speed one up), in ``--rounds`` alternations:

- ``bare``: the step with no Lightning (negatives sampled, forward, backward, optimizer step) over batches cut from a
  shuffle of device-resident tensors, as ``ShuffledBatches`` does;
- ``lightning``: the same number of steps per epoch through ``Trainer.fit`` with the LightningModule and the
  DataModule (``limit_train_batches``), so ``overhead`` = lightning - bare is Lightning's cost per step (its
  per-epoch hooks spread over the epoch's steps);
- ``compiled``: the bare step with the loss computation under ``torch.compile`` (dense gradients only: inductor
  cannot take sparse ones), per mode: ``default`` everywhere, ``reduce-overhead`` (CUDA graphs) on a GPU.

Variants, all with BPR-MF's dense or sparse embedding gradients: ``adam_loop`` and ``adam_foreach`` (torch's Adam as
it runs by default on a CPU, a loop over the parameters, and on a GPU, foreach kernels over all of them), ``adam``
(RecForge's default, ``optimizer.fused=true``: one fused kernel) and ``lazy_adam`` (sparse embedding gradients and
RecForge's LazyAdam: ``optimizer=sparse_adam model.sparse_grad=true``). On a GPU
``host_batches`` also times Lightning with ``datamodule.train_on_device=false``: batches gathered on the host and
copied from pinned memory each step, what the device-resident default avoids. Larger batches are the remaining
remedy: the batch-size columns give their throughput, and experiment=gowalla_lightgcn_large_batch shows what a
scaled learning rate keeps of the quality.

    RECFORGE_DATA_DIR=../shared/datasets python scripts/bench_step.py --data gowalla
    python scripts/bench_step.py --data synthetic-1m --batch-sizes 256 2048 --steps 100 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import recforge  # noqa: F401  (first: it tunes OpenBLAS before numpy loads)
import torch

from bench import DATASETS, experiment, timed_fit

VARIANTS = {
    "adam_loop": ["optimizer.fused=false", "+optimizer.foreach=false"],  # torch's default on a CPU
    "adam_foreach": ["optimizer.fused=false", "+optimizer.foreach=true"],  # torch's default on a GPU
    "adam": [],  # RecForge's default, optimizer.fused=true: one fused kernel
    "lazy_adam": ["optimizer=sparse_adam", "model.sparse_grad=true"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_ms_per_step(exp, device: torch.device, batch_size: int, steps: int, epochs: int, compile_mode=None) -> float:
    """ms per step of the fastest of epochs 2.. of ``steps`` steps, each starting with a shuffle of every row."""
    module = exp.module.to(device)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    loss_fn = module.compute_loss if compile_mode is None else torch.compile(module.compute_loss, mode=compile_mode)
    tensors = [t.to(device) for t in exp.datamodule.train_tensors]
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        order = torch.randperm(len(tensors[0]), device=device)
        users, items, ratings = (t[order] for t in tensors)
        for s in range(0, steps * batch_size, batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_fn((users[s : s + batch_size], items[s : s + batch_size], ratings[s : s + batch_size])).backward()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times[1:]) / steps


def lightning_ms_per_step(exp, device: torch.device, steps: int, epochs: int) -> float:
    return 1e3 * min(timed_fit(exp, device.type, epochs, steps)[1:]) / steps


def measure(data: str, variant: str, batch_size: int, steps: int, epochs: int, device: torch.device,
            compile_modes: list[str], tmp: Path, extra: list[str], rounds: int = 2) -> dict:
    overrides = VARIANTS[variant] + extra
    exp = experiment(data, ["model=bpr", f"datamodule.batch_size={batch_size}", *overrides], tmp)
    steps = min(steps, len(exp.datamodule.train_tensors[0]) // batch_size)
    if steps < 1:
        raise SystemExit(f"batch size {batch_size} is larger than the {data} training set")
    row = {"variant": variant, "dataset": data, "batch_size": batch_size, "device": str(device), "steps": steps,
           "n_train": len(exp.datamodule.train_tensors[0])}
    lightning, bare = float("inf"), float("inf")
    for _ in range(rounds):  # alternated, so that a slow minute on a shared host does not fall on one side only
        lightning = min(lightning, lightning_ms_per_step(exp, device, steps, epochs))
        bare = min(bare, bare_ms_per_step(exp, device, batch_size, steps, epochs))
    row.update(bare_ms_per_step=round(bare, 3), lightning_ms_per_step=round(lightning, 3),
               overhead_ms_per_step=round(lightning - bare, 3),
               lightning_interactions_per_s=round(batch_size / lightning * 1e3))
    if device.type == "cuda":  # the same steps from host batches copied through pinned memory
        exp.datamodule.train_on_device = False
        row["host_batches_ms_per_step"] = round(lightning_ms_per_step(exp, device, steps, epochs), 3)
    if "model.sparse_grad=true" not in overrides:
        for mode in compile_modes:  # the same experiment: timing does not depend on how far it has trained
            row[f"compiled_{mode}_ms_per_step"] = round(
                bare_ms_per_step(exp, device, batch_size, steps, epochs, compile_mode=mode), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="gowalla", choices=sorted(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 2048, 65536])
    parser.add_argument("--steps", type=int, default=200, help="steps timed per epoch (fewer if an epoch has fewer)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the Lightning and bare timings")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per measurement; the first is a warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--override", nargs="*", default=[], help="extra train config overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first one warms up)")
    device = torch.device(args.device)
    modes = [] if args.no_compile else ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}", file=sys.stderr)
    for variant in args.variants:
        for batch_size in args.batch_sizes:
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(args.data, variant, batch_size, args.steps, args.epochs, device, modes, Path(tmp),
                              args.override, args.rounds)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                extra = ", ".join(f"{k.removesuffix('_ms_per_step')} {v:.3f}" for k, v in row.items()
                                  if k.endswith("_ms_per_step") and k not in (
                                      "bare_ms_per_step", "lightning_ms_per_step", "overhead_ms_per_step"))
                print(f"{variant:>10} batch {batch_size:>6} on {device}: bare {row['bare_ms_per_step']:.3f} ms/step, "
                      f"Lightning {row['lightning_ms_per_step']:.3f} (overhead {row['overhead_ms_per_step']:+.3f}; "
                      f"{row['lightning_interactions_per_s']:,} interactions/s){'; ' + extra if extra else ''}",
                      flush=True)


if __name__ == "__main__":
    main()
