"""Small file helpers: atomic writes, writable folders and checksums."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from recforge.errors import RecForgeError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}   # EFBIG: a file size limit (ulimit -f) was reached


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is in the same folder (a rename within one file system is atomic, while a move from another
    file system is a copy that truncates ``path`` first) and is flushed to disk before the rename. Readers, and a
    run after a crash, see the old file or the new one, never a part of one. A failure (a full disk, a kill) leaves
    the old file as it was; only a killed process leaves its hidden temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _beside(path)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))   # the mode a plain write gives
    try:
        with naming(path):
            yield tmp_path
            fsync(tmp_path)
            os.replace(tmp_path, path)
            fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; if the block succeeds it takes the place of ``path``.

    Its files are flushed to disk and the folder renamed into place, replacing a folder there before. Readers see
    the old folder or the complete new one (between the two renames of a replacement the old one is at
    ``.<name>.<random>.old``). A failure leaves ``path`` as it was; only a killed process leaves a hidden temporary
    folder behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path)
    old = tmp.with_suffix(".old")
    tmp.mkdir()   # the mode a plain mkdir gives (mkdtemp's is private)
    try:
        with naming(path):
            yield tmp
            for item in [*tmp.rglob("*"), tmp]:
                fsync(item)
            if path.exists():
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except OSError:
                    os.replace(old, path)
                    raise
            else:
                os.replace(tmp, path)
            fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_append_text(path: str | os.PathLike, text: str) -> None:
    """Add ``text`` at the end of ``path`` (created if missing) as one atomic replacement, under an exclusive lock
    on its folder: processes appending to one file at once each add their text, none lost (a plain read, then
    ``atomic_write_text``, could drop a text written between the two); a reader sees the file before or after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        previous = path.read_text(encoding="utf-8") if path.is_file() else ""
        atomic_write_text(path, previous + text)
    finally:
        os.close(folder)   # closing the descriptor releases the lock


def _beside(path: Path) -> Path:
    """A new hidden name in the folder of ``path``, for a temporary file or folder."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """A full disk met in the block names ``path`` (a failed ``write`` names no file)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL and exc.filename is None:
            exc.filename = str(path)
        raise


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (the names just renamed into it), to disk."""
    if os.name != "posix" and Path(path).is_dir():  # only POSIX systems open a folder
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writable_folder(path: str | os.PathLike, key: str) -> Path:
    """``path`` as a folder, created if missing, after a test write; a :class:`RecForgeError` naming ``key`` and the
    fix when it cannot be written (read-only, not a folder), before anything else is written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise RecForgeError(f"{key}={path} cannot be written ({exc.strerror}): fix its permissions or set {key} "
                            "to a folder you can write") from None
    return path


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
