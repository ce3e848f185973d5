"""One autoencoder training step with the first layer's input rows multiplied dense and sparse.

Mult-VAE, Mult-DAE, RecVAE and CDAE read a user's whole interaction row; below ``SPARSE_ROW_DENSITY`` non-zeros
(``recforge.models.base.row_linear``) the first layer takes a sparse product. This times a step (forward, the
multinomial loss, backward, Adam) on random rows of ``--row-items`` items out of ``--items``, with the threshold at 0
(the dense product) and at its default, alternating ``--rounds`` times, and prints the fastest step of each and their
ratio. The defaults are Gowalla's size (40,981 items, 27 training items a user on average) and Mult-VAE's. The loss is
the multinomial one for every model (CDAE trains on sampled negatives instead): only the step's cost is measured.

    python scripts/bench_row_input.py                                    # Mult-VAE at Gowalla's size, 1 thread
    python scripts/bench_row_input.py --model recvae --items 17632 --row-items 49 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

import recforge.models.base as base
from recforge.losses import MultinomialLoss
from recforge.models.cdae import CDAE
from recforge.models.multvae import MultVAE
from recforge.models.recvae import RecVAE


def build(model: str, n_users: int, n_items: int) -> torch.nn.Module:
    if model == "multvae":
        return MultVAE(n_users, n_items, hidden_dims=(600,), latent_dim=64, dropout=0.7)
    if model == "recvae":
        return RecVAE(n_users, n_items, torch.stack([torch.arange(n_users), torch.zeros(n_users, dtype=torch.long)]))
    return CDAE(n_users, n_items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["multvae", "recvae", "cdae"], default="multvae")
    parser.add_argument("--items", type=int, default=40_981)
    parser.add_argument("--row-items", type=int, default=27)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build(args.model, args.batch, args.items).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = torch.zeros(args.batch, args.items)
    rows.scatter_(1, torch.randint(0, args.items, (args.batch, args.row_items)), 1.0)
    users = torch.arange(args.batch)
    loss_fn = MultinomialLoss(anneal_cap=0.2, total_anneal_steps=1)  # the KL weight at its cap from the second step

    def step() -> None:
        logits, kl = model.reconstruct(rows, users)
        loss = loss_fn(logits, rows, kl)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    default, best = base.SPARSE_ROW_DENSITY, {"dense": float("inf"), "sparse": float("inf")}
    for _ in range(args.rounds):
        for name, density in (("dense", 0.0), ("sparse", default)):
            base.SPARSE_ROW_DENSITY = density
            step()  # warm-up
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
    base.SPARSE_ROW_DENSITY = default
    print(f"{args.model}, {args.batch} rows of {args.row_items} / {args.items} items, {args.threads} thread(s): "
          f"dense {best['dense']:.3f} s, sparse {best['sparse']:.3f} s a step, {best['dense'] / best['sparse']:.2f}x")


if __name__ == "__main__":
    main()
