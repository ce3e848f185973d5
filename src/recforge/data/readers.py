"""Strict, fast readers for interaction files.

Every reader has a fast path (pyarrow's multi-threaded CSV/JSON/Parquet readers, or vectorised NumPy)
and, only when that fails, a slow diagnostic pass that finds the first bad line so the error can name the
file, the line, the column and the fix. A failure never leaves anything behind (readers write nothing).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from recforge.errors import RecForgeError

FORMATS = ("csv", "tsv", "parquet")
STANDARD = ("user", "item", "rating", "timestamp")
# an id written as a canonical integer: no sign, spaces, leading zeros or decimal point, at most 18 digits (fits int64)
CANONICAL_INTEGER = r"^(0|[1-9][0-9]{0,17})$"


def check_readable(path: Path) -> None:
    """Stop with a one-line error when ``path`` exists but cannot be opened (permissions, a folder)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise RecForgeError(f"{path}: cannot be read ({exc.strerror}); make it readable (e.g. chmod a+r) or point "
                            "data.path / paths.data_dir at a readable copy") from None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise RecForgeError(f"{path}: file not found; check the path (data.path / paths.data_dir)")
    if path.stat().st_size == 0:
        raise RecForgeError(f"{path}: file is empty; re-download it or point paths.data_dir at a complete copy")
    check_readable(path)


def integer_ids(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A text id column as int64 when every value is a canonical integer, else unchanged: ``05`` and ``5``, or
    ``1.0`` and ``1``, are different ids in a file, and reading them as numbers would merge them."""
    import pyarrow.compute as pc

    if pc.all(pc.match_substring_regex(column, CANONICAL_INTEGER)).as_py() is not True:
        return column
    return column.cast(pa.int64())


def _check_unique(names: Sequence[str], where: str, fix: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RecForgeError(f"{where}: column {name!r} appears more than once; {fix}")
        seen.add(name)


def _check_bom(path: Path, first: bytes, encoding: str) -> bytes:
    """``first`` (the file's first bytes) without a UTF-8 byte-order mark, which UTF-8 readers skip; a mark the
    reader would take for text stops with the fix."""
    utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    if first.startswith(codecs.BOM_UTF8):
        if not utf8:
            raise RecForgeError(f"{path}: starts with a UTF-8 byte-order mark (BOM), so it is UTF-8 text; set "
                                f"data.encoding=utf-8 (not {encoding})")
        return first[len(codecs.BOM_UTF8):]
    if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise RecForgeError(f"{path}: starts with a UTF-16 byte-order mark (BOM), so it is UTF-16 text; save it as "
                            "UTF-8 (e.g. iconv -f UTF-16 -t UTF-8) and read that copy")
    return first


def infer_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise RecForgeError(f"data.format={fmt!r} is not one of {FORMATS}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".tsv" in suffixes or ".tab" in suffixes:
        return "tsv"
    return "csv"


def _header_fields(path: Path, sep: str, encoding: str) -> list[str]:
    with open(path, "rb") as fh:
        first = _check_bom(path, fh.readline(), encoding)
    try:
        text = first.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise RecForgeError(f"{path}, line 1: not valid {encoding} text ({exc.reason} at byte {exc.start}); "
                            "set data.encoding to the file's encoding (e.g. latin-1)") from None
    if sep == ",":
        return [f.strip() for f in next(csv.reader([text]))]
    return [f.strip().strip('"') for f in text.split(sep)]


def _diagnose_delimited(path: Path, sep: str, header: bool, n_fields: int, numeric: Mapping[int, str],
                        encoding: str, original: str) -> RecForgeError:
    """Find the first bad line of a delimited file (the slow path, only after the fast reader failed)."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return RecForgeError(f"{path}, line {line}: not valid {encoding} text ({exc.reason} at byte {exc.start}); "
                             "set data.encoding to the file's encoding (e.g. latin-1)")
    text = data.decode(encoding).removeprefix("\ufeff")
    lines = text.splitlines()
    start = 1 if header else 0
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = next(csv.reader([line])) if sep == "," else line.split(sep)
        if len(fields) != n_fields:
            return RecForgeError(f"{path}, line {number}: malformed line, expected {n_fields} fields separated by "
                                 f"{sep!r}, got {len(fields)}: {line[:80]!r}; fix or remove the line")
        for index, name in numeric.items():
            value = fields[index].strip()
            if value == "":
                continue
            try:
                float(value)
            except ValueError:
                return RecForgeError(f"{path}, line {number}: column {name!r} is not a number: {value[:40]!r}; "
                                     "fix the value, or map the right column in data.columns")
    return RecForgeError(f"{path}: could not be parsed ({original}); check data.sep, data.header and data.encoding")


def read_table(
    path: str | Path,
    columns: Mapping[str, str | None],
    fmt: str | None = None,
    sep: str | None = None,
    header: bool = True,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    numeric: Sequence[str] = ("rating", "timestamp"),
    key_prefix: str = "data",
) -> pd.DataFrame:
    """Read ``columns`` (standard name -> the file's column name) of a CSV, TSV or Parquet file.

    Headerless delimited files name their fields with ``names``. ``numeric`` columns must parse as numbers.
    User and item ids of delimited files are text unless every value of the column is a canonical integer
    (:func:`integer_ids`); Parquet ids keep their type (whole floats become integers). The result has the
    standard names. Raises :class:`RecForgeError` naming the file, the line and the column.
    """
    path = Path(path)
    _check_file(path)
    fmt = infer_format(path, fmt)
    wanted = {std: src for std, src in columns.items() if src is not None}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            available = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise RecForgeError(f"{path}: not a readable Parquet file ({exc}); re-export or re-download it") from None
        _check_unique(available, str(path), "re-export the file with one column of each name")
        _require_columns(path, wanted, available, key_prefix)
        table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
        return _to_frame(path, table, wanted, numeric, key_prefix)

    sep = sep if sep is not None else ("\t" if fmt == "tsv" else ",")
    if header:
        available = _header_fields(path, sep, encoding)
        if names is not None:
            raise RecForgeError(f"{key_prefix}.names is only for files without a header; set {key_prefix}.header=false")
        _check_unique(available, f"{path}, line 1", "rename the header's duplicates so that every column has its "
                                                     "own name")
    else:
        if not names:
            raise RecForgeError(f"{path}: {key_prefix}.header=false needs {key_prefix}.names, the file's field names "
                                "in order (e.g. [user, item, rating, timestamp])")
        with open(path, "rb") as fh:
            _check_bom(path, fh.read(4), encoding)
        available = list(names)
        _check_unique(available, f"{key_prefix}.names", "give every field its own name")
    _require_columns(path, wanted, available, key_prefix)
    table = _read_delimited_arrow(path, sep, header, available, wanted, numeric, encoding)
    for std in ("user", "item"):
        if std in wanted:
            table = table.set_column(table.column_names.index(wanted[std]), wanted[std],
                                     integer_ids(table.column(wanted[std])))
    if table.num_rows == 0:
        raise RecForgeError(f"{path}: no data rows; the file has {'only a header' if header else 'no lines'}")
    try:
        return _to_frame(path, table, wanted, numeric, key_prefix)
    except pa.ArrowInvalid as exc:  # e.g. invalid UTF-8 inside a text id column
        numeric_idx = {list(available).index(wanted[c]): c for c in numeric if c in wanted}
        raise _diagnose_delimited(path, sep, header, len(available), numeric_idx, encoding, str(exc)) from None


def _require_columns(path: Path, wanted: Mapping[str, str], available: Sequence[str], key_prefix: str) -> None:
    for std, src in wanted.items():
        if src not in available:
            raise RecForgeError(f"{path}: no column {src!r} (for {std}); the file has columns {list(available)}; "
                                f"set {key_prefix}.columns.{std} to one of them")


def _read_delimited_arrow(path: Path, sep: str, header: bool, fields: Sequence[str], wanted: Mapping[str, str],
                          numeric: Sequence[str], encoding: str) -> pa.Table:
    import pyarrow.csv as pc

    buffer: bytes | None = None
    delimiter = sep
    if len(sep) != 1:  # pyarrow needs a one-character delimiter: swap e.g. '::' for the unit separator
        with open(path, "rb") as fh:
            buffer = fh.read().replace(sep.encode(encoding), b"\x1f")
        delimiter = "\x1f"
    types = {wanted[c]: pa.float64() for c in numeric if c in wanted}
    types.update({wanted[c]: pa.string() for c in ("user", "item") if c in wanted})  # ids as written: integer_ids
    read = pc.ReadOptions(column_names=list(fields), skip_rows=1 if header else 0, encoding=encoding,
                          block_size=1 << 26)
    parse = pc.ParseOptions(delimiter=delimiter, quote_char='"' if sep == "," else False)
    numeric_idx = {list(fields).index(wanted[c]): c for c in numeric if c in wanted}

    convert = pc.ConvertOptions(include_columns=list(dict.fromkeys(wanted.values())), column_types=types,
                                strings_can_be_null=True)
    stream = pa.BufferReader(buffer) if buffer is not None else str(path)
    try:
        return pc.read_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise _diagnose_delimited(path, sep, header, len(fields), numeric_idx, encoding, str(exc)) from None
    except UnicodeDecodeError as exc:  # raised by the transcoder for non-UTF-8 encodings
        raise RecForgeError(f"{path}: not valid {encoding} text ({exc.reason}); set data.encoding") from None


def _to_frame(path: Path, table: pa.Table, wanted: Mapping[str, str], numeric: Sequence[str],
              key_prefix: str) -> pd.DataFrame:
    out = {}
    for std, src in wanted.items():
        column = table.column(src)
        if column.null_count == len(column):
            raise RecForgeError(f"{path}: column {src!r} ({std}) is empty in every row; map the right column with "
                                f"{key_prefix}.columns.{std}=<name>")
        if std in numeric:
            if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                    or pa.types.is_null(column.type)):
                raise RecForgeError(f"{path}: column {src!r} ({std}) is not numeric ({column.type}); "
                                    f"map a numeric column with {key_prefix}.columns.{std}=<name>")
            values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            out[std] = values
        elif pa.types.is_nested(column.type):
            raise RecForgeError(f"{path}: column {src!r} ({std}) holds {column.type} values, not one id per row; "
                                f"map a column of plain ids with {key_prefix}.columns.{std}=<name>")
        else:
            if pa.types.is_integer(column.type):
                if column.null_count:
                    out[std] = pd.array(column.to_pandas(), dtype="Int64")
                else:
                    out[std] = column.to_numpy().astype(np.int64, copy=False)
            elif pa.types.is_floating(column.type):
                values = column.to_numpy(zero_copy_only=False)
                finite = values[~np.isnan(values)]
                if np.all(finite == np.round(finite)):
                    out[std] = pd.array(values, dtype="Float64").astype("Int64")
                else:
                    out[std] = values
            else:
                out[std] = column.cast(pa.string()).to_pandas()
    return pd.DataFrame(out)


def standardise(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the missing standard columns (rating 1.0, timestamp 0) and fix the dtypes."""
    n = len(frame)
    rating = frame["rating"] if "rating" in frame else np.ones(n, np.float32)
    timestamp = frame["timestamp"] if "timestamp" in frame else np.zeros(n, np.int64)
    out = pd.DataFrame({"user": frame["user"], "item": frame["item"],
                        "rating": np.asarray(rating, dtype=np.float32),
                        "timestamp": np.nan_to_num(np.asarray(timestamp, dtype=np.float64)).astype(np.int64)})
    for column in frame.columns:
        if column not in out:
            out[column] = frame[column].to_numpy()
    return out


def read_delimited(
    path: Path,
    sep: str,
    names: Sequence[str],
    numeric: Sequence[str],
    encoding: str = "utf-8",
    header: bool = False,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Read a small delimited file (metadata, features) with every field as a string.

    ``numeric`` columns must parse as numbers. CRLF line endings are accepted. Raises
    :class:`RecForgeError` naming the file and the first bad line.
    """
    _check_file(path)
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            names=list(names),
            header=0 if header else None,
            dtype=str,
            encoding=encoding,
            engine="c" if len(sep) == 1 else "python",
            quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
            keep_default_na=False,
            on_bad_lines="error",
        )
    except UnicodeDecodeError as exc:
        raise RecForgeError(f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start})") from None
    except pd.errors.ParserError as exc:
        raise RecForgeError(f"{path}: malformed line: {exc}; expected {len(names)} fields separated by {sep!r}") from None
    if frame.empty:
        raise RecForgeError(f"{path}: no rows")
    first_line = 2 if header else 1
    for column in names:
        frame[column] = frame[column].astype(str).str.strip()
    if not allow_empty:
        missing = frame[list(names)].eq("").to_numpy()
        if missing.any():
            row, col = np.argwhere(missing)[0]
            raise RecForgeError(f"{path}, line {row + first_line}: column {names[col]!r} is empty")
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RecForgeError(
                f"{path}, line {row + first_line}: column {column!r} is not a number: {frame[column].iloc[row]!r}"
            )
        frame[column] = values
    return frame


def read_adjacency_lists(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a LightGCN/NGCF ``train.txt``/``test.txt``: each line is ``user item item ...`` (0-based ids).

    Vectorised: the tokens are parsed in one call and each token's line is found from the newline
    positions, so no Python loop runs per line. Returns ``(users, items)`` of equal length.
    """
    _check_file(path)
    data = np.fromfile(path, dtype=np.uint8)
    allowed = np.zeros(256, bool)
    allowed[list(b"0123456789 \t\r\n")] = True
    bad = ~allowed[data]
    if bad.any():
        offset = int(np.flatnonzero(bad)[0])
        line = int(np.count_nonzero(data[:offset] == 10)) + 1
        raise RecForgeError(f"{path}, line {line}: unexpected character {bytes(data[offset:offset + 1])!r}; "
                            "each line must be 'user item item ...' as non-negative integers separated by spaces")
    is_digit = (data >= 48) & (data <= 57)
    starts = np.flatnonzero(is_digit & ~np.concatenate(([False], is_digit[:-1])))
    line_of_byte = np.cumsum(data == 10)
    token_line = line_of_byte[starts] if len(starts) else np.zeros(0, np.int64)
    values = np.array(data.tobytes().split(), dtype=np.int64) if len(starts) else np.zeros(0, np.int64)
    if len(values) != len(starts):  # pragma: no cover - the character check makes this impossible
        raise RecForgeError(f"{path}: could not tokenise the file")
    first = np.ones(len(starts), bool)
    first[1:] = token_line[1:] != token_line[:-1]
    user_of_token = values[np.flatnonzero(first)][np.cumsum(first) - 1]
    return user_of_token[~first], values[~first]


def read_json_lines(path: Path, fields: Mapping[str, tuple[str, pa.DataType]], inferred: Sequence[str] = ()
                    ) -> pd.DataFrame:
    """Read ``fields`` (standard name -> (JSON key, type)) from a JSON Lines file, gzip-compressed or not.

    ``inferred``: further JSON keys read with the types Arrow infers (an object whose keys vary from record to
    record, such as Amazon's ``style``, becomes a struct), as pandas ``ArrowDtype`` columns of those names, null
    where a record lacks the key. Inferring parses every key of the file, so it is only done when asked."""
    import pyarrow.json as pj

    _check_file(path)
    schema = pa.schema([(key, dtype) for key, dtype in fields.values()])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer" if inferred else "ignore")
    compressed = path.suffix == ".gz"
    try:
        stream = pa.input_stream(str(path), compression="gzip" if compressed else None)
        table = pj.read_json(stream, parse_options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _diagnose_json(path, compressed, str(exc)) from None
    if table.num_rows == 0:
        raise RecForgeError(f"{path}: no records")
    frame = _to_frame(path, table, {std: key for std, (key, _) in fields.items()},
                      [s for s, (_, t) in fields.items() if s in ("rating", "timestamp")], "data")
    for key in inferred:
        frame[key] = (table.column(key).to_pandas(types_mapper=pd.ArrowDtype) if key in table.column_names
                      else pd.Series(pd.NA, index=frame.index, dtype=pd.ArrowDtype(pa.null())))
    return frame


def _diagnose_json(path: Path, compressed: bool, original: str) -> RecForgeError:
    opener = gzip.open if compressed else open
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if raw.strip():
                    json.loads(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        return RecForgeError(f"{path}: truncated or corrupted gzip file after line {number} ({exc}); delete it and "
                             "download it again")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return RecForgeError(f"{path}, line {number}: malformed JSON ({exc}); fix or remove the line")
    return RecForgeError(f"{path}: could not be read ({original}); a field has an unexpected type "
                         "(ratings and timestamps must be numbers)")


__all__ = ["read_adjacency_lists", "read_delimited", "read_json_lines", "read_table", "standardise"]
