"""The NGCF/LightGCN benchmark files (``gowalla``, ``yelp2018``, ``amazon-book``) with their official split.

Xiang Wang et al. 2019. Neural Graph Collaborative Filtering (SIGIR); Xiangnan He et al. 2020. LightGCN
(SIGIR). Gowalla check-ins: Cho, Myers and Leskovec, KDD 2011 (SNAP). Each of ``train.txt`` and
``test.txt`` holds lines ``user item item ...`` with 0-based remapped ids. The interactions carry the
official split as ``part_lightgcn`` (0 train, 2 test); use ``split=predefined split.name=lightgcn``. The
files have no validation part: the predefined split carves one from train (``split.validation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from recforge.data.readers import read_adjacency_lists
from recforge.data.sources.base import PART_PREFIX, FileSource, RawData
from recforge.errors import RecForgeError

LIGHTGCN_URL = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data/{dataset}/{file}"
DATASETS = ("gowalla", "yelp2018", "amazon-book")
# Only Gowalla's test.txt has a checksum we could confirm against two independent copies; the others are
# logged and recorded when downloaded.
KNOWN = {"gowalla": {"test.txt": "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3"}}


class LightGCNData(FileSource):
    """One of the LightGCN benchmark datasets (``dataset``); implicit feedback, no timestamps."""

    def __init__(self, dataset: str = "gowalla", data_dir: str | None = None, cache_dir: str = "data_cache",
                 url: str = LIGHTGCN_URL, verify: bool = True, context_columns: Mapping | None = None) -> None:
        super().__init__(data_dir, cache_dir, verify, context_columns)
        if dataset not in DATASETS:
            raise RecForgeError(f"data.dataset={dataset!r} is not a LightGCN dataset; pick one of {DATASETS}")
        self.dataset, self.name, self.url = dataset, dataset, url
        self.known_checksums = KNOWN.get(dataset, {})
        self._folder: Path | None = None

    def spec(self) -> dict:
        return {k: v for k, v in super().spec().items() if k not in ("url", "known_checksums")}

    def raw_files(self) -> dict[str, Path]:
        if self._folder is None:
            local = self.find_local((f"{self.dataset}-lightgcn", self.dataset), "train.txt")
            if local is None:
                for file in ("train.txt", "test.txt"):
                    path = self.fetch_file(self.url.format(dataset=self.dataset, file=file),
                                           f"{self.dataset}-lightgcn", file,
                                           self.known_checksums.get(file) if self.verify else None)
                local = path.parent
            self._folder = local
        files = {n: self._folder / n for n in ("train.txt", "test.txt")}
        if not files["test.txt"].is_file():
            raise RecForgeError(f"{self._folder} has train.txt but no test.txt; add it (both are needed)")
        return files

    def load(self) -> RawData:
        checksums = self.checksums()
        files = self.raw_files()
        parts = []
        for label, name in ((0, "train.txt"), (2, "test.txt")):
            users, items = read_adjacency_lists(files[name])
            if len(users) == 0:
                raise RecForgeError(f"{files[name]}: no interactions (only user ids or blank lines)")
            parts.append(pd.DataFrame({"user": users, "item": items, PART_PREFIX + "lightgcn": np.int8(label)}))
        frame = pd.concat(parts, ignore_index=True)
        frame.insert(2, "rating", np.float32(1.0))
        frame.insert(3, "timestamp", np.int64(0))
        return RawData(self.name, frame, rating_range=None, checksums=checksums)
