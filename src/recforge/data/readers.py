"""Strict readers for delimited rating files: a bad line is reported with its file and line number."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from recforge.errors import RecForgeError


def read_delimited(
    path: Path,
    sep: str,
    names: Sequence[str],
    numeric: Sequence[str],
    encoding: str = "utf-8",
    header: bool = False,
) -> pd.DataFrame:
    """Read a delimited file whose columns are ``names``; ``numeric`` columns must parse as numbers.

    CRLF line endings are accepted. Raises :class:`RecForgeError` naming the file and the first bad line.
    """
    if not path.is_file():
        raise RecForgeError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RecForgeError(f"{path}: file is empty; re-download it or point paths.data_dir at a complete copy")
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
        frame[column] = frame[column].str.strip()
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
