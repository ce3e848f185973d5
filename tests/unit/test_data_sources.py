"""Every source on small files written in the publisher's format (encodings, CRLF, headers), the custom
source with features aligned to contiguous indices, and the prepared-data cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.datamodule import RecDataModule
from recforge.data.preprocess import Deduplicate, DropMissing, KCore
from recforge.data.readers import read_adjacency_lists
from recforge.data.sources.amazon import Amazon2018
from recforge.data.sources.lastfm import LastFMHetRec
from recforge.data.sources.lightgcn import LightGCNData
from recforge.data.sources.movielens import MovieLens
from recforge.data.sources.tabular import TabularSource
from recforge.data.split import LeaveOneOutSplit, PredefinedSplit, RandomSplit


def ml1m_dir(root: Path) -> Path:
    folder = root / "ml-1m"
    folder.mkdir(parents=True)
    rows = [f"{u}::{i}::{(u + i) % 5 + 1}::{1000 + u * 10 + i}" for u in range(1, 7) for i in range(1, 6)]
    (folder / "ratings.dat").write_text("\n".join(rows) + "\n")
    (folder / "users.dat").write_text("\n".join(f"{u}::{'MF'[u % 2]}::25::{u}::55455" for u in range(1, 7)) + "\n")
    (folder / "movies.dat").write_bytes("\n".join(f"{i}::Mis\xe9rables {i} (1995)::Drama|Comedy" for i in range(1, 6))
                                        .encode("latin-1") + b"\n")
    return folder


def test_movielens_dat_release_with_latin1_features(tmp_path):
    ml1m_dir(tmp_path / "data")
    src = MovieLens("ml-1m", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), verify=False)
    raw = src.load()
    assert len(raw.interactions) == 30 and raw.interactions.user.nunique() == 6
    assert raw.interactions.rating.dtype == np.float32 and raw.rating_range == (1.0, 5.0)
    assert raw.item_features.loc[1, "title"] == "Misérables 1 (1995)"
    assert raw.item_features.loc[1, ["genre_Comedy", "genre_Drama"]].tolist() == [1, 1]
    assert raw.user_features.loc[2, "gender"] == "M"


def test_movielens_csv_release_with_crlf(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r\n1,10,4.5,5\r\n1,20,0.5,6\r\n2,10,3.0,7\r\n")
    (folder / "movies.csv").write_bytes(b'movieId,title,genres\r\n10,"Heat, The (1995)",Action|Crime\r\n'
                                        b'20,Up (2009),Animation\r\n')
    raw = MovieLens("ml-latest-small", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False).load()
    assert raw.interactions[["user", "item", "rating"]].values.tolist() == [[1, 10, 4.5], [1, 20, 0.5], [2, 10, 3.0]]
    assert raw.item_features.loc[10, "title"] == "Heat, The (1995)"


def test_a_known_checksum_mismatch_is_an_error(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,5\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n10,x,y\n")
    src = MovieLens("ml-latest-small", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(Exception, match=r"ratings.csv: checksum mismatch .* data.verify=false"):
        src.load()


def test_lastfm_crlf_tab_file(tmp_path):
    folder = tmp_path / "hetrec2011-lastfm-2k"
    folder.mkdir()
    (folder / "user_artists.dat").write_bytes(b"userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t1\r\n")
    (folder / "artists.dat").write_text("id\tname\turl\tpictureURL\n51\tDuran Duran\thttp://x\t\n52\tMorcheeba\thttp://y\t\n")
    raw = LastFMHetRec(data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False).load()
    assert raw.interactions.rating.tolist() == [13883.0, 11690.0, 1.0] and raw.rating_range is None
    assert raw.item_features.loc[52, "name"] == "Morcheeba"


def test_lightgcn_files_and_the_official_split(tmp_path):
    folder = tmp_path / "gowalla-lightgcn"
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2 3\n1 0 2\n2 3 1 0 4\n")
    (folder / "test.txt").write_text("0 4\n1 1 3\n2\n")
    users, items = read_adjacency_lists(folder / "train.txt")
    assert users.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2] and items.tolist() == [1, 2, 3, 0, 2, 3, 1, 0, 4]
    src = LightGCNData("gowalla", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False)
    dm = RecDataModule(src, PredefinedSplit("lightgcn", validation="test"), cache=False)
    dm.setup()
    assert (len(dm.split.train), len(dm.split.test)) == (9, 3) and dm.n_users == 3 and dm.n_items == 5
    # validating on the test set must not mask the test items at test time (it made every test metric 0)
    for batch in dm.test_dataloader():
        excluded = set(zip(batch["exclude_rows"].tolist(), batch["exclude_cols"].tolist()))
        relevant = set(zip(batch["relevant_rows"].tolist(), batch["relevant_cols"].tolist()))
        assert relevant and not excluded & relevant


def test_amazon_json_gz_with_duplicates(tmp_path):
    folder = tmp_path / "amazon2018-all-beauty-5core"
    folder.mkdir()
    records = [{"overall": 5.0, "reviewerID": "A1", "asin": "B1", "unixReviewTime": 10, "style": {"x": "y"}},
               {"overall": 3.0, "reviewerID": "A1", "asin": "B1", "unixReviewTime": 20, "image": ["u"]},
               {"overall": 4.0, "reviewerID": "A2", "asin": "B2", "unixReviewTime": 15, "vote": "3"}]
    with gzip.open(folder / "All_Beauty_5.json.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in records) + "\n")
    src = Amazon2018("All_Beauty", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), verify=False)
    raw = src.load()
    assert raw.interactions.user.tolist() == ["A1", "A1", "A2"] and raw.interactions.timestamp.tolist() == [10, 20, 15]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_custom_source_with_features_aligned_to_indices(tmp_path, fmt):
    inter = pd.DataFrame({"uid": ["u3", "u1", "u1", "u2", "u3", "u2", "u1", "u3"],
                          "iid": [7, 7, 8, 9, 8, 7, 9, 9], "stars": [5, 4, 3, 2, 1, 5, 4, 3],
                          "when": [1, 2, 3, 4, 5, 6, 7, 8]})
    path = tmp_path / f"inter.{fmt}"
    if fmt == "parquet":
        inter.to_parquet(path)
    else:
        inter.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False)
    users = tmp_path / "users.csv"
    pd.DataFrame({"uid": ["u2", "u1", "u9"], "age": [30, 20, 99], "country": ["fr", "de", "it"]}).to_csv(users, index=False)
    items = tmp_path / "items.parquet"
    pd.DataFrame({"iid": [9, 7, 8], "price": [9.0, 7.0, 8.0]}).to_parquet(items)
    src = TabularSource(str(path), {"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when"},
                        rating_range=[1, 5], user_features=str(users), user_features_id="uid",
                        item_features=str(items), item_features_id="iid", cache_dir=str(tmp_path / "c"))
    dm = RecDataModule(src, LeaveOneOutSplit(), feedback="explicit", cache=False)
    dm.setup()
    assert dm.id_maps.users.tolist() == ["u1", "u2", "u3"] and dm.id_maps.items.tolist() == [7, 8, 9]
    assert dm.user_features["age"].tolist()[:2] == [20, 30] and np.isnan(dm.user_features["age"].iloc[2])
    assert dm.item_features["price"].tolist() == [7.0, 8.0, 9.0]
    tensors = dm.feature_tensors()
    assert tuple(tensors["user_features"].shape) == (3, 3)  # age + one-hot of the 2 countries present
    assert "item_features" in dm.model_kwargs()


def test_headerless_custom_file_with_a_multichar_separator(tmp_path):
    path = tmp_path / "r.dat"
    path.write_text("1::10::3\n2::10::4\n2::11::5\n")
    src = TabularSource(str(path), {"user": "u", "item": "i", "rating": "r", "timestamp": None}, sep="::",
                        header=False, names=["u", "i", "r"], cache_dir=str(tmp_path / "c"))
    raw = src.load()
    assert raw.interactions.rating.tolist() == [3.0, 4.0, 5.0] and (raw.interactions.timestamp == 0).all()


# ------------------------------------------------------------------------------------------------- cache
def test_the_cache_is_hit_on_a_second_run_and_missed_after_any_config_change(tmp_path, monkeypatch):
    ml1m_dir(tmp_path / "data")
    cache = tmp_path / "cache"
    loads = []

    def make(split=None, steps=None, **kw):
        src = MovieLens("ml-1m", data_dir=str(tmp_path / "data"), cache_dir=str(cache), verify=False, **kw)
        original = src.load
        src.load = lambda: (loads.append(1), original())[1]
        return RecDataModule(src, split or RandomSplit(0.2, 0.2, seed=0), preprocess=steps, cache_dir=str(cache))

    first = make()
    first.setup()
    second = make()
    second.setup()
    assert len(loads) == 1 and second.data_report()["data/cache_hit"] == 1.0
    assert second.fingerprint == first.fingerprint
    for part in ("train", "val", "test"):
        pd.testing.assert_frame_equal(getattr(second.split, part), getattr(first.split, part), check_dtype=False)
    assert second.item_features.equals(first.item_features)
    assert second.raw.rating_range == first.raw.rating_range
    make(split=RandomSplit(0.2, 0.2, seed=1)).setup()
    make(steps=[DropMissing(), Deduplicate("first")]).setup()
    make(steps=[DropMissing(), KCore(2, 2)]).setup()
    assert len(loads) == 4
    # a changed raw file changes the key too
    ratings = tmp_path / "data" / "ml-1m" / "ratings.dat"
    ratings.write_text(ratings.read_text() + "9::1::5::99999\n")
    make().setup()
    assert len(loads) == 5
    entries = sorted(p.name for p in (cache / "prepared").iterdir())
    assert len(entries) == 5 and not [e for e in entries if e.startswith(".")]


def test_features_tensor_scales_numbers_keeps_flags_and_one_hots_categories():
    import pandas as pd

    from recforge.data.features import features_tensor

    frame = pd.DataFrame({"age": [20.0, 40.0, None, 60.0], "flag": [0, 1, 1, 0], "genre": ["a", "b", "a", None],
                          "title": [f"t{i}" for i in range(4)]})
    out = features_tensor(frame, max_categories=3)
    expected = [[0.0, 0, 1, 0], [0.5, 1, 0, 1], [0.0, 1, 1, 0], [1.0, 0, 0, 0]]  # age scaled, NaN -> 0; genre a, b
    assert out.tolist() == expected
