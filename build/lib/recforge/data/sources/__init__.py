"""Dataset sources: each turns raw files (or a generator) into one interactions table."""

from recforge.data.sources.base import RawData, Source

__all__ = ["RawData", "Source"]
