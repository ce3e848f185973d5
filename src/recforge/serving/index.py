"""``python -m recforge.serving.index --bundle <run>/model --kind hnsw``: build the ANN index of a bundle's
dot-product model (:mod:`recforge.retrieval.ann`) into the bundle, where ``recforge-serve`` finds it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from recforge.errors import RecForgeError
from recforge.retrieval.ann import INDEX_FILE, KINDS, METRICS, AnnIndex, retrieval_items


def build_for_bundle(directory: str | Path, index: AnnIndex) -> AnnIndex:
    """Build ``index`` from the model of the bundle in ``directory`` and save it there."""
    from recforge.tracking.bundle import Bundle

    bundle = Bundle.load(directory)
    with torch.no_grad():
        index.build(retrieval_items(bundle.model))
    index.save(directory)
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.index",
                                     description="Build the ANN index of a bundle's dot-product model into the bundle.")
    parser.add_argument("--bundle", required=True, help="a model bundle folder (<run>/model)")
    defaults = AnnIndex().arguments()
    parser.add_argument("--kind", choices=KINDS, default=defaults["kind"])
    parser.add_argument("--metric", choices=METRICS, default=defaults["metric"])
    for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search", "seed", "pq_m", "refine"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=defaults[name], dest=name)
    parser.add_argument("--ip-to-l2", action="store_true", help="index after the inner-product-to-L2 reduction")
    args = vars(parser.parse_args(argv))
    directory = args.pop("bundle")
    try:
        index = build_for_bundle(directory, AnnIndex(**args))
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{Path(directory) / INDEX_FILE}: {index.kind} index of {index.n_items} items x {index.dim} dimensions, "
          f"{index.memory_bytes() / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
