"""Security and faults in data files (issue #29): ratings that are not numbers or off the scale, ids that only look
alike, duplicated header columns, byte-order marks, unreadable files. Each ends in one RecForgeError naming the
file, the row or column and the fix, never in a silent merge or a NaN metric."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.datamodule import RecDataModule
from recforge.data.readers import read_table
from recforge.data.sources.tabular import TabularSource
from recforge.data.split import RandomSplit
from recforge.errors import RecForgeError

REPO = Path(__file__).resolve().parents[2]
COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
HEADER = "user,item,rating,timestamp\n"
ROWS = "".join(f"{u},{i},{(u * i) % 5 + 1},{u * 100 + i}\n" for u in range(1, 9) for i in range(1, 9))


def datamodule(path: Path, preprocess=None, **source) -> RecDataModule:
    dm = RecDataModule(TabularSource(str(path), COLUMNS, cache_dir=str(path.parent / "c"), **source),
                       RandomSplit(0.2, 0.2), preprocess=preprocess, cache=False)
    dm.setup()
    return dm


def at(path: Path) -> str:
    """A regex matching a message that starts with ``path``."""
    return "^" + re.escape(str(path))


def write(tmp_path: Path, content: str | bytes, name: str = "r.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# ---------------------------------------------------------------------------------------------- ratings
@pytest.mark.parametrize("value", ["nan", "-inf", "inf", ""])
def test_a_rating_that_is_not_a_finite_number_is_refused_naming_the_file_and_row(tmp_path, value):
    path = write(tmp_path, HEADER + ROWS.replace("3,4,3,304\n", f"3,4,{value},304\n"))
    with pytest.raises(RecForgeError, match=at(path) + r": 1 rating is not a finite number .* data row 20, user 3, "
                                            r"item 4, .*\.ValidateRatings, on_invalid: drop\}"):
        datamodule(path)


def test_a_rating_outside_the_declared_range_is_refused_and_the_range_is_the_fix(tmp_path):
    path = write(tmp_path, HEADER + ROWS.replace("3,4,3,304\n", "3,4,10,304\n"))
    with pytest.raises(RecForgeError, match=r"1 rating is outside the rating range \[1.0, 5.0\], the first at data row "
                                            r"20, user 3, item 4, rating 10.0; .* set data.rating_range"):
        datamodule(path, rating_range=[1, 5])
    assert datamodule(path, rating_range=[1, 10]).n_users == 8  # the fix the message names
    assert datamodule(path).n_users == 8  # no declared range: any finite rating


def test_a_validate_ratings_step_of_the_config_replaces_the_default_check(tmp_path):
    from recforge.data.preprocess import DropMissing, ValidateRatings

    path = write(tmp_path, HEADER + ROWS.replace("3,4,3,304\n", "3,4,nan,304\n").replace("5,5,1,505\n", "5,5,9,505\n"))
    dm = datamodule(path, [DropMissing(), ValidateRatings(on_invalid="drop")], rating_range=[1, 5])
    assert dm.data_report()["data/pre_validate_ratings_removed"] == 2
    assert sum(len(p) for p in (dm.split.train, dm.split.val, dm.split.test)) == 62


def test_generated_data_is_checked_too():
    from recforge.data.interactions import prepare
    from recforge.data.sources.base import RawData

    frame = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": np.array([4, np.inf], np.float32),
                          "timestamp": [0, 0]})
    with pytest.raises(RecForgeError, match=r"^gen: 1 rating is not a finite number .* data row 2, user 2"):
        prepare(RawData("gen", frame, rating_range=None), "explicit", None)


# --------------------------------------------------------------------------------------------------- ids
def test_ids_that_differ_as_text_stay_different_users(tmp_path):
    """200 users in the file stay 200: '05' is not '5', and '1.0' is not '1'."""
    users = [str(u) for u in range(1, 199)] + ["05", "1.0"]
    path = write(tmp_path, HEADER + "".join(f"{u},{i},3,{n}\n" for n, u in enumerate(users) for i in (1, 2, 3)))
    dm = datamodule(path)
    assert dm.n_users == 200
    assert {"5", "05", "1", "1.0"} <= set(dm.id_maps.users)  # text ids, as written


@pytest.mark.parametrize("odd", ["-5", "+5", " 5", "5 ", "1e3", "9" * 19])
def test_an_id_that_is_not_a_canonical_integer_makes_the_column_text(tmp_path, odd):
    path = write(tmp_path, HEADER + ROWS + f"{odd},1,3,1\n")
    frame = read_table(path, COLUMNS)
    assert frame["user"].tolist()[-1] == odd and frame["user"].tolist()[0] == "1"
    assert frame["item"].dtype == np.int64  # the other column is still all canonical


def test_canonical_integer_ids_stay_integers(tmp_path):
    path = write(tmp_path, HEADER + ROWS + "0,10,3,1\n")
    frame = read_table(path, COLUMNS)
    assert frame["user"].dtype == np.int64 and frame["item"].dtype == np.int64
    assert frame["user"].iloc[-1] == 0 and frame["item"].max() == 10


def test_features_ids_are_read_like_the_interactions_ids(tmp_path):
    path = write(tmp_path, HEADER + ROWS + "05,1,3,1\n05,2,3,2\n")
    users = write(tmp_path, "user,age\n05,50\n5,5\n", "users.csv")
    dm = datamodule(path, user_features=str(users))
    ages = dict(zip(dm.id_maps.users, dm.user_features["age"]))
    assert ages["05"] == 50 and ages["5"] == 5


def test_a_list_typed_parquet_id_column_is_one_error_naming_file_and_column(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": [[1, 2], [3]], "item": [1, 2], "rating": [3.0, 4.0], "timestamp": [1, 2]}).to_parquet(path)
    message = r": column 'user' \(user\) holds list<.*> values, not one id per row; .* data.columns.user"
    with pytest.raises(RecForgeError, match=at(path) + message):
        read_table(path, COLUMNS)


# ------------------------------------------------------------------------------------------------- files
def test_a_duplicated_header_column_is_refused(tmp_path):
    path = write(tmp_path, HEADER.replace("\n", ",item\n") + ROWS.replace("\n", ",99\n"))
    with pytest.raises(RecForgeError, match=at(path) + r", line 1: column 'item' appears more than once; rename"):
        read_table(path, COLUMNS)  # not one of the two read silently
    headerless = write(tmp_path, ROWS, "h.csv")
    with pytest.raises(RecForgeError, match=r"^data.names: column 'user' appears more than once"):
        read_table(headerless, COLUMNS, header=False, names=["user", "item", "rating", "user"])


def test_a_duplicated_parquet_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    pq.write_table(pa.table([[1, 2], [1, 2], [3.0, 4.0], [5, 6], [7, 8]],
                            names=["user", "item", "rating", "timestamp", "user"]), path)
    with pytest.raises(RecForgeError, match=at(path) + r": column 'user' appears more than once"):
        read_table(path, COLUMNS)


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + (HEADER + ROWS).encode())
    assert datamodule(path).n_users == 8
    headerless = write(tmp_path, b"\xef\xbb\xbf" + ROWS.encode(), "h.csv")
    frame = read_table(headerless, COLUMNS, header=False, names=list(COLUMNS))
    assert frame["user"].dtype == np.int64 and frame["user"].iloc[0] == 1


@pytest.mark.parametrize("content, encoding, message", [
    (b"\xef\xbb\xbf" + (HEADER + ROWS).encode(), "latin-1", r"UTF-8 byte-order mark \(BOM\).* set data.encoding=utf-8"),
    ((HEADER + ROWS).encode("utf-16"), "utf-8", r"UTF-16 byte-order mark \(BOM\).* save it as UTF-8"),
])
def test_a_byte_order_mark_the_reader_cannot_use_is_named_with_the_fix(tmp_path, content, encoding, message):
    path = write(tmp_path, content)
    with pytest.raises(RecForgeError, match=at(path) + rf": starts with a {message}"):
        read_table(path, COLUMNS, encoding=encoding)
    with pytest.raises(RecForgeError, match=message):  # a headerless file too
        read_table(path, COLUMNS, header=False, names=list(COLUMNS), encoding=encoding)


@contextmanager
def as_nobody():
    """Drop root's right to read any file for the block (chmod alone does not stop root)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unreadable_file_is_one_error_naming_it():
    folder = Path(tempfile.mkdtemp())  # not under tmp_path, whose parent only root may enter
    try:
        folder.chmod(0o755)
        path = write(folder, HEADER + ROWS)
        path.chmod(0)
        source = TabularSource(str(path), COLUMNS, cache_dir=str(folder / "cache"))
        with as_nobody():
            with pytest.raises(RecForgeError, match=at(path) + r": cannot be read \(Permission denied\); make it"):
                source.load()  # the checksum reads the file first
            with pytest.raises(RecForgeError, match=at(path) + r": cannot be read"):
                read_table(path, COLUMNS)
    finally:
        shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------------- CLI
def test_the_cli_stops_on_a_bad_file_with_one_line_and_exit_2(tmp_path):
    path = write(tmp_path, HEADER + ROWS.replace("3,4,3,304\n", "3,4,nan,304\n"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RECFORGE_CACHE_DIR": str(tmp_path / "cache"),
           "RECFORGE_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-m", "recforge.train", "tracking=none", "data=custom",
                             f"data.path={path}", "trainer.max_epochs=1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: 1 rating is not a finite number"), errors
