"""Fetch a publisher's archive into a cache, verify it, and extract it atomically."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recforge.errors import RecForgeError
from recforge.utils.io import atomic_path, sha256_file


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically), verifying ``sha256`` when given. Returns ``dest``."""
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    digest = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            expected = response.headers.get("Content-Length")
            received = 0
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                received += len(block)
            out.flush()
            if expected is not None and received != int(expected):
                raise RecForgeError(f"download of {url} was cut off ({received} of {expected} bytes); try again")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise RecForgeError(
                    f"checksum mismatch for {url}: got sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the download is corrupted or the publisher changed the file"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        if isinstance(exc, RecForgeError):
            raise
        raise RecForgeError(
            f"could not download {url} ({exc}); without network access put the raw files in a folder and set "
            "paths.data_dir=<folder> or RECFORGE_DATA_DIR"
        ) from None
    return dest


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` via a temporary folder renamed into place."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecForgeError(f"{archive} is not a valid zip archive (corrupted download); it was removed, try again") from None
    tmp.rename(dest)
    return dest
