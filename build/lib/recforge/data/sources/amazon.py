"""Amazon Review Data (2018), 5-core files per category (``<Category>_5.json.gz``, JSON Lines).

Jianmo Ni, Jiacheng Li and Julian McAuley. 2019. Justifying Recommendations using Distantly-Labeled
Reviews and Fine-Grained Aspects. EMNLP 2019. The files can hold the same (reviewer, item) pair more than
once: keep a ``Deduplicate`` step in ``datamodule.preprocess`` (the default does).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from recforge.data.readers import read_json_lines, standardise
from recforge.data.sources.base import FileSource, RawData

AMAZON_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz"
KNOWN = {"All_Beauty_5.json.gz": "4a6b1eb40c4f58328f3f34181a6ef00f8e3423d801128617cc408a83c9bd0027"}
FIELDS = {"user": ("reviewerID", pa.string()), "item": ("asin", pa.string()), "rating": ("overall", pa.float64()),
          "timestamp": ("unixReviewTime", pa.int64())}


class Amazon2018(FileSource):
    """One category's 5-core review file: ratings 1-5 with review times (seconds)."""

    name = "amazon-2018"
    known_checksums = KNOWN

    def __init__(self, category: str = "All_Beauty", data_dir: str | None = None, cache_dir: str = "data_cache",
                 url: str = AMAZON_URL, verify: bool = True) -> None:
        super().__init__(data_dir, cache_dir, verify)
        self.category, self.url = category, url
        self.name = f"amazon-2018-{category}"
        self._path: Path | None = None

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
        frame = standardise(read_json_lines(path, FIELDS))
        return RawData(self.name, frame, rating_range=(1.0, 5.0), checksums=checksums, origin=str(path))
