"""Declared context features: what the interaction itself carries (the hour of day, the weekday), derived from a
timestamp column of the interactions (Unix seconds) and encoded one-hot. The context is the user's side of a query:
a training interaction's own time gives its context, and so does a held-out positive's (its sampled negatives share
it); a full-ranking query's time is the user's earliest held-out interaction of the part (:func:`request_times`).
Nothing is fitted: each row's encoding depends on its own timestamp alone, so no held-out row can shape another's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from recforge.data.declared import declared_settings
from recforge.errors import RecForgeError

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
KINDS = {"hour": tuple(range(24)), "weekday": WEEKDAYS}   # kind -> the values of its one-hot columns
CONTEXT_KEYS = ("kind", "column", "utc_offset_hours")


@dataclass(frozen=True)
class ContextColumn:
    """One declared context feature (``data.context_columns.<name>``): ``kind`` ``hour`` (24 one-hot columns, the
    hour of day) or ``weekday`` (7, Monday first) of ``column`` (Unix seconds; default ``timestamp``), read at
    ``utc_offset_hours`` from UTC (default 0; e.g. -5 for US Eastern standard time)."""

    name: str
    kind: str
    column: str = "timestamp"
    utc_offset_hours: float = 0.0

    @property
    def key(self) -> str:
        return f"data.context_columns.{self.name}"


class DeclaresContext:
    """What a source that takes ``data.context_columns`` exposes: the parsed declaration (kept out of the source's
    cache key, since the context is derived from the prepared interactions, not stored with them)."""

    _context: list[ContextColumn] = []

    def declare_context(self, columns: Mapping | None) -> None:
        self._context = parse_context(columns)

    @property
    def context_columns(self) -> list[ContextColumn]:
        return self._context


def parse_context(columns: Mapping | None) -> list[ContextColumn]:
    """The declared context features of ``data.context_columns`` (a mapping of feature name to its settings, or to
    just its kind), checked; one-line errors name the key."""
    if not columns:
        return []
    out = []
    for name, settings in dict(columns).items():
        key = f"data.context_columns.{name}"
        settings = declared_settings(settings, key, CONTEXT_KEYS, "context")
        if settings.get("kind") not in KINDS:
            raise RecForgeError(f"{key}.kind={settings.get('kind')!r} must be one of {', '.join(KINDS)} (derived "
                                f"from a timestamp), e.g. {key}={{kind:hour}}")
        offset = settings.get("utc_offset_hours", 0.0)
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not -24 < offset < 24:
            raise RecForgeError(f"{key}.utc_offset_hours={offset!r} must be a number of hours between -24 and 24, "
                                "e.g. -5")
        out.append(ContextColumn(str(name), settings["kind"], str(settings.get("column", "timestamp")),
                                 float(offset)))
    return out


def context_names(columns: list[ContextColumn]) -> list[str]:
    """The names of :func:`encode_context`'s columns: ``hour=0`` ... ``hour=23``, ``weekday=Mon`` ..."""
    return [f"{c.name}={v}" for c in columns for v in KINDS[c.kind]]


def checked_times(columns: list[ContextColumn], frame: pd.DataFrame, data: str) -> dict[str, np.ndarray]:
    """Each declared column's timestamps (int64 Unix seconds) of the interactions ``frame``; a column the
    interactions lack, a missing (NaN) or non-numeric value, or a column that is 0 everywhere (a source without
    timestamps) stops with one line naming the key, the data and the fix."""
    out = {}
    for column in columns:
        if column.column in out:
            continue
        if column.column not in frame:
            extra = [c for c in frame.columns if c not in ("user", "item", "rating")]
            raise RecForgeError(f"{column.key}: the {data} interactions have no column {column.column!r}; they carry "
                                f"{extra}; set {column.key}.column to one of them")
        values = pd.to_numeric(frame[column.column], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        missing = np.isnan(values)
        if missing.any():
            raise RecForgeError(f"{column.key}: column {column.column!r} of the {data} interactions has "
                                f"{int(missing.sum())} missing or non-numeric values; give every interaction its "
                                f"time (Unix seconds) or drop {column.key}")
        if len(values) and not values.any():
            raise RecForgeError(f"{column.key}: column {column.column!r} of the {data} interactions is 0 everywhere "
                                "(the data has no timestamps); set data.columns.timestamp (data=custom) or drop "
                                f"{column.key}")
        out[column.column] = values.astype(np.int64)
    return out


def encode_context(columns: list[ContextColumn], times: Mapping[str, np.ndarray]) -> np.ndarray:
    """The float32 ``(n, d)`` one-hot encoding of each row's context from its timestamps (``times``: declared
    column -> int64 Unix seconds of the rows, as :func:`checked_times` gives them), columns named by
    :func:`context_names`."""
    n = len(next(iter(times.values()))) if times else 0
    blocks = []
    for column in columns:
        local = times[column.column] + int(round(column.utc_offset_hours * 3600))
        if column.kind == "hour":
            codes = (local // 3600) % 24
        else:  # 1970-01-01 was a Thursday (Monday = 0)
            codes = (local // 86400 + 3) % 7
        blocks.append(codes[:, None] == np.arange(len(KINDS[column.kind])))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)


def context_at(columns: list[ContextColumn], times: np.ndarray) -> np.ndarray:
    """The ``(n, d)`` context of ``n`` queries made at ``times`` (Unix seconds): every declared column reads the
    query's time (a served request's ``time``)."""
    return encode_context(columns, {c.column: np.asarray(times, np.int64) for c in columns})


def context_json(columns: list[ContextColumn]) -> str:
    """The declaration as JSON (a model bundle's ``context.json``)."""
    return json.dumps([asdict(c) for c in columns], indent=2)


def read_context(path: str | Path) -> list[ContextColumn]:
    """The declaration a ``context.json`` holds; a missing or malformed file is a RecForgeError naming it."""
    try:
        return [ContextColumn(**spec) for spec in json.loads(Path(path).read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError) as exc:
        raise RecForgeError(f"{path}: cannot read the context declaration ({type(exc).__name__}); the file is "
                            f"corrupt or incomplete: copy it again from the model bundle") from None


def request_times(users: np.ndarray, times: np.ndarray, n_users: int) -> np.ndarray:
    """The earliest of each of ``n_users`` users' ``times`` (0 for a user without rows): the time of a user's
    full-ranking query, the moment of its first held-out interaction of the part (exact for leave-one-out, where
    there is one; under a random split, the earliest of the user's held-out times)."""
    none = np.iinfo(np.int64).max
    first = np.full(n_users, none, np.int64)
    np.minimum.at(first, np.asarray(users, np.int64), np.asarray(times, np.int64))
    return np.where(first == none, 0, first)


def pair_times(pair_users: np.ndarray, pair_items: np.ndarray, users: np.ndarray, items: np.ndarray,
               times: np.ndarray, n_items: int) -> np.ndarray:
    """The time of each labelled pair (sorted by user, as :func:`recforge.data.pairs.labelled_pairs` gives them)
    of a part with interactions ``users, items, times``: a pair that is one of the part's interactions takes its
    own time (a repeated pair, its first); a sampled negative takes the time of one of its user's positives, the
    ``k``-th negative of a user the ``k mod m``-th of its ``m`` positives, so each positive's time is shared by as
    many negatives as it was given."""
    keys = np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64)
    own_keys, first = np.unique(keys, return_index=True)
    own_times = np.asarray(times, np.int64)[first]
    wanted = np.asarray(pair_users, np.int64) * n_items + np.asarray(pair_items, np.int64)
    at = np.minimum(np.searchsorted(own_keys, wanted), max(len(own_keys) - 1, 0))
    own = own_keys[at] == wanted if len(own_keys) else np.zeros(len(wanted), bool)
    out = np.zeros(len(wanted), np.int64)
    out[own] = own_times[at[own]]
    other = np.asarray(pair_users, np.int64)[~own]
    if len(other):
        owners = own_keys // n_items
        start, count = np.searchsorted(owners, other), np.searchsorted(owners, other, side="right")
        count = count - start
        if (count == 0).any():
            raise ValueError("a sampled pair's user has no interaction in the part to take its time from")
        group_start = np.searchsorted(other, other)   # ``other`` is sorted by user
        rank = np.arange(len(other)) - group_start
        out[~own] = own_times[start + rank % count]
    return out
