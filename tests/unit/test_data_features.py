"""Declared features: parsing, one-line errors for bad feature files, the encoder against hand-computed values, and
nothing of a validation or test id reaching the vocabularies and ranges (unit and through the data module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recforge.data.declared import FeatureEncoder, check_columns, parse_columns
from recforge.data.features import encode_frame
from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment
from tests.conftest import compose_train

DECLARED = {"age": {"kind": "numeric"}, "gender": "categorical", "genres": {"kind": "multi", "sep": "|"},
            "year": {"kind": "numeric", "column": "date", "pattern": r"(\d{4})", "fill": "mean"},
            "zip": {"kind": "categorical", "chars": 1}, "age_group": {"kind": "bucket", "column": "age",
                                                                     "buckets": [25, 35]}}


def frame() -> pd.DataFrame:
    return pd.DataFrame({"age": [20, 40, 30, 100], "gender": ["F", "M", "F", "X"],
                         "genres": ["A|B", "B", "", "C|A"], "date": ["01-Jan-1990", "2000", None, "1-1-2020"],
                         "zip": ["10001", "94110", "1A", "V5K"]}, index=pd.Index([11, 12, 13, 14], name="item"))


def test_encoder_hand_computed_and_fitted_on_training_rows_only():
    columns = parse_columns(DECLARED, "item")
    train = np.array([True, True, True, False])
    encoder = FeatureEncoder(columns).fit(frame(), train)
    assert encoder.state["age"] == (20.0, 40.0, 30.0)
    assert encoder.state["gender"] == ["F", "M"] and encoder.state["genres"] == ["A", "B"]
    assert encoder.state["zip"] == ["1", "9"]
    assert encoder.state["year"] == (1990.0, 2000.0, 1995.0)   # row 3 has no date; row 4 is not training
    matrix, names = encoder.transform(frame())
    assert names == ["age", "gender=F", "gender=M", "genres=A", "genres=B", "year", "zip=1", "zip=9",
                     "age_group=[-inf,25)", "age_group=[25,35)", "age_group=[35,inf)"]
    expected = np.array([
        [0.0, 1, 0, 0.5, 0.5, 0.0, 1, 0, 1, 0, 0],
        [1.0, 0, 1, 0.0, 1.0, 1.0, 0, 1, 0, 0, 1],
        [0.5, 1, 0, 0.0, 0.0, 0.5, 1, 0, 0, 1, 0],   # no genre; the year is the training mean
        [1.0, 0, 0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 1],   # age and year clipped, X unknown, C unknown (A alone: 1)
    ], np.float32)
    np.testing.assert_allclose(matrix, expected)


def test_nothing_of_the_held_out_rows_reaches_the_encoding():
    columns = parse_columns(DECLARED, "item")
    train = np.array([True, True, True, False])
    before = FeatureEncoder(columns).fit(frame(), train)
    changed = frame()
    changed.iloc[3] = [1000, "Z", "Q|R|S", "3000", "Z9"]   # anything at all in the held-out row
    after = FeatureEncoder(columns).fit(changed, train)
    assert after.state == before.state
    np.testing.assert_array_equal(after.transform(changed)[0][:3], before.transform(frame())[0][:3])
    # the automatic path too: ranges and categories from the training rows only
    auto = pd.DataFrame({"n": [1.0, 3.0, 2.0, 50.0], "c": ["a", "b", "a", "new"]})
    tensor, names = encode_frame(auto, fit_rows=train)
    assert names == ["n", "c=a", "c=b"]
    assert tensor[:, 0].tolist() == [0.0, 1.0, 0.5, 1.0] and tensor[3, 1:].tolist() == [0.0, 0.0]


def test_declarations_are_checked_with_the_key_named():
    with pytest.raises(RecForgeError, match=r"data.item_columns.year.kind='date' must be one of"):
        parse_columns({"year": "date"}, "item")
    with pytest.raises(RecForgeError, match=r"data.user_columns.age.scale is not a feature setting"):
        parse_columns({"age": {"kind": "numeric", "scale": 2}}, "user")
    with pytest.raises(RecForgeError, match=r"data.item_columns.genres: a multi feature needs either sep"):
        parse_columns({"genres": "multi"}, "item")
    with pytest.raises(RecForgeError, match=r"data.user_columns.age.buckets must be strictly increasing"):
        parse_columns({"age": {"kind": "bucket", "buckets": [30, 20]}}, "user")


def test_bad_feature_files_stop_with_one_line_naming_file_and_column():
    columns = parse_columns({"age": "numeric", "job": "categorical"}, "user")
    with pytest.raises(RecForgeError, match=r"^users.csv: no column 'job' for feature job \(data.user_columns.job\)"):
        check_columns(columns, pd.DataFrame({"age": [1, 2]}), "users.csv", "user")
    bad = pd.DataFrame({"age": [20, np.nan, 31], "job": ["a", "b", "c"]}, index=pd.Index(["u1", "u2", "u3"]))
    with pytest.raises(RecForgeError) as error:
        check_columns(columns, bad, "users.csv", "user")
    message = str(error.value)
    assert "\n" not in message and message.startswith("users.csv: column 'age' (feature age) has 1 missing")
    assert "(first: user 'u2')" in message and "data.user_columns.age.fill=mean" in message
    check_columns(parse_columns({"age": {"kind": "numeric", "fill": "mean"}}, "user"), bad, "users.csv", "user")


def write_data(folder: Path) -> None:
    """30 users with 8 random items each of 40; every item has a genre (3 of them) and a year."""
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}") for u in range(30) for i in rng.choice(40, 8, replace=False)]
    pd.DataFrame(rows, columns=["user", "item"]).drop_duplicates().to_csv(folder / "inter.csv", index=False)
    genres = [f"g{i % 3}" for i in range(40)]
    years = [1980 + i for i in range(40)]
    pd.DataFrame({"item": [f"i{i}" for i in range(40)], "genres": genres, "year": years}).to_csv(
        folder / "items.csv", index=False)


def test_data_module_fits_features_on_the_training_items_only(tmp_path):
    """On a cold-item split, rewriting the held-out items' features leaves every training item's encoding and the
    feature columns unchanged, and the held-out items' unknown genre encodes as zeros."""
    write_data(tmp_path)
    overrides = ["data=custom", f"data.path={tmp_path / 'inter.csv'}", "data.columns.rating=null",
                 "data.columns.timestamp=null", f"data.item_features={tmp_path / 'items.csv'}",
                 "data.item_columns={genres:{kind:multi,sep:'|'},year:numeric}", "split=cold_items", "model=fm",
                 "tracking=none", "eval.ks=[5]", "monitor=val/ndcg_at_5", "datamodule.cache=false"]
    first = build_experiment(compose_train(overrides, tmp_path / "a")).datamodule
    held_out = sorted(set(first.split.val["item"]) | set(first.split.test["item"]))
    raw_ids = first.id_maps.items[held_out]
    items = pd.read_csv(tmp_path / "items.csv")
    items.loc[items["item"].isin(raw_ids), ["genres", "year"]] = ["never_in_training", 2500]
    items.to_csv(tmp_path / "items.csv", index=False)
    second = build_experiment(compose_train(overrides, tmp_path / "b")).datamodule
    assert second.feature_names() == first.feature_names() == {
        "item_features": ["genres=g0", "genres=g1", "genres=g2", "year"]}
    a, b = first.feature_tensors()["item_features"], second.feature_tensors()["item_features"]
    warm = torch.ones(first.n_items, dtype=torch.bool)
    warm[held_out] = False
    assert torch.equal(a[warm], b[warm])
    assert b[held_out, :3].abs().sum() == 0 and torch.all(b[held_out, 3] == 1.0)   # unknown genre; year clipped
