"""One training step of LightGCN and NGCF with shared negatives (``sampler.shared=true``), timed both ways: the
positives and the shared set scored by two calls (``forward``, then ``score_items``), each propagating the graph
(what every step did until 2026-12-07), against one propagation for both (within ``GraphRecommender.one_pass``, as
the training module scopes a step). Forward and backward of the BPR-style loss over the scores. With ``--hard``: a
step of the training module with hard negatives (``sampler=hard``, a pool of 8 per negative), which scores the pool
and then the candidates: a propagation each, against one for both. With ``--ultragcn``: a step of the training
module with UltraGCN and its defaults' loss (BCE on 200 uniform negatives a row): its loss and its constraint term
score the negatives from the users' products with every item, computed twice (until 2026-12-08) against once.

    python scripts/bench_shared_step.py                     # Last.fm's size: 1,892 users, 17,632 items, 74k pairs
    python scripts/bench_shared_step.py --users 29858 --items 40981 --pairs 810128 --negatives 1000   # Gowalla's
    python scripts/bench_shared_step.py --hard --negatives 1
    python scripts/bench_shared_step.py --ultragcn      # 200 uniform negatives a row

The graph is random with the given counts (a propagation's cost is its non-zeros'). Prints seconds a step for each
way (the best of ``--repeats`` rounds of 3 steps, the two ways taking turns) and their ratio. Name the CPU beside
the numbers, and run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from recforge.losses import BCELoss, BPRLoss
from recforge.models.lightgcn import LightGCN
from recforge.models.ngcf import NGCF
from recforge.models.ultragcn import UltraGCN
from recforge.samplers import HardNegativeSampler, NegativeSampler
from recforge.training.module import RecommenderModule


def step(module, users: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor | None, way: str) -> None:
    """A step, the model's ``one_pass`` on (``once``) or off (``twice``): the shared negatives' scores and their
    loss, or (``shared`` None) the training module's step with its hard negatives."""
    model = module.model
    model.zero_grad()
    if way == "twice":
        model.one_pass = contextlib.nullcontext
    try:
        if shared is None:
            loss = module.compute_loss((users, positives, torch.ones(len(users))))
        else:
            with model.one_pass():
                scores = model.score_with_shared(users, positives, shared)
            loss = F.softplus(scores[:, 1:] - scores[:, :1]).mean()
        loss.backward()
    finally:
        model.__dict__.pop("one_pass", None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1892)
    parser.add_argument("--items", type=int, default=17632)
    parser.add_argument("--pairs", type=int, default=74268)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=None, help="64 (--ultragcn: 200, its default)")
    parser.add_argument("--repeats", type=int, default=3)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--hard", action="store_true", help="a module step with hard negatives instead")
    mode.add_argument("--ultragcn", action="store_true", help="a module step of UltraGCN with uniform negatives")
    args = parser.parse_args(argv)
    if args.negatives is None:
        args.negatives = 200 if args.ultragcn else 64
    torch.manual_seed(0)
    graph = torch.stack([torch.randint(0, args.users, (args.pairs,)), torch.randint(0, args.items, (args.pairs,))])
    if args.ultragcn:   # a module step with UltraGCN's loss and uniform negatives: two products against one
        models = {"UltraGCN 64-d": UltraGCN(args.users, args.items, graph)}
        loss, sampler, kind, what = BCELoss, NegativeSampler, "uniform", "products with every item"
    else:
        models = {"LightGCN 64-d, 3 layers": LightGCN(args.users, args.items, graph),
                  "NGCF 64-d, 64-64-64": NGCF(args.users, args.items, graph)}
        loss, sampler, what = BPRLoss, HardNegativeSampler, "propagations"
        kind = "hard (pool of 8)" if args.hard else "shared"
    users = torch.randint(0, args.users, (args.batch_size,))
    positives = torch.randint(0, args.items, (args.batch_size,))
    shared = torch.randint(0, args.items, (args.negatives,))
    print(f"{args.users} users, {args.items} items, {args.pairs} pairs; batch {args.batch_size}, "
          f"{args.negatives} {kind} negatives; "
          f"{torch.get_num_threads()} thread(s)")
    keys = torch.unique(graph[0] * args.items + graph[1])
    for name, model in models.items():
        model.train()
        module = RecommenderModule(model, loss(args.negatives), sampler=sampler(args.items, keys))
        best = {"twice": float("inf"), "once": float("inf")}
        for _ in range(args.repeats):
            for way in best:
                started = time.perf_counter()
                for _ in range(3):
                    step(module, users, positives, None if args.hard or args.ultragcn else shared, way)
                best[way] = min(best[way], (time.perf_counter() - started) / 3)
        print(f"{name}: two {what} {best['twice']:.4f} s a step, one {best['once']:.4f} s, "
              f"{best['twice'] / best['once']:.2f}x")


if __name__ == "__main__":
    main()
