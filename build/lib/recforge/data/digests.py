"""File digests, memoised: a raw file is hashed once while its path, size and modification time stay the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from recforge.data.readers import check_readable
from recforge.utils.io import atomic_write_text

_MEMO_NAME = "file_digests.json"


def file_digest(path: Path, memo_dir: Path | None = None, algorithm: str = "sha256") -> str:
    """The digest of ``path``, memoised by (path, size, mtime) in ``memo_dir`` so unchanged files hash once.

    ``algorithm`` is ``sha256`` or ``git-blob`` (the SHA-1 ``git hash-object`` prints).
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{algorithm}:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    memo: dict[str, str] = {}
    memo_file = Path(memo_dir) / _MEMO_NAME if memo_dir is not None else None
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key]
    if algorithm == "git-blob":
        digest = hashlib.sha1(f"blob {stat.st_size}\0".encode())
    else:
        digest = hashlib.sha256()
    check_readable(path)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    value = digest.hexdigest()
    if memo_file is not None:
        memo[key] = value
        try:
            atomic_write_text(memo_file, json.dumps(memo))
        except OSError:  # a read-only cache only costs speed
            pass
    return value
