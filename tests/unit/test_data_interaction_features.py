"""Features built from the interactions (``from_interactions``): MovieLens tags and Amazon 2018's review style and
verified flag, on tiny hand-made files. Each id's value comes from its training interactions only: a tag given in a
held-out rating (or without a rating) never reaches the vocabulary or the encoding."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from recforge.data.declared import from_training_interactions, parse_columns
from recforge.data.sources.amazon import Amazon2018
from recforge.data.sources.movielens import MovieLens
from recforge.errors import RecForgeError
from recforge.pipeline import build_datamodule
from tests.conftest import compose_train

# train: timestamps < 100; validation [100, 200); test >= 200 (split=temporal with these cuts)
SPLIT = ["split=temporal", "split.val_start=100", "split.test_start=200"]
RATINGS = [(1, 10, 1), (1, 20, 2), (2, 10, 3), (2, 30, 4), (3, 20, 5), (3, 30, 6), (4, 40, 7),
           (1, 30, 150), (4, 10, 120), (2, 20, 250), (3, 40, 260)]
TAGS = [(1, 10, "Funny", 1), (1, 10, "  dark   Comedy ", 1), (2, 10, "funny", 3), (3, 20, "FUNNY", 5),
        (3, 30, "Dark Comedy", 6), (2, 30, "boring", 4),
        (1, 30, "funny", 150),     # a validation rating's tag
        (2, 20, "secret", 250),    # a test rating's tag, on no other movie
        (3, 40, "funny", 260),     # a test rating's tag on a movie whose training ratings have none
        (4, 20, "unrated", 8)]     # a tag without a rating


def write_movielens(root: Path, tag_header: str = "userId,movieId,tag,timestamp") -> Path:
    folder = root / "ml-latest-small"
    folder.mkdir(parents=True)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},4.0,{t}" for u, i, t in RATINGS]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n10,Ten (1990),Comedy\n20,Twenty (1995),Drama\n"
                                       "30,Thirty (2000),Comedy|Drama\n40,Forty (2005),Drama\n")
    lines = [tag_header] + [f'{u},{i},"{tag}",{t}' for u, i, tag, t in TAGS]
    (folder / "tags.csv").write_text("\n".join(lines) + "\n")
    return folder


def datamodule(root: Path, *overrides: str):
    cfg = compose_train([f"paths.data_dir={root}", "tracking=none", "data.verify=false", *SPLIT, *overrides],
                        root / "run")
    return build_datamodule(cfg, "implicit")


def test_tags_are_normalised_and_joined_per_rated_pair(tmp_path):
    write_movielens(tmp_path)
    source = MovieLens("ml-latest-small", str(tmp_path), str(tmp_path / "c"), verify=False,
                       item_columns={"tags": {"kind": "multi", "sep": "|", "from_interactions": True}})
    frame = source.load().interactions.set_index(["user", "item"])["tags"]
    assert frame[(1, 10)] == "dark comedy|funny" and frame[(3, 30)] == "dark comedy" and frame[(1, 20)] == ""
    assert (4, 20) not in frame.index and len(frame) == len(RATINGS)   # the unrated pair's tag is dropped
    assert "tags.csv" in source.checksums()
    # without the declaration the tags are not read and the ratings carry no tags column
    plain = MovieLens("ml-latest-small", str(tmp_path), str(tmp_path / "c"), verify=False).load()
    assert "tags" not in plain.interactions


def test_tag_feature_from_the_training_ratings_only(tmp_path):
    """Hand-computed: training tag sets 10 {funny, dark comedy}, 20 {funny}, 30 {dark comedy, boring}, 40 {}; with
    min_count 2 the vocabulary is [dark comedy, funny] (boring is on one movie); each row divided by its number of
    known tags. The validation and test ratings' tags (secret; funny on 30 and 40) count nowhere."""
    write_movielens(tmp_path)
    dm = datamodule(tmp_path, "data=ml-latest-small", "data.item_columns.tags.min_count=2")
    names = dm.feature_names()["item_features"]
    tags = [i for i, n in enumerate(names) if n.startswith("tags=")]
    assert [names[i] for i in tags] == ["tags=dark comedy", "tags=funny"]
    assert dm.id_maps.items.tolist() == [10, 20, 30, 40]
    matrix = dm.feature_tensors()["item_features"][:, tags].numpy()
    np.testing.assert_allclose(matrix, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    write_movielens(tmp_path / "b")
    every = datamodule(tmp_path / "b", "data=ml-latest-small", "data.item_columns.tags.min_count=1")
    names = every.feature_names()["item_features"]
    assert [n for n in names if n.startswith("tags=")] == ["tags=boring", "tags=dark comedy", "tags=funny"]
    # read back from the prepared-data cache: the same encoding
    again = datamodule(tmp_path / "b", "data=ml-latest-small", "data.item_columns.tags.min_count=1")
    assert again.data_report()["data/cache_hit"] == 1.0
    assert np.array_equal(again.feature_tensors()["item_features"], every.feature_tensors()["item_features"])
    # dropping the declaration drops the columns
    without = datamodule(tmp_path / "b", "data=ml-latest-small", "~data.item_columns.tags")
    assert not any(n.startswith("tags") for n in without.feature_names()["item_features"])


def test_a_tags_file_without_the_tag_column_is_one_line_naming_file_and_column(tmp_path):
    folder = write_movielens(tmp_path, tag_header="userId,movieId,label,timestamp")
    source = MovieLens("ml-latest-small", str(tmp_path), str(tmp_path / "c"), verify=False,
                       item_columns={"tags": {"kind": "multi", "sep": "|", "from_interactions": True}})
    with pytest.raises(RecForgeError) as error:
        source.load()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{folder / 'tags.csv'}: no column 'tag' for the tags (data.item_columns.tags)")


def test_interaction_features_are_checked_with_the_key_named():
    with pytest.raises(RecForgeError, match=r"^data.item_columns.genres: ml-100k's ratings carry no column 'genres'"):
        MovieLens("ml-100k", item_columns={"genres": {"kind": "multi", "sep": "|", "from_interactions": True}})
    with pytest.raises(RecForgeError, match=r"^data.item_columns.tags: ml-1m's ratings carry no column 'tags'"):
        MovieLens("ml-1m", item_columns={"tags": {"kind": "multi", "sep": "|", "from_interactions": True}})
    with pytest.raises(RecForgeError, match=r"data.item_columns.tag: a from_interactions feature is multi with sep"):
        parse_columns({"tag": {"kind": "categorical", "from_interactions": True}}, "item")
    with pytest.raises(RecForgeError, match=r"^data.item_columns.brand: Amazon 2018 has no feature files"):
        Amazon2018(item_columns={"brand": "categorical"})
    with pytest.raises(RecForgeError, match=r"^data.user_columns.n: the interactions have no column 'n'"):
        from_training_interactions(parse_columns({"n": {"kind": "numeric", "from_interactions": True}}, "user"),
                                   None, pd.DataFrame({"user": [0], "item": [0]}), "user", 1)


REVIEWS = [  # reviewer, item, time, verified, style
    ("A1", "B1", 1, True, {"Size:": " 7.0 oz", "Flavor:": " Classic Ice Blue"}),
    ("A1", "B2", 2, False, {"Color:": " Red|Blue "}),
    ("A2", "B1", 3, True, {"Size:": " 7.0 oz"}),
    ("A2", "B2", 4, True, None),
    ("A3", "B1", 5, None, {"Size:": ""}),
    ("A1", "B3", 6, True, {"Size:": "7.0 oz"}),
    ("A3", "B3", 150, False, {"Size:": " Huge"}),      # validation
    ("A2", "B3", 250, False, {"Color:": " Secret"}),   # test
]


def write_amazon(root: Path) -> None:
    folder = root / "amazon2018-all-beauty-5core"
    folder.mkdir(parents=True)
    with gzip.open(folder / "All_Beauty_5.json.gz", "wt") as fh:
        for user, item, time, verified, style in REVIEWS:
            record = {"overall": 5.0, "reviewerID": user, "asin": item, "unixReviewTime": time,
                      "reviewText": {"A3B1": None, "A2B2": "  "}.get(user + item, f"{user} on {item}")}
            record = {k: v for k, v in record.items() if v is not None}   # A3's review of B1 has no text
            record |= ({"verified": verified} if verified is not None else {}) | ({"style": style} if style else {})
            fh.write(json.dumps(record) + "\n")


def test_amazon_style_tokens_and_verified_flags(tmp_path):
    write_amazon(tmp_path)
    source = Amazon2018("All_Beauty", str(tmp_path), str(tmp_path / "c"), verify=False,
                        user_columns={"verified": {"kind": "numeric", "from_interactions": True}},
                        item_columns={"style": {"kind": "multi", "sep": "|", "from_interactions": True}})
    frame = source.load().interactions
    assert frame["style"].tolist() == ["Size:7.0 oz|Flavor:Classic Ice Blue", "Color:Red Blue", "Size:7.0 oz", "",
                                       "", "Size:7.0 oz", "Size:Huge", "Color:Secret"]
    np.testing.assert_array_equal(frame["verified"], [1, 0, 1, 1, np.nan, 1, 0, 0])
    plain = Amazon2018("All_Beauty", str(tmp_path), str(tmp_path / "c"), verify=False).load().interactions
    assert list(plain.columns) == ["user", "item", "rating", "timestamp"]


def test_amazon_features_from_the_training_reviews_only(tmp_path):
    """Hand-computed. Items' training style tokens: B1 {Size:7.0 oz, Flavor:Classic Ice Blue}, B2 {Color:Red Blue},
    B3 {Size:7.0 oz}; min_count 2 keeps Size:7.0 oz only. Users' share of verified training reviews: A1 2/3, A2 1,
    A3 none known (its validation review does not count): the training mean 5/6; scaled by the range [2/3, 1]."""
    write_amazon(tmp_path)
    dm = datamodule(tmp_path, "data=amazon-2018")
    assert dm.feature_names() == {"user_features": ["verified"], "item_features": ["style=Size:7.0 oz"]}
    assert dm.id_maps.users.tolist() == ["A1", "A2", "A3"] and dm.id_maps.items.tolist() == ["B1", "B2", "B3"]
    tensors = dm.feature_tensors()
    np.testing.assert_allclose(tensors["user_features"][:, 0], [0.0, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(tensors["item_features"][:, 0], [1.0, 0.0, 1.0])
    every = datamodule(tmp_path, "data=amazon-2018", "data.item_columns.style.min_count=1")
    assert every.feature_names()["item_features"] == ["style=Color:Red Blue", "style=Flavor:Classic Ice Blue",
                                                      "style=Size:7.0 oz"]
    np.testing.assert_allclose(every.feature_tensors()["item_features"][0], [0.0, 0.5, 0.5])


@pytest.mark.parametrize("name, declared", [
    ("ml-latest-small", {"item": {"genres": False, "year": False, "tags": True}}),
    ("amazon-2018", {"user": {"verified": True}, "item": {"style": True}}),
])
def test_data_configs_carry_their_feature_declarations(tmp_path, name, declared):
    cfg = compose_train([f"data={name}", "paths.data_dir=/nonexistent"], tmp_path)
    source = instantiate(cfg.data)   # constructing reads nothing
    got = {side: {c.name: c.from_interactions for c in columns}
           for side, columns in source.feature_columns.items() if columns}
    assert got == declared
