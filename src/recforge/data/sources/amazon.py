"""Amazon Review Data (2018), 5-core files per category (``<Category>_5.json.gz``, JSON Lines).

Jianmo Ni, Jiacheng Li and Julian McAuley. 2019. Justifying Recommendations using Distantly-Labeled
Reviews and Fine-Grained Aspects. EMNLP 2019. The files can hold the same (reviewer, item) pair more than
once: keep a ``Deduplicate`` step in ``datamodule.preprocess`` (the default does).

The 5-core files have no user or item tables; what they carry beside the rating is per review: ``style``, the
variant reviewed (``{"Size:": " 7.0 oz", "Flavor:": " Classic Ice Blue"}``), and ``verified`` (a verified
purchase), and the review's text (``reviewText``, its headline ``summary``). Declared features read them as
interaction columns (``from_interactions``), so each user's and item's value comes from its training reviews only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from recforge.data.declared import FeatureColumn, parse_columns
from recforge.data.readers import read_json_lines, standardise
from recforge.data.sources.base import FileSource, RawData
from recforge.errors import RecForgeError

AMAZON_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz"
KNOWN = {"All_Beauty_5.json.gz": "4a6b1eb40c4f58328f3f34181a6ef00f8e3423d801128617cc408a83c9bd0027"}
FIELDS = {"user": ("reviewerID", pa.string()), "item": ("asin", pa.string()), "rating": ("overall", pa.float64()),
          "timestamp": ("unixReviewTime", pa.int64())}
REVIEW_COLUMNS = ("style", "verified", "reviewText", "summary")   # what declared features can read (from_interactions)
TEXT_COLUMNS = ("reviewText", "summary")


class Amazon2018(FileSource):
    """One category's 5-core review file: ratings 1-5 with review times (seconds).

    ``user_columns`` / ``item_columns`` declare features built from the reviews' ``style`` (:func:`style_tokens`:
    ``Size:7.0 oz|Flavor:Classic Ice Blue``; a ``multi`` feature with ``sep: "|"``) and ``verified`` (1.0 or 0.0;
    a ``numeric`` feature: the share of verified reviews) and ``reviewText`` / ``summary`` (a ``text`` feature:
    the mean embedding of the id's training reviews' texts), each with ``from_interactions: true``; only the
    declared fields are read.
    """

    name = "amazon-2018"
    known_checksums = KNOWN

    def __init__(self, category: str = "All_Beauty", data_dir: str | None = None, cache_dir: str = "data_cache",
                 url: str = AMAZON_URL, verify: bool = True, user_columns: Mapping | None = None,
                 item_columns: Mapping | None = None, context_columns: Mapping | None = None) -> None:
        super().__init__(data_dir, cache_dir, verify, context_columns)
        self.category, self.url = category, url
        self.name = f"amazon-2018-{category}"
        self._path: Path | None = None
        self.user_columns = dict(user_columns) if user_columns else None
        self.item_columns = dict(item_columns) if item_columns else None
        self._declared = {"user": parse_columns(user_columns, "user"), "item": parse_columns(item_columns, "item")}
        for side, columns in self._declared.items():
            for column in columns:
                if not column.from_interactions or column.source not in REVIEW_COLUMNS:
                    raise RecForgeError(f"data.{side}_columns.{column.name}: Amazon 2018 has no feature files; a "
                                        f"feature reads the reviews' {' or '.join(REVIEW_COLUMNS)} with "
                                        f"from_interactions: true (got column {column.source!r})")

    @property
    def feature_columns(self) -> dict[str, list[FeatureColumn]]:
        """The declared user and item features (empty lists: none declared)."""
        return self._declared

    def spec(self) -> dict:
        return {k: v for k, v in super().spec().items() if k != "url"}

    def raw_files(self) -> dict[str, Path]:
        filename = f"{self.category}_5.json.gz"
        if self._path is None:
            slug = self.category.lower().replace("_", "-")
            local = self.find_local((f"amazon2018-{slug}-5core", "amazon-2018", "amazon2018"), filename)
            self._path = (local / filename if local is not None else
                          self.fetch_file(self.url.format(category=self.category), "amazon-2018", filename,
                                          self.known_checksums.get(filename) if self.verify else None))
        return {filename: self._path}

    def load(self) -> RawData:
        checksums = self.checksums()
        (path,) = self.raw_files().values()
        fields = sorted({column.source for columns in self._declared.values() for column in columns})
        frame = read_json_lines(path, FIELDS, inferred=fields)
        if "style" in frame:
            frame["style"] = style_tokens(frame["style"], path)
        if "verified" in frame:
            frame["verified"] = verified_flags(frame["verified"], path)
        for key in set(TEXT_COLUMNS) & set(frame.columns):
            frame[key] = review_texts(frame[key], path, key)
        frame = standardise(frame)
        return RawData(self.name, frame, rating_range=(1.0, 5.0), checksums=checksums, origin=str(path))


def style_tokens(style: pd.Series, path: Path) -> pd.Series:
    """Each review's ``style`` object as ``|``-joined ``key:value`` tokens, keys without their colon and values
    stripped (``{"Size:": " 7.0 oz", "Flavor:": " Classic Ice Blue"}`` -> ``Size:7.0 oz|Flavor:Classic Ice
    Blue``, keys in the order they first appear in the file; a ``|`` inside a value becomes a space); ``""``
    without a style."""
    kind = style.dtype.pyarrow_dtype
    tokens = pd.Series("", index=style.index, dtype=object)
    if pa.types.is_null(kind):   # no review has a style
        return tokens
    if not pa.types.is_struct(kind):
        raise RecForgeError(f"{path}: 'style' holds {kind} values, not objects of attributes such as "
                            '{"Size:": " 7.0 oz"}; drop the style feature (data.item_columns.style)')
    for key, values in style.struct.explode().items():
        values = values.astype("string").str.replace("|", " ", regex=False).str.strip().fillna("")
        token = (key.strip().rstrip(":").strip() + ":" + values).where(values != "", "")
        tokens = tokens + "|" + token
    return tokens.str.replace(r"\|+", "|", regex=True).str.strip("|")


def verified_flags(verified: pd.Series, path: Path) -> np.ndarray:
    """``verified`` as float32 1.0 / 0.0 (NaN where a review does not say)."""
    kind = verified.dtype.pyarrow_dtype
    if not (pa.types.is_boolean(kind) or pa.types.is_null(kind)):
        raise RecForgeError(f"{path}: 'verified' holds {kind} values, not true/false; drop the verified feature")
    return verified.astype("float32").to_numpy(np.float32, na_value=np.nan)


def review_texts(texts: pd.Series, path: Path, key: str) -> pd.Series:
    """A review text field (``reviewText``, ``summary``) as Python strings, ``""`` where a review has none."""
    kind = texts.dtype.pyarrow_dtype
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise RecForgeError(f"{path}: {key!r} holds {kind} values, not texts; drop the feature that reads it")
    return texts.astype("string").fillna("").astype(object)
