"""What every dataset source returns, and the helpers file-based sources share.

A source finds its raw files (a local folder under ``paths.data_dir``, else a cache of the publisher's
download), verifies what checksums are known, and returns one :class:`RawData` table with raw ids.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol

import pandas as pd

from recforge.data.context import DeclaresContext
from recforge.data.digests import file_digest
from recforge.errors import RecForgeError

COLUMNS = ("user", "item", "rating", "timestamp")
PART_PREFIX = "part_"  # interaction columns holding a dataset's official split: 0 train, 1 val, 2 test, -1 none
log = logging.getLogger("recforge")


@dataclass
class RawData:
    """One interactions table with raw ids.

    ``interactions`` has the columns ``user``, ``item`` (raw ids, any hashable dtype), ``rating`` (float32;
    1.0 for purely implicit data) and ``timestamp`` (int64 seconds; 0 where the data has none), plus
    ``part_<name>`` int8 columns when the dataset ships official splits (0 train, 1 val, 2 test, -1 in
    neither). ``user_features`` / ``item_features`` are optional frames indexed by raw id.
    ``checksums`` maps each raw file (or generator setting) to a digest, so caches and split fingerprints
    change whenever the data does. ``origin`` is the file the interactions were read from (named in messages;
    empty for generated data). On a cache hit the datamodule does not read the raw files again, and
    ``interactions`` is then an empty frame with the standard columns.
    """

    name: str
    interactions: pd.DataFrame
    rating_range: tuple[float, float] | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    user_features: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    origin: str = ""

    @property
    def predefined_splits(self) -> list[str]:
        return [c[len(PART_PREFIX):] for c in self.interactions.columns if c.startswith(PART_PREFIX)]


class Source(Protocol):
    name: str

    def load(self) -> RawData: ...


class FileSource(DeclaresContext):
    """Shared behaviour of sources backed by raw files: locating, downloading, verifying, digests.

    Subclasses set ``name``, implement :meth:`raw_files` (the files whose content determines the data, after
    locating or downloading them) and :meth:`load`. ``context_columns`` (``data.context_columns``) declares
    context features of the interactions (:mod:`recforge.data.context`).
    """

    name = "files"
    # relative file name -> SHA-256 (or ("git-blob", sha1)) of files whose published content is known
    known_checksums: dict[str, str | tuple[str, str]] = {}

    def __init__(self, data_dir: str | None = None, cache_dir: str = "data_cache", verify: bool = True,
                 context_columns: Mapping | None = None) -> None:
        self.declare_context(context_columns)
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.verify = verify

    # what identifies this source's content besides its files (cache keys); paths are left out on purpose
    def spec(self) -> dict:
        return {k: str(v) for k, v in sorted(vars(self).items())
                if not k.startswith("_") and k not in ("data_dir", "cache_dir") and not callable(v)} | {"class": type(self).__name__}

    def raw_files(self) -> dict[str, Path]:  # pragma: no cover - abstract
        raise NotImplementedError

    def checksums(self) -> dict[str, str]:
        """SHA-256 of every raw file (memoised), after verifying the known ones."""
        files = self.raw_files()
        out = {}
        for rel, path in files.items():
            out[rel] = file_digest(path, self.cache_dir)
            if self.verify:
                self._verify(rel, path, out[rel])
        return out

    def _verify(self, rel: str, path: Path, sha256: str) -> None:
        known = self.known_checksums.get(rel)
        if known is None:
            log.info("%s: sha256 %s (no published checksum to compare with; recorded)", path, sha256)
            return
        if isinstance(known, tuple):
            algorithm, expected = known
            observed = file_digest(path, self.cache_dir, algorithm)
        else:
            algorithm, expected, observed = "sha256", known, sha256
        if observed != expected:
            self._discard_download(path)
            raise RecForgeError(
                f"{path}: checksum mismatch ({algorithm} {observed}, expected {expected}); the file is corrupted, "
                "truncated or not the published release. Delete it and download it again (or replace the copy in "
                "paths.data_dir), or set data.verify=false to use it anyway"
            )

    def _discard_download(self, path: Path) -> None:
        """A downloaded file failed verification: remove it (and its extracted folder and archive)."""
        import shutil

        raw_root = (self.cache_dir / "raw").resolve()
        resolved = Path(path).resolve()
        if raw_root not in resolved.parents:
            return  # a user's local copy: never touched
        folder = raw_root / resolved.relative_to(raw_root).parts[0]
        shutil.rmtree(folder, ignore_errors=True)
        archive = getattr(self, "_archive", None)
        if archive is not None:
            Path(archive).unlink(missing_ok=True)
            Path(str(archive) + ".sha256").unlink(missing_ok=True)

    def find_local(self, folder_names: Iterable[str], required: str) -> Path | None:
        """The first ``<data_dir>/<folder>`` (or ``<data_dir>`` itself) holding ``required``."""
        if self.data_dir is None:
            return None
        self._searched = ([self.data_dir / f for f in folder_names] + [self.data_dir], required)
        for candidate in self._searched[0]:
            if (candidate / required).is_file():
                return candidate
        for candidate in [self.data_dir / f for f in folder_names]:
            if candidate.is_dir():
                raise RecForgeError(
                    f"{candidate} has no {required}; add the file (the complete release), or unset paths.data_dir "
                    "(RECFORGE_DATA_DIR) so RecForge downloads it into paths.cache_dir"
                )
        return None

    def fetch_zip(self, url: str, folder: str, required: str, archive_sha256: str | None = None) -> Path:
        """Download and extract ``url`` into ``<cache_dir>/raw/<folder>``; return the folder with ``required``."""
        from recforge.data.download import download, extract_zip

        dest = self.cache_dir / "raw" / folder
        found = _find_file(dest, required)
        if found is not None:
            return found
        with self._searched_first():
            archive = download(url, self.cache_dir / "downloads" / url.rsplit("/", 1)[-1], archive_sha256,
                               memo_dir=self.cache_dir)
        self._archive = archive
        extract_zip(archive, dest)
        found = _find_file(dest, required)
        if found is None:
            import shutil

            shutil.rmtree(dest, ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise RecForgeError(f"{archive}: the archive from {url} has no {required}; it was removed, try again")
        return found

    def fetch_file(self, url: str, folder: str, filename: str, sha256: str | None = None) -> Path:
        from recforge.data.download import download

        dest = self.cache_dir / "raw" / folder / filename
        if dest.is_file():
            return dest
        with self._searched_first():
            return download(url, dest, sha256, memo_dir=self.cache_dir)

    @contextmanager
    def _searched_first(self):
        """A failed download after a local folder was searched in vain also says where and for what it looked."""
        try:
            yield
        except RecForgeError as exc:
            searched = getattr(self, "_searched", None)
            if searched is None:
                raise
            folders, required = searched
            raise RecForgeError(f"paths.data_dir={self.data_dir} (RECFORGE_DATA_DIR) has no {required} in "
                                f"{' or '.join(map(str, folders))}, so RecForge tried to download it: {exc}") from None


def _find_file(root: Path, name: str) -> Path | None:
    if not root.is_dir():
        return None
    if (root / name).is_file():
        return root
    for dirpath, _, filenames in os.walk(root):
        if name in filenames:
            return Path(dirpath)
    return None
