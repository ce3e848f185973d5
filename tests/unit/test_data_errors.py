"""Bad input gives one clear RecForgeError naming the file, line or column and the fix, and leaves no cache."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from recforge.data.datamodule import RecDataModule
from recforge.data.sources.amazon import Amazon2018
from recforge.data.sources.lightgcn import LightGCNData
from recforge.data.sources.tabular import TabularSource
from recforge.data.split import RandomSplit
from recforge.errors import RecForgeError

GOOD = "user,item,rating,timestamp\n" + "".join(f"{u},{i},{(u * i) % 5 + 1},{u * 100 + i}\n"
                                                for u in range(1, 8) for i in range(1, 8))
COLUMNS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}


def setup_custom(tmp_path: Path, content: bytes | str, columns=COLUMNS, **kw) -> Path:
    path = tmp_path / kw.pop("filename", "bad.csv")
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    cache = tmp_path / "cache"
    dm = RecDataModule(TabularSource(str(path), columns, cache_dir=str(cache), **kw), RandomSplit(0.2, 0.2),
                       cache_dir=str(cache))
    try:
        dm.setup()
    except RecForgeError:
        prepared = cache / "prepared"
        assert not prepared.exists() or not any(prepared.iterdir()), "a failed run left a cache entry"
        raise
    return path


def test_a_good_file_works_and_is_cached(tmp_path):
    setup_custom_ok = tmp_path / "ok.csv"
    setup_custom_ok.write_text(GOOD)
    dm = RecDataModule(TabularSource(str(setup_custom_ok), COLUMNS, cache_dir=str(tmp_path / "c")), RandomSplit(0.2, 0.2),
                       cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert len(list((tmp_path / "c" / "prepared").iterdir())) == 1


@pytest.mark.parametrize("content, message", [
    (GOOD.replace("3,4,3,304\n", "3,4,3,304,99\n"), r"bad.csv, line 19: malformed line, expected 4 fields"),
    (GOOD.replace("2,5,1,205\n", "2,5,high,205\n"), r"bad.csv, line 13: column 'rating' is not a number: 'high'"),
    (GOOD.replace("5,5,1,505\n", "5,5,1,5x5\n"), r"bad.csv, line 34: column 'timestamp' is not a number"),
    ("", r"bad.csv: file is empty"),
    ("user,item,rating,timestamp\n", r"bad.csv: no data rows"),
    (GOOD.replace("rating", "stars"), r"no column 'rating' \(for rating\); the file has columns .*data.columns.rating"),
    ("user,item,rating,timestamp\n,1,3,1\n,2,4,2\n", r"column 'user' \(user\) is empty in every row"),
])
def test_bad_csv(tmp_path, content, message):
    with pytest.raises(RecForgeError, match=message):
        setup_custom(tmp_path, content)


def test_wrong_encoding_names_the_line(tmp_path):
    content = (GOOD + "9,Mis\xe9rables,4,1\n").encode("latin-1")
    with pytest.raises(RecForgeError, match=r"bad.csv, line 51: not valid utf-8 text .* data.encoding"):
        setup_custom(tmp_path, content)
    path = setup_custom(tmp_path, content, encoding="latin-1")  # the fix works
    assert path.is_file()


def test_missing_file_and_bad_mapping(tmp_path):
    with pytest.raises(RecForgeError, match="file not found; fix data.path"):
        TabularSource(str(tmp_path / "nope.csv"), COLUMNS).load()
    with pytest.raises(RecForgeError, match="data.columns.item is required"):
        TabularSource(str(tmp_path / "x.csv"), {"user": "u"})


def test_malformed_adjacency_and_json_lines(tmp_path):
    folder = tmp_path / "gowalla"
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2\n1 2 x3\n")
    (folder / "test.txt").write_text("0 3\n")
    with pytest.raises(RecForgeError, match=r"train.txt, line 2: unexpected character b'x'"):
        LightGCNData("gowalla", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False).load()
    amazon = tmp_path / "amazon-2018"
    amazon.mkdir()
    good = b'{"overall": 5.0, "reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n'
    (amazon / "Toys_5.json.gz").write_bytes(gzip.compress(good + b'{"overall": 4.0, "reviewerID": \n' + good))
    src = Amazon2018("Toys", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False)
    with pytest.raises(RecForgeError, match=r"Toys_5.json.gz, line 2: malformed JSON"):
        src.load()
    (amazon / "Toys_5.json.gz").write_bytes(gzip.compress(good * 50)[:-30])
    with pytest.raises(RecForgeError, match=r"truncated or corrupted gzip file .* download it again"):
        Amazon2018("Toys", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False).load()
