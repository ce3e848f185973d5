"""Fetch a publisher's file into a cache, verify it, and extract it atomically.

A download is written to a temporary file and renamed into place only when it is complete (the
``Content-Length`` was received) and its SHA-256 matches the known one; files whose checksum is not
published get their observed SHA-256 logged and recorded beside them (``<file>.sha256``). A failed or
corrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from recforge.data.digests import file_digest
from recforge.errors import RecForgeError
from recforge.utils.io import atomic_path, atomic_write_text

log = logging.getLogger("recforge")


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0,
             memo_dir: Path | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically), verifying ``sha256`` when given. Returns ``dest``."""
    dest = Path(dest)
    if dest.is_file():
        if sha256 is None:
            return dest
        if file_digest(dest, memo_dir) == sha256:
            return dest
    digest = hashlib.sha256()
    log.info("downloading %s", url)
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
            if received == 0:
                raise RecForgeError(f"download of {url} returned no data; try again later")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise RecForgeError(
                    f"checksum mismatch for {url}: got sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the download is corrupted or the publisher changed the file (nothing was kept; try again)"
                )
    except RecForgeError:
        raise
    except http.client.IncompleteRead as exc:
        raise RecForgeError(f"download of {url} was cut off ({len(exc.partial)} bytes received, connection closed); "
                            "nothing was kept, try again") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as exc:
        raise RecForgeError(
            f"could not download {url} ({exc}); without network access put the raw files in a folder and set "
            "paths.data_dir=<folder> or RECFORGE_DATA_DIR"
        ) from None
    if sha256 is None:
        log.info("%s: sha256 %s (no published checksum; recorded in %s.sha256)", dest, digest.hexdigest(), dest.name)
        atomic_write_text(dest.with_name(dest.name + ".sha256"), f"{digest.hexdigest()}  {dest.name}\n")
    return dest


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` via a temporary folder renamed into place.

    A corrupted archive (bad zip structure or a CRC error in a member) is removed so the next run downloads
    it again, and nothing is left in ``dest``.
    """
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise RecForgeError(f"{archive}: unsafe member path {member!r}; the archive was removed")
            zf.extractall(tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError, RecForgeError) as exc:
        archive.unlink(missing_ok=True)
        archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, RecForgeError):
            raise
        raise RecForgeError(f"{archive} is not a valid zip archive ({exc}; corrupted or truncated download); "
                            "it was removed, try again") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    return dest
