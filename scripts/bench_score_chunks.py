"""How the tower models score every item (``score_all``, which validation and test run for every user), timed per
chunk size: ``max_activations`` bounds the activations one layer holds for a chunk of users (pairs times the
widest layer), and ``inplace`` is whether the towers' ReLUs overwrite their input (``mlp_tower``'s and ConvNCF's,
since 2026-12-07). Until then the chunks were 128 MiB of float32 a layer (``1 << 25``) for DeepFM, ConvNCF and the
field models and 4M pairs for MLP and NeuMF (``1 << 29`` activations for a 128-wide tower), with ReLUs that
allocated: each model's first row, "old". Now ``1 << 22`` for all of them.

    python scripts/bench_score_chunks.py                      # Last.fm's catalogue (17,632 items), 256 users
    python scripts/bench_score_chunks.py --models convncf --users 32
    python scripts/bench_score_chunks.py --items 1682 --users 943

Prints seconds per ``score_all`` of ``--users`` users (the best of ``--repeats`` rounds, the settings taking turns)
and each setting's speed-up over the old one. DeepFM's first-layer split (also 2026-12-07) is in every row. Name the
CPU beside the numbers, and run it alone.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from recforge.models.base import Recommender
from recforge.models.convncf import ConvNCF
from recforge.models.deepfm import DeepFM
from recforge.models.mlp import MLP
from recforge.models.neumf import NeuMF
from recforge.models.widedeep import WideDeep

CHUNKS = [1 << 25, 1 << 23, 1 << 22, 1 << 21, 1 << 20]


def models(n_users: int, n_items: int) -> dict[str, tuple[Recommender, int]]:
    """The tower models at their ``conf/model`` sizes, with 50 sparse binary item features for the field models
    (Last.fm's tags are of that kind), each with its old chunk in activations."""
    features = (torch.rand(n_items, 50) < 0.05).float()
    old_pairs = 1 << 22  # MLP's and NeuMF's old chunk: 4M pairs, times the tower's widest layer (128)
    return {
        "deepfm 200-200-200": (DeepFM(n_users, n_items, mlp_layers=[200, 200, 200], item_features=features), 1 << 25),
        "widedeep 256-128-64": (WideDeep(n_users, n_items, mlp_layers=[256, 128, 64], item_features=features),
                                1 << 25),
        "mlp 128-128-64": (MLP(n_users, n_items, layers=[128, 128, 64]), old_pairs * 128),
        "neumf 128-128-64": (NeuMF(n_users, n_items, mlp_layers=[128, 128, 64]), old_pairs * 128),
        "convncf 16x16, 32 channels": (ConvNCF(n_users, n_items, embedding_dim=16, channels=32), 1 << 25),
    }


def set_inplace(model: nn.Module, inplace: bool) -> None:
    for layer in model.modules():
        if isinstance(layer, nn.ReLU):
            layer.inplace = inplace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=17632)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["deepfm", "widedeep", "mlp", "neumf", "convncf"],
                        help="which of them (the first word of a name)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    users = torch.arange(args.users)
    print(f"torch threads {torch.get_num_threads()}, {args.users} users x {args.items} items")
    print("| model | max_activations | in-place ReLU | s per score_all | speed-up over the old setting |")
    print("|---|---:|---|---:|---:|")
    for name, (model, old) in models(max(args.users, 2), args.items).items():
        if name.split()[0] not in args.models:
            continue
        settings = [(old, False)] + [(chunk, True) for chunk in CHUNKS]
        model.eval()
        best = {setting: float("inf") for setting in settings}
        with torch.no_grad():
            reference = model.score_all(users)
            for _ in range(args.repeats):
                for chunk, inplace in settings:
                    model.max_activations = chunk
                    set_inplace(model, inplace)
                    started = time.perf_counter()
                    scores = model.score_all(users)
                    best[chunk, inplace] = min(best[chunk, inplace], time.perf_counter() - started)
                    torch.testing.assert_close(scores, reference, rtol=1e-4, atol=1e-5)
        for (chunk, inplace), seconds in best.items():
            label = f"1 << {chunk.bit_length() - 1}" + (" (old)" if (chunk, inplace) == settings[0] else "")
            print(f"| {name} | {label} | {'yes' if inplace else 'no'} | {seconds:.2f} | "
                  f"{best[settings[0]] / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
