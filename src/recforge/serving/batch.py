"""``recforge-recommend``: top-K for every user (or a given list) into one Parquet file.

    recforge-recommend --model models:/recforge@champion --output recs.parquet --k 20
    recforge-recommend --bundle logs/runs/<time>/model --users 1,2,3 --output recs.parquet

Users are scored in chunks (``Bundle.recommend``: one ``score_all`` per chunk, seen items masked, exact
top-K with ties to the lower item index, the same ranking as the service), each chunk is one Parquet row
group, and the file appears only when complete (written to a temporary file, then renamed). Columns:
user, item, rank (1-based), score, fallback (unknown users get the most popular items).

``--explain`` also writes why each item was recommended (:mod:`recforge.explain`, the method that fits the model)
beside the lists, ``<output>.explanations.parquet`` (``recs.parquet`` -> ``recs.explanations.parquet``): one row
per reason with user, item, rank, method, reason_rank, reason (a history item's raw id, or a feature's name for
feature methods), weight and, for sequential methods, position (1 = the user's latest item). An unknown user's
fallback items get one row each with method ``popularity_fallback`` and no reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
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


def explanations_path(output: str | os.PathLike) -> Path:
    """Where ``--explain`` writes: ``recs.parquet`` -> ``recs.explanations.parquet``."""
    output = Path(output)
    return output.with_name(f"{output.stem if output.suffix == '.parquet' else output.name}.explanations.parquet")


EXPLANATION_COLUMNS = ["user", "item", "rank", "method", "reason_rank", "reason", "weight", "position"]


def explanation_frame(bundle, explainer, frame: pd.DataFrame, n_reasons: int) -> pd.DataFrame:
    """One row per reason of each recommended item in ``frame`` (``Bundle.recommend``'s columns)."""
    import torch

    from recforge.explain import records

    rows = []
    item_ids = bundle.item_ids.tolist()
    for user, group in frame.groupby("user", sort=False):
        if group["fallback"].iloc[0]:
            rows += [(user, item, rank, "popularity_fallback", None, None, None, None)
                     for item, rank in zip(group["item"], group["rank"])]
            continue
        columns = torch.as_tensor(bundle.item_index(group["item"].to_numpy()))
        answer = records(explainer.explain(int(bundle.user_index(np.asarray([user]))[0]), columns, n_reasons),
                         item_ids)
        for entry, rank in zip(answer["items"], group["rank"]):
            rows += [(user, entry["item"], rank, answer["method"], n, reason.get("item", reason.get("feature")),
                      reason["weight"], reason.get("position")) for n, reason in enumerate(entry["reasons"], start=1)]
    out = pd.DataFrame(rows, columns=EXPLANATION_COLUMNS)
    return out.astype({"reason_rank": "Int64", "weight": "float64", "position": "Int64"})


def recommend_to_parquet(bundle, users: np.ndarray, output: str | os.PathLike, k: int = 10, exclude_seen: bool = True,
                         chunk_size: int = 1024, progress: bool = True, explain: int = 0) -> int:
    """Write ``bundle``'s top-``k`` for ``users`` to ``output`` atomically; returns the number of rows. With
    ``explain`` (reasons per item), also each item's reasons to :func:`explanations_path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recforge.utils.io import atomic_path

    explainer = None
    if explain:
        from recforge.explain import FEATURE, Histories, explainer_for

        explainer = explainer_for(bundle.model, Histories.from_csr(bundle.seen), len(bundle.user_ids))
    rows = 0
    starts = range(0, len(users), chunk_size)
    explained = atomic_path(explanations_path(output)) if explainer is not None else nullcontext()
    with atomic_path(output) as tmp, explained as tmp_explained:
        writers: dict[Path, pq.ParquetWriter] = {}

        def write(path: Path, frame: pd.DataFrame) -> None:
            schema = writers[path].schema if path in writers else None
            if schema is None and path != tmp:  # explanations: fix the types no chunk may infer (all-null columns)
                ids = writers[tmp].schema  # the lists' own, written first
                reason = pa.string() if explainer.reason == FEATURE else ids.field("item").type
                schema = pa.schema([ids.field("user"), ids.field("item"), ("rank", pa.int64()), ("method", pa.string()),
                                    ("reason_rank", pa.int64()), ("reason", reason), ("weight", pa.float64()),
                                    ("position", pa.int64())])
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            if path not in writers:
                writers[path] = pq.ParquetWriter(path, table.schema)
            writers[path].write_table(table)

        try:
            for start in tqdm(starts, desc="recommend", unit="chunk", disable=not progress, file=sys.stderr):
                frame = bundle.recommend(users[start:start + chunk_size], k=k, exclude_seen=exclude_seen)
                write(tmp, frame)
                if explainer is not None:
                    write(tmp_explained, explanation_frame(bundle, explainer, frame, explain))
                rows += len(frame)
            if tmp not in writers:  # no users: still write a valid empty file
                write(tmp, bundle.recommend(users[:0], k=k))
            if explainer is not None and tmp_explained not in writers:
                write(tmp_explained, explanation_frame(bundle, explainer, bundle.recommend(users[:0], k=k), explain))
        finally:
            for writer in writers.values():
                writer.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recforge-recommend", description="Write top-K recommendations to Parquet.")
    add_model_source_args(parser)
    parser.add_argument("--output", "-o", required=True, help="Parquet file to write")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", help="file of user ids or a comma-separated list (default: every training user)")
    parser.add_argument("--include-seen", action="store_true", help="do not mask items seen in training")
    parser.add_argument("--explain", action="store_true",
                        help="also write each item's reasons to <output>.explanations.parquet (slower)")
    parser.add_argument("--n-reasons", type=int, default=5, help="with --explain: reasons per item (default 5)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="users scored per chunk (default 1024)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from recforge.serving.registry import load, source_uri

        uri = source_uri(args.model, args.run_id, args.bundle, args.ckpt)
        if args.k < 1:
            raise RecForgeError(f"--k {args.k} must be >= 1")
        if args.explain and not 1 <= args.n_reasons <= 100:
            raise RecForgeError(f"--n-reasons {args.n_reasons} must be in 1..100")
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
                                    progress=not args.no_progress, explain=args.n_reasons if args.explain else 0)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {rows} rows ({len(users)} users, k={args.k}) from {ref.model_id} to {args.output}"
          + (f" and their reasons to {explanations_path(args.output)}" if args.explain else ""))


if __name__ == "__main__":
    main()
