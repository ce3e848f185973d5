"""MovieLens (GroupLens): ml-100k, ml-1m, ml-10m, ml-20m and ml-latest-small.

F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
ACM TiiS 5(4):19. The licences forbid redistribution: RecForge reads a local copy or downloads the archive
from GroupLens into ``paths.cache_dir``, and never ships the data.

Local folders are found as ``<data_dir>/<release folder>`` (``ml-100k``, ``ml-1m``, ``ml-10M100K`` or
``ml-10m``, ``ml-20m``, ``ml-latest-small``) or ``<data_dir>`` itself. Known SHA-256 values of the extracted
files are verified (``verify``); archives' observed checksums are logged and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from recforge.data.declared import FeatureColumn, check_columns, parse_columns
from recforge.data.readers import read_delimited, read_table, standardise
from recforge.data.sources.base import PART_PREFIX, FileSource, RawData
from recforge.data.sorting import isin
from recforge.errors import RecForgeError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
ML100K_URL = f"{BASE_URL}/ml-100k.zip"


@dataclass(frozen=True)
class Release:
    folders: tuple[str, ...]
    ratings: str
    sep: str
    header: bool
    rating_range: tuple[float, float]
    users: str | None = None
    movies: str | None = None
    encoding: str = "utf-8"          # of the metadata files
    known: tuple[tuple[str, str | tuple[str, str]], ...] = ()
    tags: str | None = None          # userId,movieId,tag,timestamp (CSV with a header)


ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
    "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
    "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
    "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
    "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
    "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
    "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
    "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
    "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
    "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
    "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
    "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
    "ub.base": "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
    "ub.test": "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da",
}
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

RELEASES = {
    "ml-100k": Release(("ml-100k",), "u.data", "\t", False, (1.0, 5.0), "u.user", "u.item", "latin-1",
                       tuple(ML100K_SHA256.items())),
    "ml-1m": Release(("ml-1m",), "ratings.dat", "::", False, (1.0, 5.0), "users.dat", "movies.dat", "latin-1", (
        ("ratings.dat", ("git-blob", "77a7c4b150f588c23bb9e1f068aa996c0b413695")),
        ("users.dat", "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"),
        ("movies.dat", "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"),
    )),
    "ml-10m": Release(("ml-10M100K", "ml-10m"), "ratings.dat", "::", False, (0.5, 5.0), None, "movies.dat",
                      "latin-1"),
    "ml-20m": Release(("ml-20m",), "ratings.csv", ",", True, (0.5, 5.0), None, "movies.csv", tags="tags.csv"),
    "ml-latest-small": Release(("ml-latest-small",), "ratings.csv", ",", True, (0.5, 5.0), None, "movies.csv",
                               "utf-8", (
        ("ratings.csv", "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"),
        ("movies.csv", "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07"),
        ("tags.csv", "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d"),
    ), "tags.csv"),
}
CSV_COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
DAT_NAMES = ["user", "item", "rating", "timestamp"]
TAG_FIELDS = ("userId", "movieId", "tag")


class MovieLens(FileSource):
    """One MovieLens release (``variant``): ratings, plus user and movie features when ``features``.

    Features: ml-100k ``u.user`` (age, gender, occupation) and ``u.item`` (title, 19 genre flags); ml-1m
    ``users.dat`` (gender, age, occupation) and ``movies.dat``; the others' movie files (title, genres as
    multi-hot columns ``genre_<name>``). ml-100k also carries its official splits ``u1``-``u5``, ``ua``, ``ub``
    (use ``split=predefined split.name=u1``). ml-latest-small and ml-20m also have ``tags.csv``: when a declared
    feature reads the interaction column ``tags`` (``from_interactions``), each rating carries the tags its user
    gave the movie (:func:`read_tags`), and the feature is built from the training ratings' tags only.

    ``user_columns`` / ``item_columns`` declare which raw columns are features and of which kind
    (:func:`recforge.data.declared.parse_columns`; the data configs declare ml-100k's and ml-latest-small's);
    undeclared, every feature column is encoded by :func:`recforge.data.features.encode_frame`.
    """

    def __init__(self, variant: str = "ml-100k", data_dir: str | None = None, cache_dir: str = "data_cache",
                 url: str | None = None, verify: bool = True, features: bool = True,
                 user_columns: Mapping | None = None, item_columns: Mapping | None = None,
                 context_columns: Mapping | None = None) -> None:
        super().__init__(data_dir, cache_dir, verify, context_columns)
        if variant not in RELEASES:
            raise RecForgeError(f"data.variant={variant!r} is not a MovieLens release; pick one of {sorted(RELEASES)}")
        self.variant = variant
        self.name = variant
        self.url = url or f"{BASE_URL}/{variant}.zip"
        self.features = features
        self.release = RELEASES[variant]
        self.known_checksums = dict(self.release.known)
        self._folder: Path | None = None
        self.user_columns = dict(user_columns) if user_columns else None
        self.item_columns = dict(item_columns) if item_columns else None
        self._declared = {"user": parse_columns(user_columns, "user"), "item": parse_columns(item_columns, "item")}
        reading_tags = []   # the keys of the features built from the ratings' tags
        for side, columns in self._declared.items():
            for column in (c for c in columns if c.from_interactions):
                key = f"data.{side}_columns.{column.name}"
                if column.source != "tags" or self.release.tags is None:
                    raise RecForgeError(f"{key}: {variant}'s ratings carry no column {column.source!r} "
                                        "(from_interactions); only ml-latest-small and ml-20m carry 'tags' (tags.csv)")
                reading_tags.append(key)
        self._tags_key = reading_tags[0] if features and reading_tags else None

    @property
    def feature_columns(self) -> dict[str, list[FeatureColumn]]:
        """The declared user and item features (empty lists: none declared)."""
        return self._declared if self.features else {}

    def spec(self) -> dict:
        spec = super().spec()
        spec.pop("release", None)
        spec.pop("known_checksums", None)
        spec.pop("url", None)
        return spec

    def folder(self) -> Path:
        if self._folder is None:
            release = self.release
            self._folder = (self.find_local(release.folders, release.ratings)
                            or self.fetch_zip(self.url, self.variant, release.ratings))
        return self._folder

    def raw_files(self) -> dict[str, Path]:
        folder, release = self.folder(), self.release
        names = [release.ratings]
        if self.features:
            names += [n for n in (release.users, release.movies) if n]
        if self._tags_key:
            names.append(release.tags)
        if self.variant == "ml-100k":
            names += [f"{fold}.{part}" for fold in ML100K_FOLDS for part in ("base", "test")]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise RecForgeError(f"{folder}: missing {', '.join(missing)}; use the complete {self.variant} release"
                                + (" (or set data.features=false)" if self.features else ""))
        return {n: folder / n for n in names}

    def load(self) -> RawData:
        checksums = self.checksums()
        files = self.raw_files()
        release = self.release
        if release.header:
            frame = read_table(files[release.ratings], CSV_COLUMNS, fmt="csv", header=True)
        else:
            frame = read_table(files[release.ratings], dict(zip(DAT_NAMES, DAT_NAMES)), fmt="csv",
                               sep=release.sep, header=False, names=DAT_NAMES)
        frame = standardise(frame)
        for column in ("user", "item"):
            frame[column] = frame[column].astype(np.int64)
        if self.variant == "ml-100k":
            for fold in ML100K_FOLDS:
                frame[PART_PREFIX + fold] = self._fold_labels(frame, files[f"{fold}.base"], files[f"{fold}.test"])
        if self._tags_key:
            frame = frame.merge(read_tags(files[release.tags], self._tags_key), on=["user", "item"], how="left")
            frame["tags"] = frame["tags"].fillna("")
        users = items = None
        if self.features:
            users, items = self._features(files)
            for side, table in (("user", users), ("item", items)):
                if any(not c.from_interactions for c in self._declared[side]):
                    if table is None:
                        raise RecForgeError(f"data.{side}_columns: {self.variant} has no {side} features; drop the key")
                    name = release.users if side == "user" else release.movies
                    check_columns(self._declared[side], table, str(files[name]), side)
        return RawData(self.name, frame, rating_range=release.rating_range, checksums=checksums,
                       user_features=users, item_features=items, origin=str(files[release.ratings]))

    @staticmethod
    def _fold_labels(frame: pd.DataFrame, base: Path, test: Path) -> np.ndarray:
        keys = frame["user"].to_numpy() * (1 << 32) + frame["item"].to_numpy()
        labels = np.full(len(frame), -1, np.int8)
        for path, label in ((base, 0), (test, 2)):
            part = read_table(path, dict(zip(DAT_NAMES[:2], DAT_NAMES[:2])), fmt="csv", sep="\t", header=False,
                              names=DAT_NAMES)
            part_keys = part["user"].to_numpy(np.int64) * (1 << 32) + part["item"].to_numpy(np.int64)
            labels[isin(keys, part_keys)] = label
        return labels

    def _features(self, files: dict[str, Path]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        release, enc = self.release, self.release.encoding
        users = items = None
        if self.variant == "ml-100k":
            users = read_delimited(files["u.user"], "|", ["user", "age", "gender", "occupation", "zip"],
                                   numeric=["user", "age"], encoding=enc)
            genres = [f"genre_{i}" for i in range(19)]
            genre_names = _ml100k_genres(files["u.item"].parent)
            items = read_delimited(files["u.item"], "|", ["item", "title", "release_date", "video_release_date",
                                                          "imdb_url", *genres], numeric=["item", *genres],
                                   encoding=enc, allow_empty=True)
            items = items.rename(columns=dict(zip(genres, genre_names)))
            items = items.drop(columns=["video_release_date", "imdb_url"])
        elif self.variant == "ml-1m":
            users = read_delimited(files["users.dat"], "::", ["user", "gender", "age", "occupation", "zip"],
                                   numeric=["user", "age", "occupation"], encoding=enc)
            users["occupation"] = users["occupation"].astype(np.int64).astype(str)
            items = read_delimited(files["movies.dat"], "::", ["item", "title", "genres"], numeric=["item"],
                                   encoding=enc)
        elif release.movies:
            path = files[release.movies]
            if release.header:
                items = pd.read_csv(path, encoding=enc, dtype={"title": str, "genres": str})
                items = items.rename(columns={"movieId": "item"})
            else:
                items = read_delimited(path, "::", ["item", "title", "genres"], numeric=["item"], encoding=enc)
        if users is not None:
            users = users.astype({"user": np.int64}).set_index("user")
        if items is not None:
            if "genres" in items:
                multi_hot = items["genres"].str.get_dummies(sep="|").add_prefix("genre_")
                items = pd.concat([items.drop(columns=["genres"]), multi_hot], axis=1)
            items = items.astype({"item": np.int64}).set_index("item")
        return users, items


def read_tags(path: Path, key: str) -> pd.DataFrame:
    """``user``, ``item``, ``tags``: one row per tagged (user, movie) pair of a MovieLens ``tags.csv``, its distinct
    tags normalised (lower case, single spaces; a ``|`` inside a tag becomes a space) and ``|``-joined in sorted
    order. ``key`` is the feature that reads them (named in errors)."""
    try:
        fields = [str(f).strip() for f in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise RecForgeError(f"{path}: no readable header line ({exc}); use the release's tags.csv "
                            "(userId,movieId,tag,timestamp)") from None
    missing = [f for f in TAG_FIELDS if f not in fields]
    if missing:
        raise RecForgeError(f"{path}: no column {missing[0]!r} for the tags ({key}); the file has {fields}; use the "
                            f"release's tags.csv (userId,movieId,tag,timestamp) or drop {key}")
    frame = read_delimited(path, ",", fields, numeric=["userId", "movieId"], header=True, allow_empty=True)
    tags = frame["tag"].str.replace("|", " ", regex=False).str.lower().str.split().str.join(" ")
    pairs = pd.DataFrame({"user": frame["userId"].astype(np.int64), "item": frame["movieId"].astype(np.int64),
                          "tags": tags})
    pairs = pairs[pairs["tags"] != ""].drop_duplicates().sort_values(["user", "item", "tags"])
    return pairs.groupby(["user", "item"], as_index=False, sort=False)["tags"].agg("|".join)


def _ml100k_genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if path.is_file():
        names = [line.split("|")[0] for line in path.read_text(encoding="latin-1").splitlines() if "|" in line]
        if len(names) == 19:
            return [f"genre_{n.replace(' ', '_').replace(chr(39), '')}" for n in names]
    return [f"genre_{i}" for i in range(19)]


class MovieLens100K(MovieLens):
    """MovieLens 100K: 100,000 ratings 1-5 from 943 users on 1,682 movies (see :class:`MovieLens`)."""

    def __init__(self, data_dir: str | None = None, cache_dir: str = "data_cache", url: str = ML100K_URL,
                 verify: bool = True, features: bool = True, user_columns: Mapping | None = None,
                 item_columns: Mapping | None = None, context_columns: Mapping | None = None) -> None:
        super().__init__("ml-100k", data_dir, cache_dir, url, verify, features, user_columns, item_columns,
                         context_columns)
