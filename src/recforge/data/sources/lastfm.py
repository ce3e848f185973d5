"""Last.fm HetRec 2011 (``hetrec2011-lastfm-2k``): 92,834 (user, artist, play count) rows.

Iván Cantador, Peter Brusilovsky and Tsvi Kuflik. 2011. 2nd Workshop on Information Heterogeneity and
Fusion in Recommender Systems (HetRec 2011), RecSys 2011. For non-commercial use; cite Last.fm and HetRec.
The play count (``weight``) is the interaction's rating: a strength of implicit feedback, not a rating scale
(``rating_range`` is None). Files are tab-separated with a header and CRLF line endings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from recforge.data.readers import read_delimited, read_table, standardise
from recforge.data.sources.base import FileSource, RawData

LASTFM_URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
LASTFM_SHA256 = {
    "user_artists.dat": "001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b",
    "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
}


class LastFMHetRec(FileSource):
    """Reads ``user_artists.dat`` (and ``artists.dat`` names as item features when ``features``)."""

    name = "lastfm-hetrec"
    known_checksums = LASTFM_SHA256

    def __init__(self, data_dir: str | None = None, cache_dir: str = "data_cache", url: str = LASTFM_URL,
                 verify: bool = True, features: bool = True, context_columns: Mapping | None = None) -> None:
        super().__init__(data_dir, cache_dir, verify, context_columns)
        self.url, self.features = url, features
        self._folder: Path | None = None

    def spec(self) -> dict:
        return {k: v for k, v in super().spec().items() if k != "url"}

    def raw_files(self) -> dict[str, Path]:
        if self._folder is None:
            self._folder = (self.find_local(("hetrec2011-lastfm-2k", "lastfm-hetrec", "lastfm"), "user_artists.dat")
                            or self.fetch_zip(self.url, "hetrec2011-lastfm-2k", "user_artists.dat"))
        names = ["user_artists.dat"] + (["artists.dat"] if self.features else [])
        return {n: self._folder / n for n in names}

    def load(self) -> RawData:
        checksums = self.checksums()
        files = self.raw_files()
        frame = read_table(files["user_artists.dat"], {"user": "userID", "item": "artistID", "rating": "weight"},
                           fmt="tsv", header=True)
        frame = standardise(frame).astype({"user": np.int64, "item": np.int64})
        items = None
        if self.features and files["artists.dat"].is_file():
            items = read_delimited(files["artists.dat"], "\t", ["item", "name", "url", "picture_url"], numeric=["item"],
                                   header=True, allow_empty=True)
            items = items[["item", "name"]].astype({"item": np.int64}).set_index("item")
        return RawData(self.name, frame, rating_range=None, checksums=checksums, item_features=items,
                       origin=str(files["user_artists.dat"]))
