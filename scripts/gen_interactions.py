"""Write a synthetic interactions file (CSV, TSV or Parquet) of any size in bounded memory.

    python scripts/gen_interactions.py --rows 20000000 --out /tmp/inter20m.csv

Users and items follow Zipf-like popularity, ratings are 1-5, timestamps span a year; rows are generated
and written in chunks, so memory stays flat whatever ``--rows`` is. Columns: user,item,rating,timestamp.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def chunks(rows: int, users: int, items: int, seed: int, chunk: int):
    rng = np.random.default_rng(seed)
    user_weights = 1.0 / np.arange(1, users + 1) ** 0.6
    item_weights = 1.0 / np.arange(1, items + 1) ** 0.9
    user_cdf, item_cdf = np.cumsum(user_weights / user_weights.sum()), np.cumsum(item_weights / item_weights.sum())
    user_perm, item_perm = rng.permutation(users), rng.permutation(items)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        u = user_perm[np.minimum(np.searchsorted(user_cdf, rng.random(n)), users - 1)]
        i = item_perm[np.minimum(np.searchsorted(item_cdf, rng.random(n)), items - 1)]
        yield pa.table({
            "user": pa.array(u.astype(np.int64)),
            "item": pa.array(i.astype(np.int64)),
            "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
            "timestamp": pa.array(rng.integers(1_500_000_000, 1_531_536_000, n).astype(np.int64)),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: rows // 100")
    parser.add_argument("--items", type=int, default=None, help="default: rows // 200")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("csv", "tsv", "parquet"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    args = parser.parse_args()
    users = args.users or max(args.rows // 100, 10)
    items = args.items or max(args.rows // 200, 10)
    fmt = args.format or {".parquet": "parquet", ".tsv": "tsv"}.get(args.out.suffix, "csv")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.partial")
    started = time.perf_counter()
    writer = None
    try:
        for table in chunks(args.rows, users, items, args.seed, args.chunk):
            if writer is None:
                if fmt == "parquet":
                    import pyarrow.parquet as pq

                    writer = pq.ParquetWriter(tmp, table.schema)
                else:
                    import pyarrow.csv as pc

                    writer = pc.CSVWriter(tmp, table.schema, write_options=pc.WriteOptions(
                        delimiter="\t" if fmt == "tsv" else ",", quoting_style="none"))
            writer.write_table(table)
        if writer is not None:
            writer.close()
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    size = args.out.stat().st_size
    print(f"wrote {args.rows:,} rows ({users:,} users, {items:,} items) to {args.out} "
          f"({size / 1e6:.0f} MB, {fmt}) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
