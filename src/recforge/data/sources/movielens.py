"""MovieLens 100K (GroupLens): 100,000 ratings 1-5 from 943 users on 1,682 movies.

F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context.
ACM TiiS 5(4):19. The licence forbids redistribution: RecForge reads a local copy or downloads it from
GroupLens, and never ships it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recforge.data.download import download, extract_zip
from recforge.data.readers import read_delimited
from recforge.data.sources.base import RawData
from recforge.errors import RecForgeError
from recforge.utils.io import sha256_file

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# SHA-256 of the files inside the GroupLens release (checked against several independent copies).
ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
}


class MovieLens100K:
    """Reads ``u.data`` from ``data_dir`` (``<data_dir>/ml-100k/`` or ``<data_dir>/`` itself) when present,
    else downloads the GroupLens archive into ``cache_dir``. ``verify`` checks the file's SHA-256."""

    name = "ml-100k"

    def __init__(self, data_dir: str | None = None, cache_dir: str = "data_cache", url: str = ML100K_URL,
                 verify: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.url = url
        self.verify = verify

    def raw_dir(self) -> Path:
        if self.data_dir is not None:
            for candidate in (self.data_dir / "ml-100k", self.data_dir):
                if (candidate / "u.data").is_file():
                    return candidate
        cached = self.cache_dir / "ml-100k"
        if (cached / "u.data").is_file():
            return cached
        archive = download(self.url, self.cache_dir / "ml-100k.zip")
        extracted = extract_zip(archive, self.cache_dir / "ml-100k.extracted")
        inner = extracted / "ml-100k"
        if not (inner / "u.data").is_file():
            raise RecForgeError(f"{archive}: archive has no ml-100k/u.data; remove it and try again")
        inner.rename(cached)
        return cached

    def load(self) -> RawData:
        folder = self.raw_dir()
        path = folder / "u.data"
        digest = sha256_file(path)
        if self.verify and digest != ML100K_SHA256["u.data"]:
            raise RecForgeError(
                f"{path}: checksum mismatch (sha256 {digest}); the file is corrupted or not the GroupLens "
                "release. Replace it, or set data.verify=false to use it anyway"
            )
        frame = read_delimited(path, "\t", ["user", "item", "rating", "timestamp"],
                               numeric=["user", "item", "rating", "timestamp"])
        frame = frame.astype({"user": np.int64, "item": np.int64, "rating": np.float32, "timestamp": np.int64})
        return RawData(self.name, frame, rating_range=(1.0, 5.0), checksums={"u.data": digest})
