"""``recforge-recommend``: top-K for every user (or a given list), into a folder of Parquet parts (resumable) or
one Parquet file.

    recforge-recommend --model models:/recforge@champion --output recs/ --k 20          # recs/part-000000.parquet ...
    recforge-recommend --bundle logs/runs/<time>/model --users 1,2,3 --output recs.parquet   # one file

Users are scored in chunks of ``--chunk-size``. With a folder (any ``--output`` not ending in ``.parquet``), each
chunk is its own part file ``part-000000.parquet``, ``part-000001.parquet``, ... written atomically (temporary
file, then rename), and ``_manifest.json`` (also atomic) records the model (id, run, a SHA-256 of its weights, seen
items and ids), ``k``, the chunk size, the user list's SHA-256 and the number of parts. Running the same command
again (after a kill, say) checks the manifest and writes only the missing parts; a manifest that does not match is
a one-line error (use a new ``--output`` or ``--overwrite``). ``pandas.read_parquet("recs/")`` reads all parts in
order (the manifest's leading underscore keeps it out). With a ``.parquet`` file, chunks are row groups of one
file that appears when complete (not resumable).

Ranking is :meth:`Bundle.recommend`'s, the service's: exact (one ``score_all`` per block of users, seen items
masked, top-K with ties to the lower item index), or through the bundle's ANN index when it has one and the
catalogue has at least ``--ann-min-items`` items (the same rule and flag as ``recforge-serve``). Memory per chunk:
the chunk's lists (``chunk-size x k`` rows) plus, exact, a score block of at most ``2**22`` floats (16 MiB) or,
through the index, ``chunk-size x search size`` ids and scores (search size: ``k`` plus the user's seen items,
rounded up to a power of two). Nothing accumulates across chunks. Columns: user, item, rank (1-based), score,
fallback (unknown users get the most popular items).

A model that reads the interaction's context (``data.context_columns``: hour, weekday) scores every user as if they
asked at one time: ``--time`` (Unix seconds, or ISO 8601 such as ``2026-12-03T18:00:00+01:00``; default: when the
job starts). A folder's manifest records it, and a resumed run without ``--time`` continues at the recorded time, so
the parts of one job never mix times.

``--explain`` also writes why each item was recommended (:mod:`recforge.explain`, the method that fits the model)
beside the lists, ``<output>.explanations.parquet`` (``recs.parquet`` -> ``recs.explanations.parquet``; a folder
``recs/`` -> ``recs.explanations/`` with the same parts): one row per reason with user, item, rank, method,
reason_rank, reason (a history item's raw id, or a feature's name for feature methods), weight and, for sequential
methods, position (1 = the user's latest item). An unknown user's fallback items get one row each with method
``popularity_fallback`` and no reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError
from recforge.serving.registry import add_model_source_args
from recforge.tracking.bundle import ANN_MIN_ITEMS

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "recforge-recommend/1"
SCORE_BLOCK = 1 << 22  # exact ranking scores at most this many (user, item) pairs at once
# what a resumed run must share with the run that wrote the parts (the rest of the manifest is information)
MANIFEST_CHECKED = ("format", "model_sha256", "retrieval", "k", "exclude_seen", "explain", "chunk_size", "n_users",
                    "users_sha256", "n_parts", "time")


def parse_time(text: str) -> int:
    """``--time``: Unix seconds, or an ISO 8601 time (with its UTC offset; without one it is UTC)."""
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecForgeError(f"--time {text!r} is neither Unix seconds nor an ISO 8601 time (e.g. "
                            f"2026-12-03T18:00:00+01:00)") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())


def read_users(spec: str) -> np.ndarray:
    """``--users``: a file (``.parquet``/``.csv`` with a ``user`` column, or text with one id per line) or a
    comma-separated list. Ids that look like integers become integers."""
    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # a long comma-separated list is no file name ("File name too long")
        is_file = False
    if is_file:
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


def is_folder_output(output: str | os.PathLike) -> bool:
    """``--output`` names a folder of parts unless it ends in ``.parquet`` (and is not an existing folder)."""
    return Path(output).is_dir() or not str(output).endswith(".parquet")


def part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


def explanations_path(output: str | os.PathLike) -> Path:
    """Where ``--explain`` writes: ``recs.parquet`` -> ``recs.explanations.parquet``; a folder ``recs`` ->
    ``recs.explanations`` (the same part files)."""
    output = Path(output) if Path(output).name else Path(output).absolute()  # "." has no name to extend
    if is_folder_output(output):
        return output.with_name(f"{output.name}.explanations")
    return output.with_name(f"{output.stem}.explanations.parquet")


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


def explanation_schema(lists, explainer):
    """The explanations' Arrow schema: types no chunk may infer (all-null columns), ids as the lists have them."""
    import pyarrow as pa

    from recforge.explain import FEATURE

    reason = pa.string() if explainer.reason == FEATURE else lists.field("item").type
    return pa.schema([lists.field("user"), lists.field("item"), ("rank", pa.int64()), ("method", pa.string()),
                      ("reason_rank", pa.int64()), ("reason", reason), ("weight", pa.float64()),
                      ("position", pa.int64())])


def rank_chunk(bundle, users: np.ndarray, k: int, exclude_seen: bool = True, ann=None,
               at: float | None = None) -> pd.DataFrame:
    """:meth:`Bundle.recommend` of ``users`` (asking at ``at``): through ``ann`` when given, else exactly, scoring
    blocks of at most :data:`SCORE_BLOCK` (user, item) pairs (a few users at a time for a catalogue of millions)."""
    if ann is not None:
        return bundle.recommend(users, k=k, exclude_seen=exclude_seen, ann=ann, at=at)
    step = max(1, SCORE_BLOCK // max(len(bundle.item_ids), 1))
    if len(users) <= step:
        return bundle.recommend(users, k=k, exclude_seen=exclude_seen, at=at)
    return pd.concat([bundle.recommend(users[start:start + step], k=k, exclude_seen=exclude_seen, at=at)
                      for start in range(0, len(users), step)], ignore_index=True)


def recommend_to_parquet(bundle, users: np.ndarray, output: str | os.PathLike, k: int = 10, exclude_seen: bool = True,
                         chunk_size: int = 1024, progress: bool = True, explain: int = 0, ann=None,
                         at: float | None = None) -> int:
    """Write ``bundle``'s top-``k`` for ``users`` to the file ``output`` atomically; returns the number of rows.
    With ``explain`` (reasons per item), also each item's reasons to :func:`explanations_path`. ``ann``: rank
    through this index (:func:`rank_chunk`). A model that reads context: every user asks at ``at`` (Unix seconds;
    default: now, taken once for the whole job)."""
    if bundle.reads_context and at is None:
        at = int(time.time())
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recforge.utils.io import atomic_path

    explainer = None
    if explain:
        from recforge.explain import bundle_explainer

        explainer = bundle_explainer(bundle, at)   # at the job's one time, as it ranked
    rows = 0
    starts = range(0, len(users), chunk_size)
    explained = atomic_path(explanations_path(output)) if explainer is not None else nullcontext()
    with atomic_path(output) as tmp, explained as tmp_explained:
        writers: dict[Path, pq.ParquetWriter] = {}

        def write(path: Path, frame: pd.DataFrame) -> None:
            schema = writers[path].schema if path in writers else None
            if schema is None and path != tmp:  # explanations: the lists' id types (written first)
                schema = explanation_schema(writers[tmp].schema, explainer)
            table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            if path not in writers:
                writers[path] = pq.ParquetWriter(path, table.schema)
            writers[path].write_table(table)

        try:
            for start in tqdm(starts, desc="recommend", unit="chunk", disable=not progress, file=sys.stderr):
                frame = rank_chunk(bundle, users[start:start + chunk_size], k, exclude_seen, ann, at)
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


def users_sha256(users: np.ndarray) -> str:
    """A digest of the user list, in order (integers by value, anything else by its text)."""
    digest = hashlib.sha256(b"int\0" if users.dtype.kind in "iu" else b"str\0")
    if users.dtype.kind in "iu":
        digest.update(np.ascontiguousarray(users, dtype=np.int64).data)
    else:
        digest.update("\x1f".join(map(str, users)).encode())
    return digest.hexdigest()


def bundle_sha256(bundle) -> str:
    """A digest of everything a bundle's lists depend on: the model's parameters and buffers (also the histories
    sequential models read), the seen items and the id maps."""
    import torch

    digest = hashlib.sha256()
    tensors = {**dict(bundle.model.named_buffers()), **bundle.model.state_dict()}
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    seen = bundle.seen.tocsr()
    for array in (seen.indptr, seen.indices):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).data)
    digest.update(users_sha256(bundle.user_ids).encode() + users_sha256(bundle.item_ids).encode())
    return digest.hexdigest()


def _remove_own_files(folder: Path) -> None:
    """Delete what this job writes in ``folder`` (parts, manifest, temporary files of a killed run), nothing else."""
    if folder.is_dir():
        for path in folder.iterdir():
            name = path.name
            if path.is_file() and (name == MANIFEST or (name.startswith("part-") and name.endswith(".parquet"))
                                   or (name.startswith((".part-", f".{MANIFEST}.")) and name.endswith(".tmp"))):
                path.unlink()


def _read_manifest(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise RecForgeError(f"{path}: unreadable manifest ({exc}); use a new --output or --overwrite") from None
    return found


def _check_manifest(path: Path, want: dict) -> None:
    found = _read_manifest(path)
    differ = [key for key in MANIFEST_CHECKED if found.get(key) != want[key]]
    if differ:
        shown = "; ".join(f"{key} {str(found.get(key))[:24]} there, {str(want[key])[:24]} now" for key in differ[:3])
        raise RecForgeError(f"{path}: {path.parent} holds recommendations of another run ({shown}); use a new --output "
                            f"to keep them, or --overwrite to replace them")


def recommend_to_parts(bundle, users: np.ndarray, output: str | os.PathLike, k: int = 10, exclude_seen: bool = True,
                       chunk_size: int = 1024, progress: bool = True, explain: int = 0, ann=None,
                       model: dict | None = None, overwrite: bool = False,
                       at: float | None = None) -> tuple[int, int, int, int | None]:
    """Write ``bundle``'s top-``k`` for ``users`` into the folder ``output``, one part file per chunk of
    ``chunk_size`` users, resuming where an earlier run of the same job stopped (see the module docstring).
    ``model``: what the manifest records of the source (model id, run id, uri). A model that reads context: every
    user asks at ``at`` (Unix seconds; default: the time a resumed job's manifest records, else now). Returns
    ``(rows, parts written, parts already there, the time scored at or None)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recforge.utils.io import atomic_path, atomic_write_text

    output = Path(output)
    explained = explanations_path(output) if explain else None
    for folder in (output, explained):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise RecForgeError(f"--output {output}: {folder} is a file; give a new folder name, or a name ending in "
                                f".parquet for one file")
    n_parts = -(-len(users) // chunk_size)
    if overwrite:
        _remove_own_files(output)
        if explained is not None:
            _remove_own_files(explained)
    manifest_path = output / MANIFEST
    if bundle.reads_context and at is None:  # a resumed job continues at its recorded time
        recorded = _read_manifest(manifest_path).get("time") if manifest_path.exists() else None
        at = recorded if isinstance(recorded, int) else int(time.time())
    at = int(at) if bundle.reads_context else None
    manifest = {"format": MANIFEST_FORMAT, **(model or {}), "model_sha256": bundle_sha256(bundle),
                "retrieval": "exact" if ann is None else {"ann": ann.arguments()}, "k": k, "exclude_seen": exclude_seen,
                "explain": explain, "chunk_size": chunk_size, "n_users": len(users),
                "users_sha256": users_sha256(users), "n_parts": n_parts, "time": at, "complete": False}
    if manifest_path.exists():
        _check_manifest(manifest_path, manifest)
    elif output.is_dir() and any(not p.name.startswith(".") for p in output.iterdir()):
        raise RecForgeError(f"--output {output}: the folder has files but no {MANIFEST}, so it is not a "
                            f"recforge-recommend output; give a new or empty folder")
    output.mkdir(parents=True, exist_ok=True)
    for folder in (output, explained):  # temporary files of a killed run
        if folder is not None and folder.is_dir():
            for stale in [*folder.glob(".part-*.tmp"), *folder.glob(f".{MANIFEST}.*.tmp")]:
                stale.unlink()
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    lists = pa.schema([("user", pa.int64() if users.dtype.kind in "iu" else pa.string()),
                       ("item", pa.int64() if bundle.item_ids.dtype.kind in "iu" else pa.string()),
                       ("rank", pa.int64()), ("score", pa.float32()), ("fallback", pa.bool_())])
    explainer = reasons = None
    if explain:
        from recforge.explain import bundle_explainer

        explainer = bundle_explainer(bundle, at)   # at the job's one time, as it ranked
        reasons = explanation_schema(lists, explainer)
        explained.mkdir(parents=True, exist_ok=True)

    def write(path: Path, frame: pd.DataFrame, schema) -> None:
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), tmp)

    rows = written = 0
    for number in tqdm(range(n_parts), desc="recommend", unit="part", disable=not progress, file=sys.stderr):
        path = output / part_name(number)
        if path.exists():  # renamed into place only when complete
            rows += pq.ParquetFile(path).metadata.num_rows
            continue
        frame = rank_chunk(bundle, users[number * chunk_size:(number + 1) * chunk_size], k, exclude_seen, ann, at)
        if explainer is not None:  # before the part: a part on disk means both are complete
            write(explained / part_name(number), explanation_frame(bundle, explainer, frame, explain), reasons)
        write(path, frame, lists)
        rows += len(frame)
        written += 1
    atomic_write_text(manifest_path, json.dumps({**manifest, "complete": True, "rows": rows}, indent=2))
    return rows, written, n_parts - written, at


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recforge-recommend", description="Write top-K recommendations to Parquet.")
    add_model_source_args(parser)
    parser.add_argument("--output", "-o", required=True,
                        help="a folder of Parquet parts, resumable (recs/), or one Parquet file (a name ending in "
                             ".parquet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="folder output: replace the parts of another run there instead of refusing")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", help="file of user ids or a comma-separated list (default: every training user)")
    parser.add_argument("--include-seen", action="store_true", help="do not mask items seen in training")
    parser.add_argument("--explain", action="store_true",
                        help="also write each item's reasons to <output>.explanations.parquet (slower)")
    parser.add_argument("--n-reasons", type=int, default=5, help="with --explain: reasons per item (default 5)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="users scored per chunk (default 1024)")
    parser.add_argument("--ann-min-items", type=int, default=ANN_MIN_ITEMS,
                        help="rank through the bundle's ANN index (when it has one) if the catalogue has at least this "
                             f"many items, as recforge-serve does (default {ANN_MIN_ITEMS}; 0: always)")
    parser.add_argument("--time", help="a model that reads context (hour, weekday): score every user as if they "
                                       "asked at this time, Unix seconds or ISO 8601 (default: when the job starts; a "
                                       "resumed folder job: its recorded time)")
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
        at = parse_time(args.time) if args.time is not None else None
        bundle, ref = load(uri, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        if at is not None and not bundle.reads_context:
            raise RecForgeError(f"--time: {ref.model_id} does not read context (data.context_columns), so its "
                                f"recommendations do not depend on the time; leave --time out")
        if args.k > len(bundle.item_ids):
            raise RecForgeError(f"--k {args.k} exceeds the catalogue ({len(bundle.item_ids)} items)")
        users = match_id_type(read_users(args.users), bundle.user_ids) if args.users else bundle.user_ids
        ann = bundle.retrieval_index(args.ann_min_items)
        explain = args.n_reasons if args.explain else 0
        resumed = ""
        if is_folder_output(args.output):
            rows, written, kept, at = recommend_to_parts(
                bundle, users, args.output, args.k, not args.include_seen, args.chunk_size, not args.no_progress,
                explain, ann, {"model_id": ref.model_id, "run_id": ref.run_id, "uri": ref.uri}, args.overwrite, at)
            resumed = f", {kept} of {written + kept} parts already there" if kept else ""
        else:
            if bundle.reads_context and at is None:
                at = int(time.time())
            rows = recommend_to_parquet(bundle, users, args.output, args.k, not args.include_seen, args.chunk_size,
                                        progress=not args.no_progress, explain=explain, ann=ann, at=at)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    retrieval = "exact" if ann is None else f"ann:{ann.kind}"
    if at is not None:
        retrieval += f", at {datetime.fromtimestamp(at, timezone.utc).isoformat().replace('+00:00', 'Z')}"
    print(f"wrote {rows} rows ({len(users)} users, k={args.k}, {retrieval}{resumed}) from {ref.model_id} to "
          f"{args.output}" + (f" and their reasons to {explanations_path(args.output)}" if args.explain else ""))


if __name__ == "__main__":
    main()
