"""How SimpleX scores k sampled candidates per row, timed both ways: a gather of their (B, k, d) vectors against one
(B, d) x (d, n_items) product whose columns are then picked. Forward and backward of one training step, per
(n_items, k); ``SimpleX.forward`` and ``MatrixFactorization.forward`` take the product where
``recforge.utils.linalg.candidates_by_product`` says so (``k * 128 >= n_items``).

    python scripts/bench_candidates.py                      # Last.fm's, Gowalla's and ML-100K's catalogues
    python scripts/bench_candidates.py --shapes 17632:1000 --batch-size 512

Prints seconds a step for each way (the best of ``--repeats`` rounds of 3 steps, the two ways taking turns) and
their ratio. Name the CPU beside the numbers, and run it alone.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from recforge.models.simplex import SimpleX

SHAPES = ["17632:1000", "17632:256", "17632:64", "40981:1000", "40981:256", "1682:1000", "1682:16"]


def step(model: SimpleX, users: torch.Tensor, items: torch.Tensor, way: str) -> None:
    model.zero_grad()
    user = model.user_vectors(users)
    if way == "product":
        scores = torch.matmul(user, model.item_vectors().T).gather(1, items)
    else:
        scores = torch.bmm(F.normalize(model.item_embedding(items), dim=-1), user.unsqueeze(-1)).squeeze(-1)
    scores.relu().sum().backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="n_items:k pairs")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--users", type=int, default=1892)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    print("| n_items | k | n_items / k | product s/step | gather s/step | gather / product |")
    print("|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        n_items, k = map(int, shape.split(":"))
        history = torch.stack([torch.randint(0, args.users, (40 * args.users,)),
                               torch.randint(0, n_items, (40 * args.users,))])
        model = SimpleX(args.users, n_items, history)
        users = torch.randint(0, args.users, (args.batch_size,))
        items = torch.randint(0, n_items, (args.batch_size, k))
        best = {"product": float("inf"), "gather": float("inf")}
        for _ in range(args.repeats):
            for way in best:
                step(model, users, items, way)   # warm
                started = time.perf_counter()
                for _ in range(3):
                    step(model, users, items, way)
                best[way] = min(best[way], (time.perf_counter() - started) / 3)
        print(f"| {n_items:,} | {k:,} | {n_items / k:.0f} | {best['product']:.3f} | {best['gather']:.3f} | "
              f"{best['gather'] / best['product']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
