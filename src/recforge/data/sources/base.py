"""What every dataset source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class RawData:
    """One interactions table with raw ids.

    ``interactions`` has the columns ``user``, ``item`` (raw ids, any hashable dtype), ``rating`` (float32;
    1.0 for purely implicit data) and ``timestamp`` (int64 seconds; 0 where the data has none).
    ``checksums`` maps each raw file (or generator setting) to a digest, so caches and split fingerprints
    change whenever the data does.
    """

    name: str
    interactions: pd.DataFrame
    rating_range: tuple[float, float] | None = None
    checksums: dict[str, str] = field(default_factory=dict)


class Source(Protocol):
    name: str

    def load(self) -> RawData: ...
