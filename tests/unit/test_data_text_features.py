"""Text features (kind: text): the encoder's columns and values with a stub embedder, the on-disk cache (a second
run embeds nothing), one-line errors for a missing or empty text and a missing extra, the data module end to end,
and the real packaged all-MiniLM-L6-v2 when the extra is installed."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from recforge.data import text
from recforge.data.declared import FeatureEncoder, check_columns, parse_columns
from recforge.errors import RecForgeError
from recforge.pipeline import build_experiment
from tests.conftest import compose_train
from tests.unit.test_data_interaction_features import datamodule, write_amazon

DECLARED = {"title_text": {"kind": "text", "column": "title"}, "year": "numeric"}


def stub_vector(value: str) -> np.ndarray:
    """A deterministic vector per text (from its hash)."""
    seed = int(hashlib.sha256(value.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(text.DIM).astype(np.float32)


@pytest.fixture
def stub(monkeypatch):
    """The model replaced by :func:`stub_vector`; returns the list of batches it was asked to embed."""
    calls: list[list[str]] = []

    def encode(texts, cache_dir, key):
        calls.append(list(texts))
        return np.stack([stub_vector(t) for t in texts])

    monkeypatch.setattr(text, "_encode", encode)
    monkeypatch.setattr(text, "require", lambda key: None)
    return calls


def frame() -> pd.DataFrame:
    return pd.DataFrame({"title": ["Toy Story (1995)", " Heat (1995) ", "Toy Story (1995)"],
                         "year": [1995, 1995, 1995]}, index=pd.Index([7, 8, 9], name="item"))


def test_columns_and_values_are_the_embeddings(stub, tmp_path):
    encoder = FeatureEncoder(parse_columns(DECLARED, "item"), cache_dir=str(tmp_path))
    matrix, names = encoder.fit(frame(), np.array([True, False, False])).transform(frame())
    assert names == [f"title_text_{i}" for i in range(text.DIM)] + ["year"]
    assert matrix.shape == (3, text.DIM + 1) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0, :-1], stub_vector("Toy Story (1995)"))
    np.testing.assert_array_equal(matrix[1, :-1], stub_vector("Heat (1995)"))   # stripped
    np.testing.assert_array_equal(matrix[2, :-1], matrix[0, :-1])
    assert encoder.state == {"year": (1995.0, 1995.0, 1995.0)}   # the text fits nothing
    assert sorted(map(sorted, stub)) == [["Heat (1995)", "Toy Story (1995)"]]   # each distinct text embedded once


def test_a_second_run_reads_the_cache_and_embeds_only_new_texts(stub, tmp_path):
    first = text.embed(["a", "b"], tmp_path, "k")
    assert stub == [["a", "b"]] and len(list((tmp_path / "text").rglob("*.npz"))) == 1
    again = text.embed(["b", "a"], tmp_path, "k")
    assert stub == [["a", "b"]]   # nothing new
    np.testing.assert_array_equal(again, first[::-1])
    text.embed(["a", "c"], tmp_path, "k")
    assert stub == [["a", "b"], ["c"]]
    assert not list(tmp_path.rglob("*.tmp"))
    text.embed(["a"], None, "k")   # no cache folder: embedded again, nothing written
    assert stub[-1] == ["a"] and len(list((tmp_path / "text").rglob("*.npz"))) == 2


def test_a_missing_or_empty_text_stops_with_one_line_naming_file_and_column(stub):
    columns = parse_columns(DECLARED, "item")
    bad = frame().assign(title=["Toy Story (1995)", "  ", None])
    with pytest.raises(RecForgeError) as error:
        check_columns(columns, bad, "u.item", "item")
    message = str(error.value)
    assert "\n" not in message and message.startswith("u.item: column 'title' (feature title_text) has 2 missing or "
                                                      "empty texts (first: item 8)")
    assert message.endswith("set data.item_columns.title_text.fill=zeros")
    filled = parse_columns({"title_text": {"kind": "text", "column": "title", "fill": "zeros"}}, "item")
    check_columns(filled, bad, "u.item", "item")
    matrix, _ = FeatureEncoder(filled).fit(bad, np.ones(3, bool)).transform(bad)
    assert matrix[0].any() and not matrix[1:].any()
    with pytest.raises(RecForgeError, match=r"title_text.fill='mean' must be zeros or null"):
        parse_columns({"title_text": {"kind": "text", "fill": "mean"}}, "item")
    with pytest.raises(RecForgeError, match=r"from_interactions feature is multi with sep .* or text \(the mean"):
        parse_columns({"review": {"kind": "categorical", "from_interactions": True}}, "item")


def test_new_records_are_checked_and_encoded_as_in_a_file(stub):
    encoder = FeatureEncoder(parse_columns(DECLARED, "item")).fit(frame(), np.ones(3, bool))
    rows = encoder.encode_records([{"title": "Heat (1995)", "year": 1995}], ["items[0]"])
    np.testing.assert_array_equal(rows[0], encoder.transform(frame())[0][1])
    with pytest.raises(RecForgeError, match=r"^items\[0\]: column 'title' \(feature title_text, text\) is null or "
                                            r"empty and the feature has no fill"):
        encoder.encode_records([{"title": " ", "year": 1995}], ["items[0]"])
    with pytest.raises(RecForgeError, match=r"needs a text or a list of texts \(got int\)"):
        encoder.encode_records([{"title": 3, "year": 1995}], ["items[0]"])


def test_a_list_of_texts_is_the_mean_of_their_embeddings(stub):
    """A review-text feature (from_interactions) holds each id's list of texts: its vector is their mean embedding,
    empty texts skipped, zeros without any; a new record may give a list too, or none yet."""
    encoder = FeatureEncoder(parse_columns({"reviews": {"kind": "text", "from_interactions": True}}, "item"))
    rows = pd.DataFrame({"reviews": [["good", " bad "], "fine", [], None, ["", "good"]]})
    matrix, _ = encoder.fit(rows, np.ones(5, bool)).transform(rows)
    np.testing.assert_allclose(matrix[0], (stub_vector("good") + stub_vector("bad")) / 2, rtol=1e-6)
    np.testing.assert_array_equal(matrix[1], stub_vector("fine"))
    assert not matrix[2:4].any()
    np.testing.assert_array_equal(matrix[4], stub_vector("good"))
    new = encoder.encode_records([{"reviews": ["bad", "good"]}, {"reviews": None}], ["items[0]", "items[1]"])
    np.testing.assert_allclose(new, matrix[[0, 2]], rtol=1e-6)
    with pytest.raises(RecForgeError, match=r"^items\[0\]: column 'reviews' \(feature reviews, text\) needs a text "
                                            r"or a list of texts \(got a list holding int\)"):
        encoder.encode_records([{"reviews": ["good", 3]}], ["items[0]"])


def test_amazon_review_texts_from_the_training_reviews_only(stub, tmp_path):
    """The reviews of tests/unit/test_data_interaction_features.py (train: times < 100): B1's training reviews are
    by A1 and A2 (A3's has no text), B2's by A1 (A2's is blank), B3's by A1; A3's review of B3 (validation) and
    A2's (test) are never embedded. Users: A3's only training review has no text, so zeros."""
    write_amazon(tmp_path)
    reviews = "{kind:text,column:reviewText,from_interactions:true}"
    dm = datamodule(tmp_path, "data=amazon-2018", f"+data.user_columns.reviews={reviews}",
                    f"+data.item_columns.reviews={reviews}")
    names = dm.feature_names()
    assert names["user_features"] == ["verified"] + [f"reviews_{i}" for i in range(text.DIM)]
    assert names["item_features"] == ["style=Size:7.0 oz"] + [f"reviews_{i}" for i in range(text.DIM)]
    items = dm.feature_tensors()["item_features"].numpy()[:, 1:]
    assert dm.id_maps.items.tolist() == ["B1", "B2", "B3"] and dm.id_maps.users.tolist() == ["A1", "A2", "A3"]
    np.testing.assert_allclose(items[0], (stub_vector("A1 on B1") + stub_vector("A2 on B1")) / 2, rtol=1e-6)
    np.testing.assert_array_equal(items[1:], np.stack([stub_vector("A1 on B2"), stub_vector("A1 on B3")]))
    users = dm.feature_tensors()["user_features"].numpy()[:, 1:]
    expected = np.mean([stub_vector(f"A1 on {b}") for b in ("B1", "B2", "B3")], axis=0)
    np.testing.assert_allclose(users[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(users[1], stub_vector("A2 on B1"))
    assert not users[2].any()
    embedded = {t for batch in stub for t in batch}
    assert embedded == {"A1 on B1", "A2 on B1", "A1 on B2", "A1 on B3"}


def test_without_the_extra_a_one_line_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecForgeError, match=r"^data.item_columns.title_text: a text feature needs the packaged "
                                            r"sentence-embedding model; install the extra: "
                                            r"pip install -e '.\[text\]'$"):
        parse_columns(DECLARED, "item")


def test_data_module_appends_the_text_columns_and_caches_them(stub, tmp_path):
    rows = [(f"u{u}", f"i{(u + k) % 12}") for u in range(12) for k in range(4)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "inter.csv", index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(12)], "title": [f"Movie {i}" for i in range(12)]}).to_csv(
        tmp_path / "items.csv", index=False)
    overrides = ["data=custom", f"data.path={tmp_path / 'inter.csv'}", "data.columns.rating=null",
                 "data.columns.timestamp=null", f"data.item_features={tmp_path / 'items.csv'}",
                 "data.item_columns={title_text:{kind:text,column:title}}", "model=fm", "tracking=none",
                 "eval.ks=[5]", "monitor=val/ndcg_at_5"]
    datamodule = build_experiment(compose_train(overrides, tmp_path / "run")).datamodule
    features = datamodule.feature_tensors()["item_features"].numpy()
    assert datamodule.feature_names()["item_features"] == [f"title_text_{i}" for i in range(text.DIM)]
    raw = datamodule.id_maps.items
    for index in range(datamodule.n_items):
        np.testing.assert_array_equal(features[index], stub_vector(f"Movie {raw[index][1:]}"))
    assert len(list((tmp_path / "run" / "cache" / "text").rglob("*.npz"))) == 1
    again = build_experiment(compose_train(overrides, tmp_path / "run")).datamodule
    np.testing.assert_array_equal(again.feature_tensors()["item_features"].numpy(), features)
    assert len(stub) == 1   # the second run embedded nothing


def test_the_packaged_model_offline(tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 from the package (HF_HUB_OFFLINE: nothing may be downloaded): 384 unit-length numbers, and
    two Toy Story titles closer to each other than to an unrelated one."""
    pytest.importorskip("all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = text.embed(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"], tmp_path, "k")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = vectors @ vectors.T
    assert cosine[0, 1] > cosine[0, 2] + 0.2 and cosine[0, 1] > cosine[1, 2] + 0.2
    assert (tmp_path / "text" / "models").is_dir()
