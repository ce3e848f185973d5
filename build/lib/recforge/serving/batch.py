"""``recforge-recommend``: top-K for every user (or a given list) into one Parquet file.

    recforge-recommend --model models:/recforge@champion --output recs.parquet --k 20
    recforge-recommend --bundle logs/runs/<time>/model --users 1,2,3 --output recs.parquet

Users are scored in chunks (``Bundle.recommend``: one ``score_all`` per chunk, seen items masked, exact
top-K with ties to the lower item index, the same ranking as the service), each chunk is one Parquet row
group, and the file appears only when complete (written to a temporary file, then renamed). Columns:
user, item, rank (1-based), score, fallback (unknown users get the most popular items).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError
from recforge.serving.registry import add_model_source_args


def read_users(spec: str) -> np.ndarray:
    """``--users``: a file (``.parquet``/``.csv`` with a ``user`` column, or text with one id per line) or a
    comma-separated list. Ids that look like integers become integers."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".csv", ".tsv"):
            frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        else:
            frame = pd.DataFrame({"user": [line.strip() for line in path.read_text().splitlines() if line.strip()]})
        if "user" not in frame:
            raise RecForgeError(f"--users {spec}: no 'user' column (columns: {', '.join(map(str, frame.columns))})")
        values = frame["user"]
    elif os.sep in spec or spec.endswith((".parquet", ".csv", ".tsv", ".txt")):
        raise RecForgeError(f"--users {spec}: no such file; give a file of user ids or a comma-separated list")
    else:
        values = pd.Series([u.strip() for u in spec.split(",") if u.strip()])
    if not len(values):
        raise RecForgeError(f"--users {spec}: no user ids")
    return values.to_numpy()


def match_id_type(users: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Users read as text become integers when the model's ids are integers and every value is one (so the
    output's ``user`` column has the model's type); otherwise all become strings."""
    if users.dtype.kind in "iu" and ids.dtype.kind in "iu":
        return users
    if ids.dtype.kind in "iu":
        numeric = pd.to_numeric(pd.Series(users, dtype=object), errors="coerce")
        if numeric.notna().all() and (numeric == numeric.round()).all():
            return numeric.astype(np.int64).to_numpy()
    return np.asarray([str(u) for u in users], dtype=object)


def recommend_to_parquet(bundle, users: np.ndarray, output: str | os.PathLike, k: int = 10, exclude_seen: bool = True,
                         chunk_size: int = 1024, progress: bool = True) -> int:
    """Write ``bundle``'s top-``k`` for ``users`` to ``output`` atomically; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recforge.utils.io import atomic_path

    rows = 0
    starts = range(0, len(users), chunk_size)
    with atomic_path(output) as tmp:
        writer = None
        try:
            for start in tqdm(starts, desc="recommend", unit="chunk", disable=not progress, file=sys.stderr):
                frame = bundle.recommend(users[start:start + chunk_size], k=k, exclude_seen=exclude_seen)
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += len(frame)
            if writer is None:  # no users: still write a valid empty file
                pq.write_table(pa.Table.from_pandas(bundle.recommend(users[:0], k=k), preserve_index=False), tmp)
        finally:
            if writer is not None:
                writer.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recforge-recommend", description="Write top-K recommendations to Parquet.")
    add_model_source_args(parser)
    parser.add_argument("--output", "-o", required=True, help="Parquet file to write")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", help="file of user ids or a comma-separated list (default: every training user)")
    parser.add_argument("--include-seen", action="store_true", help="do not mask items seen in training")
    parser.add_argument("--chunk-size", type=int, default=1024, help="users scored per chunk (default 1024)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from recforge.serving.registry import load, source_uri

        uri = source_uri(args.model, args.run_id, args.bundle, args.ckpt)
        if args.k < 1:
            raise RecForgeError(f"--k {args.k} must be >= 1")
        if args.chunk_size < 1:
            raise RecForgeError(f"--chunk-size {args.chunk_size} must be >= 1")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        bundle, ref = load(uri, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        if args.k > len(bundle.item_ids):
            raise RecForgeError(f"--k {args.k} exceeds the catalogue ({len(bundle.item_ids)} items)")
        users = match_id_type(read_users(args.users), bundle.user_ids) if args.users else bundle.user_ids
        rows = recommend_to_parquet(bundle, users, args.output, args.k, not args.include_seen, args.chunk_size,
                                    progress=not args.no_progress)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {rows} rows ({len(users)} users, k={args.k}) from {ref.model_id} to {args.output}")


if __name__ == "__main__":
    main()
