"""The real datasets in shared/datasets load with the counts their README gives (skipped without the folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recforge.data.datamodule import RecDataModule
from recforge.data.interactions import prepare
from recforge.data.preprocess import Deduplicate, DropMissing
from recforge.data.sources.amazon import Amazon2018
from recforge.data.sources.lastfm import LastFMHetRec
from recforge.data.sources.lightgcn import LightGCNData
from recforge.data.sources.movielens import ML100K_FOLDS, MovieLens, MovieLens100K
from recforge.data.split import PredefinedSplit
from recforge.errors import RecForgeError

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("RECFORGE_DATA_DIR", REPO.parent / "shared" / "datasets"))
pytestmark = [pytest.mark.data, pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real datasets folder {DATA} is absent (set RECFORGE_DATA_DIR to run these tests)")]


def test_ml100k_counts_features_and_official_folds(tmp_path):
    raw = MovieLens100K(str(DATA), str(tmp_path)).load()
    inter = raw.interactions
    assert len(inter) == 100_000 and inter.user.nunique() == 943 and inter.item.nunique() == 1682
    assert inter.rating.value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    assert (inter.timestamp.min(), inter.timestamp.max()) == (874724710, 893286638)
    assert raw.user_features.shape[0] == 943 and raw.item_features.shape[0] == 1682
    assert "Misérables" in " ".join(raw.item_features.title)  # u.item is Latin-1
    assert raw.item_features.filter(like="genre_").shape[1] == 19
    # u1..u5: each base + test is u.data, and the five test sets partition u.data
    tests = np.stack([inter[f"part_u{k}"].to_numpy() == 2 for k in range(1, 6)])
    assert (tests.sum(axis=0) == 1).all()
    for fold in ML100K_FOLDS:
        labels = inter[f"part_{fold}"].to_numpy()
        assert (labels >= 0).all()
        expected = 20_000 if fold.startswith("u") and fold[1].isdigit() else 9_430
        assert (labels == 2).sum() == expected


def test_ml100k_predefined_split_in_the_datamodule(tmp_path):
    dm = RecDataModule(MovieLens100K(str(DATA), str(tmp_path)), PredefinedSplit("u3", val_ratio=0.1, seed=0),
                       feedback="explicit", cache_dir=str(tmp_path))
    dm.setup()
    assert len(dm.split.test) == 20_000 and len(dm.split.train) + len(dm.split.val) == 80_000
    assert dm.data_report()["data/leak_pairs"] == 0
    assert dm.feature_tensors()["user_features"].shape[0] == 943


def test_ml1m_without_ratings_says_what_is_missing(tmp_path):
    with pytest.raises(RecForgeError, match=r"ml-1m has no ratings.dat; add the file"):
        MovieLens("ml-1m", str(DATA), str(tmp_path)).load()


def test_ml_latest_small(tmp_path):
    raw = MovieLens("ml-latest-small", str(DATA), str(tmp_path)).load()
    inter = raw.interactions
    assert len(inter) == 100_836 and inter.user.nunique() == 610 and inter.item.nunique() == 9_724
    assert sorted(inter.rating.unique().tolist()) == [0.5 * k for k in range(1, 11)]
    assert raw.item_features.shape[0] == 9_742


def test_lastfm_hetrec(tmp_path):
    raw = LastFMHetRec(str(DATA), str(tmp_path)).load()
    inter = raw.interactions
    assert len(inter) == 92_834 and inter.user.nunique() == 1_892 and inter.item.nunique() == 17_632
    assert inter.rating.astype(np.float64).sum() == 69_183_975 and inter.rating.max() == 352_698
    assert raw.item_features.shape[0] == 17_632


def test_gowalla_lightgcn_split(tmp_path):
    dm = RecDataModule(LightGCNData("gowalla", str(DATA), str(tmp_path)), PredefinedSplit("lightgcn", "test"),
                       cache_dir=str(tmp_path))
    dm.setup()
    assert (dm.n_users, dm.n_items) == (29_858, 40_981)
    assert (len(dm.split.train), len(dm.split.test)) == (810_128, 217_242)
    report = dm.data_report()
    assert report["data/leak_pairs"] == 0 and report["data/n_cold_items_test"] == 0
    carved = RecDataModule(LightGCNData("gowalla", str(DATA), str(tmp_path)), PredefinedSplit("lightgcn", "carve", 0.1),
                           cache_dir=str(tmp_path))
    carved.setup()
    assert len(carved.split.train) + len(carved.split.val) == 810_128 and len(carved.split.test) == 217_242


def test_amazon_all_beauty(tmp_path):
    raw = Amazon2018("All_Beauty", str(DATA), str(tmp_path)).load()
    inter = raw.interactions
    assert len(inter) == 5_269 and inter.user.nunique() == 991 and inter.item.nunique() == 85
    assert inter.rating.value_counts().sort_index().tolist() == [115, 64, 109, 332, 4649]
    encoded, _, _ = prepare(raw, "explicit", None, [DropMissing(), Deduplicate("last")])
    assert len(encoded) == 4_092


def test_ml100k_declared_features_fitted_on_training_users_and_items(tmp_path):
    """data=ml-100k's declared features: age, gender, occupation, zip prefix; genres and release year; the one
    movie without a release date gets the training mean; a missing column stops with the file's name."""
    from tests.conftest import compose_train
    from recforge.pipeline import build_datamodule

    cfg = compose_train(["data=ml-100k", f"paths.data_dir={DATA}", "tracking=none"], tmp_path)
    dm = build_datamodule(cfg, "implicit")
    names = dm.feature_names()
    users, items = dm.feature_tensors()["user_features"], dm.feature_tensors()["item_features"]
    assert users.shape == (943, len(names["user_features"])) and items.shape == (1682, 20)
    assert names["user_features"][:3] == ["age", "gender=F", "gender=M"]
    assert sum(n.startswith("occupation=") for n in names["user_features"]) == 21
    assert "zip_prefix=0" in names["user_features"] and names["item_features"][-1] == "year"
    assert items[:, :19].sum(1).max() == pytest.approx(1.0)   # a movie's genres share one unit
    raw = dm.item_features
    years = raw["release_date"].str.extract(r"(\d{4})", expand=False).astype(float).to_numpy()
    no_date = np.flatnonzero(np.isnan(years))
    assert len(no_date) == 1   # movie 267, "unknown"
    trained = np.bincount(dm.split.train["item"], minlength=dm.n_items) > 0
    lo, hi = np.nanmin(years[trained]), np.nanmax(years[trained])
    expected = (np.nanmean(years[trained]) - lo) / (hi - lo)
    assert float(items[no_date[0], -1]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(RecForgeError, match=r"u.user: no column 'postcode' for feature zip_prefix"):
        MovieLens100K(str(DATA), str(tmp_path), user_columns={"zip_prefix": {"kind": "categorical",
                                                                            "column": "postcode"}}).load()
