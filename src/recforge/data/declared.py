"""Declared user and item features: which raw columns are features, of which kind, checked against their files and
encoded with vocabularies, ranges and means fitted on the training rows only (numpy and pandas; no torch, so that
the sources that check their files stay light to import)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from recforge.data import text
from recforge.errors import RecForgeError

KINDS = ("categorical", "multi", "numeric", "bucket", "text")
FILLS = {"text": "zeros"}   # the fill a kind takes (default: mean)
COLUMN_KEYS = ("kind", "column", "sep", "prefix", "chars", "pattern", "buckets", "fill", "min_count",
               "from_interactions")


@dataclass(frozen=True)
class FeatureColumn:
    """One declared feature of a side (``data.user_columns.<name>`` / ``data.item_columns.<name>``).

    ``kind``: ``categorical`` (one-hot over the training vocabulary; ``chars`` keeps the first characters, e.g. a
    zip prefix), ``multi`` (multi-valued: the values of one text ``column`` split at ``sep``, or the 0/1 flag
    columns named ``prefix*`` such as MovieLens' genres; multi-hot over the training vocabulary, each row divided
    by its number of known values), ``numeric`` (min-max scaled to [0, 1] by the training rows' range, clipped;
    ``pattern``: a regular expression whose first group is the number, e.g. a year in a date or a title; ``fill:
    mean`` puts the training mean where a value is missing, else a missing value stops the run) or ``bucket`` (a
    number one-hot by the ``buckets`` edges) or ``text`` (the text embedded by a packaged sentence-embedding model,
    :mod:`recforge.data.text`: nothing is fitted; a missing or empty text stops the run unless ``fill: zeros``,
    which gives it a vector of zeros). ``column`` is the raw column (default: the feature's name).
    ``min_count``: categorical and multi values seen in fewer training rows are unknown. Unknown values (never
    seen in the training rows) encode as zeros. ``from_interactions``: the raw column is a column of the
    interactions (a tag a user gave a movie, the variant an Amazon review is about), and each id's value is
    aggregated over its *training* interactions only (:func:`from_training_interactions`); for a text feature (the
    review text of an Amazon review) that is the mean of the embeddings of its training interactions' texts.
    """

    name: str
    kind: str
    column: str | None = None
    sep: str | None = None
    prefix: str | None = None
    chars: int | None = None
    pattern: str | None = None
    buckets: tuple[float, ...] | None = None
    fill: str | None = None
    min_count: int = 1
    from_interactions: bool = False

    @property
    def source(self) -> str:
        return self.column or self.name


def declared_settings(settings: Any, key: str, valid: Sequence[str], what: str = "feature") -> dict[str, Any]:
    """One declared feature's settings (a kind alone stands for ``{kind: ...}``); a setting not in ``valid`` stops
    with one line naming ``key``."""
    settings = {"kind": settings} if isinstance(settings, str) else dict(settings or {})
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise RecForgeError(f"{key}.{unknown[0]} is not a {what} setting; valid: {', '.join(valid)}")
    return settings


def parse_columns(columns: Mapping | None, side: str) -> list[FeatureColumn]:
    """The declared features of ``data.<side>_columns`` (a mapping of feature name to its settings, or to just its
    kind), checked; one-line errors name the key."""
    if not columns:
        return []
    out = []
    for name, settings in dict(columns).items():
        key = f"data.{side}_columns.{name}"
        settings = declared_settings(settings, key, COLUMN_KEYS)
        kind = settings.get("kind")
        if kind not in KINDS:
            raise RecForgeError(f"{key}.kind={kind!r} must be one of {', '.join(KINDS)}")
        if kind == "multi" and bool(settings.get("sep")) == bool(settings.get("prefix")):
            raise RecForgeError(f"{key}: a multi feature needs either sep (values in one text column) or prefix "
                                "(0/1 flag columns named prefix*), e.g. sep='|'")
        if kind == "bucket" and not settings.get("buckets"):
            raise RecForgeError(f"{key}: a bucket feature needs buckets (increasing edges), e.g. buckets=[18,25,35]")
        if settings.get("from_interactions") and (kind == "categorical" or settings.get("prefix")):
            raise RecForgeError(f"{key}: a from_interactions feature is multi with sep (the union of the values of "
                                "the id's training interactions), numeric/bucket (their mean) or text (the mean "
                                "of their texts' embeddings)")
        fill = FILLS.get(kind, "mean")
        if settings.get("fill") not in (None, fill):
            raise RecForgeError(f"{key}.fill={settings['fill']!r} must be {fill} or null (a missing value stops the "
                                "run)")
        if kind == "text":
            text.require(key)
        if settings.get("buckets") is not None:
            settings["buckets"] = tuple(float(b) for b in settings["buckets"])
            if list(settings["buckets"]) != sorted(set(settings["buckets"])):
                raise RecForgeError(f"{key}.buckets must be strictly increasing, got {list(settings['buckets'])}")
        out.append(FeatureColumn(str(name), **settings))
    return out


def _raw_numbers(column: FeatureColumn, frame: pd.DataFrame) -> np.ndarray:
    values = frame[column.source]
    if column.pattern:
        values = values.astype("string").str.extract(column.pattern, expand=False)
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _flag_columns(column: FeatureColumn, frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(column.prefix)]


def _texts(column: FeatureColumn, frame: pd.DataFrame) -> pd.Series:
    """The texts of a text feature, stripped; a missing or empty one is NA."""
    return frame[column.source].astype("string").str.strip().replace("", pd.NA)


def _categories(column: FeatureColumn, frame: pd.DataFrame) -> pd.Series:
    values = frame[column.source].astype("string").str.strip()
    if column.chars:
        values = values.str[: column.chars]
    return values.replace("", pd.NA)


def check_columns(columns: list[FeatureColumn], frame: pd.DataFrame, path: str, side: str) -> None:
    """A raw feature file against its declared features (those not ``from_interactions``): a missing column or
    (without ``fill``) a missing or non-numeric value of a numeric feature, or a missing or empty text of a text
    feature, stops with one line naming the file and the column."""
    for column in columns:
        if column.from_interactions:
            continue
        key = f"data.{side}_columns.{column.name}"
        if column.kind == "multi" and column.prefix:
            if not _flag_columns(column, frame):
                raise RecForgeError(f"{path}: no column named {column.prefix}* for feature {column.name} ({key}); "
                                    f"the file has {list(map(str, frame.columns))[:12]}")
            continue
        if column.source not in frame:
            raise RecForgeError(f"{path}: no column {column.source!r} for feature {column.name} ({key}); the file has "
                                f"{list(map(str, frame.columns))[:12]}; fix {key}.column or the file")
        if column.kind in ("numeric", "bucket", "text") and column.fill is None:
            text_kind = column.kind == "text"
            missing = _texts(column, frame).isna().to_numpy() if text_kind else np.isnan(_raw_numbers(column, frame))
            if missing.any():
                first = frame.index.to_list()[np.flatnonzero(missing)[0]]   # a Python value: 8, not np.int64(8)
                what = "missing or empty texts" if text_kind else "missing or non-numeric values"
                raise RecForgeError(f"{path}: column {column.source!r} (feature {column.name}) has "
                                    f"{int(missing.sum())} {what} (first: {side} {first!r}); "
                                    f"fix the file or set {key}.fill={FILLS.get(column.kind, 'mean')}")


def from_training_interactions(columns: list[FeatureColumn], frame: pd.DataFrame | None, train: pd.DataFrame,
                               side: str, n: int) -> pd.DataFrame | None:
    """``frame`` (one row per index ``0..n-1`` of the side, or None) with the raw column of each ``from_interactions``
    feature computed from the training interactions ``train`` (indices in ``train[side]``): a multi feature's
    value is the ``sep``-joined values of the id's training rows (their union, once encoded), a numeric or bucket
    feature's the mean of its training rows' numbers, a text feature's the sequence (a list or an array) of its
    training rows' non-empty texts (encoded as the mean of their embeddings). Validation, test and fold-in
    interactions are never read, so what they carry (a tag given in a held-out rating, the text of a held-out
    review) cannot reach the features; an id without training interactions has no value (zeros; a number gets the
    training mean)."""
    wanted = [c for c in columns if c.from_interactions]
    if not wanted:
        return frame
    out = frame.copy() if frame is not None else pd.DataFrame(index=pd.RangeIndex(n))
    ids = train[side].to_numpy(np.int64)
    for column in wanted:
        if column.source not in train:
            extra = [c for c in train.columns if c not in ("user", "item", "rating", "timestamp")]
            raise RecForgeError(f"data.{side}_columns.{column.name}: the interactions have no column "
                                f"{column.source!r} (from_interactions); they carry {extra}")
        values = train[column.source]
        if column.kind in ("multi", "text"):
            values = values.astype("string").str.strip().fillna("")
            given = (values != "").to_numpy()
            joined = values[given].groupby(ids[given]).agg(column.sep.join if column.kind == "multi" else list)
        else:
            joined = pd.to_numeric(values, errors="coerce").groupby(ids).mean()
        out[column.source] = joined.reindex(range(n)).to_numpy()
    return out


@dataclass
class FeatureEncoder:
    """Declared features fitted on the training rows only (vocabularies, ranges, means), then applied to every row.
    ``fit`` never reads a row outside ``train_rows``: what a validation or test id carries cannot change the
    encoding (nor, so, any training input). A text feature fits nothing: each row's text is embedded on its own by
    a fixed pretrained model, so a held-out row's text changes no other row's vector."""

    columns: list[FeatureColumn]
    state: dict = field(default_factory=dict)
    cache_dir: str | None = None   # where text features' embeddings are cached (recforge.data.text.embed)

    def fit(self, frame: pd.DataFrame, train_rows: np.ndarray) -> "FeatureEncoder":
        train = frame.iloc[np.flatnonzero(train_rows)]
        for column in self.columns:
            if column.kind == "numeric":
                values = _raw_numbers(column, train)
                known = values[~np.isnan(values)]
                lo, hi = (float(known.min()), float(known.max())) if len(known) else (0.0, 1.0)
                self.state[column.name] = (lo, hi, float(known.mean()) if len(known) else 0.0)
            elif column.kind == "categorical":
                counts = _categories(column, train).value_counts(dropna=True)
                self.state[column.name] = sorted(counts.index[counts >= column.min_count].tolist())
            elif column.kind == "multi":
                counts = self._multi(column, train).sum(0)
                self.state[column.name] = sorted(counts.index[counts >= column.min_count].tolist())
        return self

    @staticmethod
    def _multi(column: FeatureColumn, frame: pd.DataFrame) -> pd.DataFrame:
        """0/1 indicators of each row's values, one column per value (named by the value)."""
        if column.prefix:
            flags = frame[_flag_columns(column, frame)].fillna(0).astype(np.float64) > 0
            return flags.rename(columns=lambda c: str(c)[len(column.prefix):]).astype(np.float32)
        values = frame[column.source].astype("string").fillna("")
        dummies = values.str.get_dummies(sep=column.sep)
        dummies.columns = dummies.columns.str.strip()
        dummies = dummies.loc[:, dummies.columns != ""]   # an empty field is no value
        if dummies.columns.duplicated().any():  # "A| A": A once
            dummies = dummies.T.groupby(level=0).max().T
        return dummies.astype(np.float32)

    def _embedded(self, column: FeatureColumn, frame: pd.DataFrame) -> np.ndarray:
        """A text feature's ``(n, DIM)`` block: a row's text embedded, or for a list of texts (an id's training
        reviews, :func:`from_training_interactions`) the mean of their embeddings; zeros without a text (checked
        before, by check_columns or encode_records: absent = fill)."""
        values = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] for v in frame[column.source]]
        owner = np.repeat(np.arange(len(values)), [len(v) for v in values])
        texts = pd.Series([t for v in values for t in v], dtype=object).astype("string").str.strip().fillna("")
        kept = (texts != "").to_numpy(bool)
        block = np.zeros((len(values), text.DIM), np.float32)
        if kept.any():
            np.add.at(block, owner[kept], text.embed(texts[kept].tolist(), self.cache_dir, f"feature {column.name}"))
            block /= np.maximum(np.bincount(owner[kept], minlength=len(values)), 1)[:, None]
        return block

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """The float32 ``(n, d)`` encoding of every row and the names of its ``d`` columns (``feature=value`` for
        one-hot and multi-hot values, the feature's name for a number, ``feature_<i>`` for a text's vector)."""
        blocks, names = [], []
        n = len(frame)
        for column in self.columns:
            if column.kind == "numeric":
                lo, hi, mean = self.state[column.name]
                values = _raw_numbers(column, frame)
                values = np.where(np.isnan(values), mean, values)
                scaled = np.clip((values - lo) / max(hi - lo, np.finfo(np.float32).tiny), 0.0, 1.0)
                blocks.append(scaled[:, None])
                names.append(column.name)
            elif column.kind == "bucket":
                values = _raw_numbers(column, frame)
                codes = np.digitize(values, column.buckets)
                codes = np.where(np.isnan(values), -1, codes)
                blocks.append((codes[:, None] == np.arange(len(column.buckets) + 1)).astype(np.float32))
                edges = ("-inf",) + tuple(f"{b:g}" for b in column.buckets) + ("inf",)
                names += [f"{column.name}=[{a},{b})" for a, b in zip(edges[:-1], edges[1:])]
            elif column.kind == "text":
                blocks.append(self._embedded(column, frame))
                names += [f"{column.name}_{i}" for i in range(text.DIM)]
            else:
                vocab = self.state[column.name]
                if column.kind == "categorical":
                    codes = pd.Categorical(_categories(column, frame), categories=vocab).codes
                    block = (codes[:, None] == np.arange(len(vocab))).astype(np.float32)
                else:
                    block = self._multi(column, frame).reindex(columns=vocab, fill_value=0).to_numpy(np.float32)
                    block = block / np.maximum(block.sum(1, keepdims=True), 1)
                blocks.append(block.reshape(n, len(vocab)))
                names += [f"{column.name}={v}" for v in vocab]
        matrix = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), np.float32)
        return np.nan_to_num(matrix.astype(np.float32)), names

    # new rows, from a request instead of a file ---------------------------------------------------------------------
    def raw_columns(self) -> list[str]:
        """The raw columns the declared features read (``prefix*`` for flag columns), as a feature file holds them."""
        return [f"{c.prefix}*" if c.kind == "multi" and c.prefix else c.source for c in self.columns]

    def encode_records(self, records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> np.ndarray:
        """The float32 encoding of raw records (raw column -> value, as a row of the feature file holds them, e.g.
        ``{"genre_Comedy": 1, "release_date": "01-Jan-1995"}``) by the fitted vocabularies, ranges and means: the
        rows :meth:`transform` gives the same values in a file. A ``multi`` feature with ``sep`` also takes a list of
        values; absent ``prefix*`` flags are 0. Each record is checked first, and a RecForgeError names its label and
        the column: a key no declared feature reads, a declared column it lacks, a value of the wrong type, or a
        number that is missing (without ``fill``) or not a number."""
        rows = [self._checked(dict(record), label) for record, label in zip(records, labels)]
        return self.transform(pd.DataFrame.from_records(rows, columns=sorted({k for row in rows for k in row})))[0]

    def _checked(self, record: dict[str, Any], label: str) -> dict[str, Any]:
        """``record`` checked against the declared features (see :meth:`encode_records`), lists joined by ``sep``."""
        read: set[str] = set()
        for column in self.columns:
            if column.kind == "multi" and column.prefix:
                flags = [key for key in record if key.startswith(column.prefix)]
                if not flags:
                    example = f"{column.prefix}{(self.state[column.name] or ['x'])[0]}"
                    raise RecForgeError(f"{label}: no column {column.prefix}* for feature {column.name} (0/1 flags, "
                                        f"e.g. {example}: 1)")
                for key in flags:
                    if record[key] is not None and not _is_number(record[key], flag=True):
                        raise RecForgeError(f"{_where(label, key, column)} needs a 0/1 flag (got {_kind(record[key])})")
                read.update(flags)
            elif column.source not in record:
                raise RecForgeError(f"{label}: no column {column.source!r} for feature {column.name}; give every "
                                    f"declared column: {', '.join(self.raw_columns())}")
            else:
                read.add(column.source)
                value = record[column.source]
                if column.kind == "multi" and isinstance(value, list) and all(isinstance(v, str) for v in value):
                    record[column.source] = column.sep.join(value)
                else:
                    _check_value(column, value, label)
        unknown = sorted(set(record) - read)
        if unknown:
            raise RecForgeError(f"{label}: column {unknown[0][:64]!r} is read by no declared feature; the declared "
                                f"columns are {', '.join(self.raw_columns())}")
        return record

    # files --------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The declaration and the fitted state, as JSON types (a model bundle's ``features.json``)."""
        return {"columns": [{k: v for k, v in asdict(c).items() if v is not None} for c in self.columns],
                "state": {name: list(value) for name, value in self.state.items()}}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "FeatureEncoder":
        columns = [FeatureColumn(**{**c, "buckets": tuple(c["buckets"]) if c.get("buckets") else None})
                   for c in spec["columns"]]
        return cls(columns, {name: list(value) for name, value in spec["state"].items()})


def _where(label: str, key: str, column: FeatureColumn) -> str:
    return f"{label}: column {key!r} (feature {column.name}, {column.kind})"


def _check_value(column: FeatureColumn, value: Any, label: str) -> None:
    """One raw value of a one-column feature: a text or a number (or null); for a number feature, one that parses
    (``pattern`` applied), and null only with ``fill``; for a text feature, a text or a list of texts (embedded and
    averaged, as an id's training reviews are), empty or null only with ``fill`` or ``from_interactions`` (an id
    without interactions yet)."""
    if column.kind == "text":
        many = isinstance(value, (list, tuple, np.ndarray))
        texts = list(value) if many else [value]
        wrong = [t for t in texts if not (t is None or isinstance(t, str))]
        if wrong:
            got = f"a list holding {_kind(wrong[0])}" if many else _kind(value)
            raise RecForgeError(f"{_where(label, column.source, column)} needs a text or a list of texts (got {got})")
        if not any(t and t.strip() for t in texts) and column.fill is None and not column.from_interactions:
            raise RecForgeError(f"{_where(label, column.source, column)} is null or empty and the feature has no "
                                f"fill; give a text")
        return
    if value is not None and not (isinstance(value, str) or _is_number(value)):
        wanted = "a text or a list of texts" if column.kind == "multi" else "a text or a number"
        raise RecForgeError(f"{_where(label, column.source, column)} needs {wanted} (got {_kind(value)})")
    if column.kind not in ("numeric", "bucket"):
        return
    if value is None and column.fill is None:
        raise RecForgeError(f"{_where(label, column.source, column)} is null and the feature has no fill; give a "
                            f"number")
    if value is not None and np.isnan(_raw_numbers(column, pd.DataFrame({column.source: [value]}, dtype=object))[0]):
        pattern = f" (matching {column.pattern!r})" if column.pattern else ""
        raise RecForgeError(f"{_where(label, column.source, column)} needs a number{pattern} (got {_kind(value)})")


def _is_number(value: Any, flag: bool = False) -> bool:
    """An int or a float (a bool only as a 0/1 ``flag``)."""
    return isinstance(value, (int, float)) and (flag or not isinstance(value, bool))


def _kind(value: Any) -> str:
    """What a value is, in a message (the value itself is never echoed: it may be long)."""
    return {bool: "a boolean", list: "a list", dict: "an object", str: "a text"}.get(type(value), type(value).__name__)


def read_encoders(path: str | Path) -> dict[str, FeatureEncoder]:
    """The fitted encoders (``user``, ``item``) of a ``features.json`` (:func:`encoders_json`); a missing or
    malformed file is a RecForgeError naming it."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        return {side: FeatureEncoder.from_dict(spec[side]) for side in ("user", "item") if side in spec}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise RecForgeError(f"{path}: cannot read the fitted feature encoders ({type(exc).__name__}: {reason}); the "
                            f"file is corrupt or incomplete: copy it again from the model bundle") from None


def encoders_json(encoders: Mapping[str, FeatureEncoder]) -> str:
    """``features.json``: the declaration and fitted state of each side's encoder."""
    return json.dumps({side: encoder.to_dict() for side, encoder in encoders.items()}, indent=2)
