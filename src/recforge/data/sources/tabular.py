"""``data=custom``: any CSV, TSV or Parquet interactions file with a column mapping, plus optional features."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import pyarrow as pa

from recforge.data.declared import FeatureColumn, check_columns, parse_columns
from recforge.data.readers import infer_format, integer_ids, read_table, standardise
from recforge.data.sources.base import FileSource, RawData
from recforge.errors import RecForgeError


class TabularSource(FileSource):
    """Interactions from ``path``; ``columns`` maps ``user``, ``item`` and optionally ``rating`` and
    ``timestamp`` to the file's column names (``null`` for absent ones: rating 1.0, timestamp 0).

    ``format`` is ``csv``, ``tsv`` or ``parquet`` (default: from the file name); ``sep`` overrides the
    delimiter (any string, e.g. ``'::'``); files without a header give their field ``names`` in order with
    ``header: false``. ``user_features`` / ``item_features`` are optional CSV/TSV/Parquet files with a
    header whose ``user_features_id`` / ``item_features_id`` column holds the raw id; the other columns
    become features (numbers as they are, text one-hot encoded by the datamodule when few distinct values),
    unless ``user_columns`` / ``item_columns`` declare which columns are features and of which kind
    (:func:`recforge.data.declared.parse_columns`, e.g. ``{genres: {kind: multi, sep: '|'}, year: numeric}``).
    """

    def __init__(
        self,
        path: str,
        columns: Mapping[str, str | None],
        name: str = "custom",
        format: str | None = None,  # noqa: A002 - the YAML key users expect
        sep: str | None = None,
        header: bool = True,
        names: Sequence[str] | None = None,
        encoding: str = "utf-8",
        rating_range: Sequence[float] | None = None,
        user_features: str | None = None,
        user_features_id: str = "user",
        item_features: str | None = None,
        item_features_id: str = "item",
        user_columns: Mapping | None = None,
        item_columns: Mapping | None = None,
        verify: bool = True,
        cache_dir: str = "data_cache",
        context_columns: Mapping | None = None,
    ) -> None:
        super().__init__(None, cache_dir, verify, context_columns)
        columns = dict(columns)
        for key in ("user", "item"):
            if not columns.get(key):
                raise RecForgeError(f"data.columns.{key} is required: the name of the file's {key} id column")
        unknown = sorted(set(columns) - {"user", "item", "rating", "timestamp"})
        if unknown:
            raise RecForgeError(f"data.columns has unknown keys {unknown}; valid: user, item, rating, timestamp")
        if rating_range is not None and (len(rating_range) != 2 or rating_range[0] >= rating_range[1]):
            raise RecForgeError(f"data.rating_range must be [low, high] with low < high, got {list(rating_range)}")
        self.path = Path(path).expanduser()
        self.columns, self.name, self.format, self.sep, self.header = columns, name, format, sep, header
        self.names = list(names) if names is not None else None
        self.encoding = encoding
        self.rating_range = tuple(float(v) for v in rating_range) if rating_range is not None else None
        self.user_features, self.user_features_id = user_features, user_features_id
        self.item_features, self.item_features_id = item_features, item_features_id
        self.user_columns = dict(user_columns) if user_columns else None
        self.item_columns = dict(item_columns) if item_columns else None
        self._declared = {"user": parse_columns(user_columns, "user"), "item": parse_columns(item_columns, "item")}
        for side in ("user", "item"):
            if self._declared[side] and not (user_features if side == "user" else item_features):
                raise RecForgeError(f"data.{side}_columns declares features but data.{side}_features names no file; "
                                    f"set data.{side}_features=<file>")

    @property
    def feature_columns(self) -> dict[str, list[FeatureColumn]]:
        return self._declared

    def spec(self) -> dict:
        return {k: v for k, v in super().spec().items() if k not in ("path", "user_features", "item_features")}

    def raw_files(self) -> dict[str, Path]:
        files = {"interactions": self.path}
        if self.user_features:
            files["user_features"] = Path(self.user_features).expanduser()
        if self.item_features:
            files["item_features"] = Path(self.item_features).expanduser()
        for key, path in files.items():
            if not path.is_file():
                name = "data.path" if key == "interactions" else f"data.{key}"
                raise RecForgeError(f"{path}: file not found; fix {name}")
        return files

    def load(self) -> RawData:
        checksums = self.checksums()
        files = self.raw_files()
        frame = read_table(files["interactions"], self.columns, fmt=self.format, sep=self.sep, header=self.header,
                           names=self.names, encoding=self.encoding)
        return RawData(self.name, standardise(frame), rating_range=self.rating_range, checksums=checksums,
                       user_features=self._features(files.get("user_features"), self.user_features_id, "user"),
                       item_features=self._features(files.get("item_features"), self.item_features_id, "item"),
                       origin=str(files["interactions"]))

    def _features(self, path: Path | None, id_column: str, kind: str) -> pd.DataFrame | None:
        if path is None:
            return None
        return read_features(path, id_column, kind, self._declared[kind], f"data.{kind}_features", self.sep,
                             self.encoding)


def read_features(path: Path, id_column: str, kind: str, declared: list[FeatureColumn], key: str,
                  sep: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV/TSV/Parquet file of ``kind`` (user or item) features with a header, indexed by its ``id_column`` (ids
    read as the interactions file's are) and checked against the ``declared`` features; ``key`` is the setting that
    names the file, in messages."""
    fmt = infer_format(path, None)
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    else:
        try:
            frame = pd.read_csv(path, sep=sep if fmt == "csv" and sep else ("\t" if fmt == "tsv" else ","),
                                encoding=encoding, dtype={id_column: str})
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise RecForgeError(f"{path}: cannot read the {kind} features ({exc}); fix the file or {key}") from None
    if id_column not in frame:
        raise RecForgeError(f"{path}: no column {id_column!r}; the file has {list(frame.columns)}; "
                            f"set {key}_id")
    if fmt != "parquet":  # ids as the interactions file's are read: text unless all are canonical integers
        ids = integer_ids(pa.array(frame[id_column], pa.string(), from_pandas=True))
        frame[id_column] = ids.to_pandas(integer_object_nulls=True)
    if frame[id_column].duplicated().any():
        dup = frame.loc[frame[id_column].duplicated(), id_column].iloc[0]
        raise RecForgeError(f"{path}: {kind} id {dup!r} appears more than once in column {id_column!r}")
    frame = frame.set_index(id_column)
    check_columns(declared, frame, str(path), kind)
    return frame
