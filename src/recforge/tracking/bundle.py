"""A self-contained model bundle: weights, how to rebuild the model, id maps, seen items, popularity, the
re-ranker the run was tested with (``rerank.pt``, when it had one) and the fitted encoders of its declared features
(``features.json``, when it has them: a new item's raw features are encoded by them) and its context declaration
(``context.json``, when the model reads the interaction's context: a request's time is encoded by it).

Everything needed to answer "top-K items for raw user id u" without the training data or the config.
Loading uses ``torch.load(weights_only=True)``, so no pickled code runs, and the model class ``spec.pt`` names must be
on RecForge's allow-list (:mod:`recforge.utils.trust`), so a bundle cannot name a function to call.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import json
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recforge.data.context import ContextColumn, context_at, context_json, read_context
from recforge.data.declared import FeatureEncoder, encoders_json, read_encoders
from recforge.errors import RecForgeError
from recforge.metrics.ranking import mask_scores_, topk_items
from recforge.models.files import load_model, read_bundle_file
from recforge.utils.sparse import row_pointers
from recforge.utils.trust import import_trusted

RERANK_FILE = "rerank.pt"
FEATURES_FILE = "features.json"
CONTEXT_FILE = "context.json"
ANN_MIN_ITEMS = 100_000  # below this many items a bundle's ANN index is not used: exact ranking costs < ~1 ms


def save_bundle(directory: Path, model: torch.nn.Module, target: str, kwargs: dict[str, Any],
                user_ids: np.ndarray, item_ids: np.ndarray, seen: sp.csr_matrix, meta: dict[str, Any],
                reranker: Any = None, encoders: dict[str, FeatureEncoder] | None = None,
                context: list[ContextColumn] | None = None) -> Path:
    """Write the bundle's files into ``directory``. Tensors are serialised in memory first: torch reports a failed
    file write (a full disk) without its cause, a failed in-memory one cannot happen that way. A ``reranker``
    (:class:`recforge.rerank.Reranker`) is stored as its class and constructor arguments; ``encoders`` (the data's
    fitted :class:`FeatureEncoder` per side, ``RecDataModule.feature_encoders``) as ``features.json``; ``context`` (the
    declared context features, ``RecDataModule.context_columns``) as ``context.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [("spec.pt", {"target": target, "kwargs": kwargs}),
             ("model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})]
    if reranker is not None:
        arguments = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in reranker.arguments().items()}
        files.append((RERANK_FILE, {"target": f"{type(reranker).__module__}.{type(reranker).__qualname__}",
                                    "kwargs": arguments}))
    for name, obj in files:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        (directory / name).write_bytes(buffer.getbuffer())
    pd.DataFrame({"user": user_ids}).to_parquet(directory / "users.parquet")
    pd.DataFrame({"item": item_ids}).to_parquet(directory / "items.parquet")
    sp.save_npz(directory / "seen.npz", seen.tocsr())
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    if encoders:
        (directory / FEATURES_FILE).write_text(encoders_json(encoders), encoding="utf-8")
    if context:
        (directory / CONTEXT_FILE).write_text(context_json(context), encoding="utf-8")
    return directory


@dataclass
class Bundle:
    model: torch.nn.Module
    user_ids: np.ndarray
    item_ids: np.ndarray
    seen: sp.csr_matrix
    popularity: np.ndarray
    meta: dict[str, Any]
    reranker: Any = None  # the run's re-ranker (recforge.rerank), applied to every known user's list
    ann: Any = None  # the ANN index of the model's item vectors (recforge.retrieval.ann.AnnIndex), when it has one
    encoders: dict[str, FeatureEncoder] = field(default_factory=dict)  # fitted encoders of declared user/item features
    context: list[ContextColumn] = field(default_factory=list)  # the declared context features (data.context_columns)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "Bundle":
        """Read a bundle folder (the model by :func:`recforge.models.files.load_model`); a missing, truncated or
        mismatched file is a :class:`RecForgeError` naming it."""
        directory = Path(directory)
        model = load_model(directory, device)
        seen = read_bundle_file(directory / "seen.npz", lambda p: sp.load_npz(p).tocsr())
        popularity = np.asarray(seen.astype(bool).sum(axis=0)).ravel()
        users = read_bundle_file(directory / "users.parquet", lambda p: pd.read_parquet(p)["user"].to_numpy())
        items = read_bundle_file(directory / "items.parquet", lambda p: pd.read_parquet(p)["item"].to_numpy())
        meta = read_bundle_file(directory / "meta.json", lambda p: json.loads(p.read_text()))
        if seen.shape != (len(users), len(items)):
            raise RecForgeError(f"{directory}: seen.npz is {seen.shape[0]} x {seen.shape[1]} but the bundle has "
                                f"{len(users)} users and {len(items)} items; the folder mixes files of two runs")
        encoders = read_encoders(directory / FEATURES_FILE) if (directory / FEATURES_FILE).is_file() else {}
        context = read_context(directory / CONTEXT_FILE) if (directory / CONTEXT_FILE).is_file() else []
        return cls(model, users, items, seen, popularity, meta, load_reranker(directory / RERANK_FILE),
                   load_ann(directory, len(items)), encoders, context)

    @classmethod
    def from_checkpoint(cls, path: str | Path, data_dir: str | None = None, device: str = "cpu") -> "Bundle":
        """A bundle from a Lightning checkpoint of ``recforge-train``: the data is rebuilt from the config the
        checkpoint stores (so the raw data must be reachable, e.g. ``RECFORGE_DATA_DIR``) for the id maps and
        seen items."""
        from recforge.restore import load_checkpoint

        exp = load_checkpoint(path, data_dir)
        dm = exp.datamodule
        if exp.model.reads_histories:  # serve from everything known, as a saved bundle does
            users, items = dm.known_sequences()
            exp.model.set_histories(row_pointers(users, dm.n_users), items)
        seen = dm.seen_matrix()
        exp.module.read_item_vectors()  # a re-ranker on the model's item vectors reads the trained ones
        return cls(exp.model.to(device).eval(), dm.id_maps.users, dm.id_maps.items, seen,
                   np.asarray(seen.astype(bool).sum(axis=0)).ravel(),
                   {"dataset": dm.raw.name, "fingerprint": dm.fingerprint, "feedback": exp.feedback,
                    "checkpoint": str(path)}, exp.module.reranker, encoders=dm.feature_encoders(),
                   context=dm.context_columns)

    def with_items(self, item_ids: np.ndarray, features: np.ndarray) -> "Bundle":
        """A copy with ``item_ids`` appended, which the model scores from their encoded ``features`` alone
        (:meth:`~recforge.models.base.Recommender.add_items`; only models that ``scores_unseen("items")``): the
        model (copied: this bundle's is left as it is, so a service answers from it meanwhile), the id map, the
        seen items and the popularity (no interactions) and the ANN index grow. Not written to disk."""
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            model.add_items(torch.as_tensor(features, dtype=torch.float32))
        n_users, n_items = self.seen.shape
        seen = sp.csr_matrix((self.seen.data, self.seen.indices, self.seen.indptr),
                             shape=(n_users, n_items + len(item_ids)))
        ann = self.ann
        if ann is not None:
            from recforge.retrieval.ann import retrieval_items

            with torch.no_grad():
                ann = ann.extended(retrieval_items(model))
        return dataclasses.replace(self, model=model, item_ids=np.concatenate([self.item_ids, item_ids]), seen=seen,
                                   popularity=np.concatenate([self.popularity, np.zeros(len(item_ids),
                                                                                        self.popularity.dtype)]),
                                   ann=ann)

    @property
    def reads_context(self) -> bool:
        """The model scores a query in its context (the hour and weekday of the request's time)."""
        return bool(self.context) and getattr(self.model, "reads_context", False)

    def query_context(self, n: int, at: float | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
        """``{"context": (n, d)}``: the keyword of ``score_all`` for ``n`` queries made at ``at`` (Unix seconds;
        default: now), or ``{}`` for a model that does not read context."""
        if not self.reads_context:
            return {}
        times = np.full(n, int(time.time() if at is None else at), np.int64)
        return {"context": torch.from_numpy(context_at(self.context, times)).to(device)}

    @cached_property
    def _user_lookup(self) -> pd.Index:  # built once: a batch job looks up every chunk of users in it
        return pd.Index(self.user_ids)

    @cached_property
    def _item_lookup(self) -> pd.Index:
        return pd.Index(self.item_ids)

    @cached_property
    def _popular(self) -> np.ndarray:
        """Item columns by training popularity, most popular first, ties to the lower column."""
        return np.lexsort((np.arange(len(self.popularity)), -self.popularity))

    def user_index(self, users: np.ndarray) -> np.ndarray:
        """Row of each raw user id, -1 for unknown ones (``"12"`` finds the integer id 12 and vice versa)."""
        return _index_of(self._user_lookup, np.asarray(users))

    def item_index(self, items: np.ndarray) -> np.ndarray:
        """Column of each raw item id, -1 for unknown ones (same id coercion as :meth:`user_index`)."""
        return _index_of(self._item_lookup, np.asarray(items))

    def retrieval_index(self, min_items: int = ANN_MIN_ITEMS) -> Any:
        """The ANN index to rank known users with: the bundle's own when it has one and the catalogue has at least
        ``min_items`` items, else ``None`` (exact ranking). ``recforge-serve`` and ``recforge-recommend`` share this
        rule and its flag, ``--ann-min-items``."""
        return self.ann if self.ann is not None and len(self.item_ids) >= min_items else None

    @torch.no_grad()
    def recommend(self, users: np.ndarray, k: int = 10, exclude_seen: bool = True, ann: Any = None,
                  at: float | None = None) -> pd.DataFrame:
        """Top-``k`` items per raw user id: columns user, item, rank (1-based), score, fallback. A model that reads
        context scores the users as if they asked at ``at`` (Unix seconds; default: now).

        Unknown users get the most popular items (``fallback`` is True for them). With ``ann`` (an
        :class:`~recforge.retrieval.ann.AnnIndex` of the model's item vectors, e.g. :meth:`retrieval_index`), known
        users are ranked through it as the service ranks them: each user's query searches ``k`` plus its seen items,
        those are dropped, and the scores are the index's inner products (the model's scores)."""
        users = np.asarray(users)
        index = self.user_index(users)
        known = index >= 0
        k = min(k, len(self.item_ids))
        device = next(iter(self.model.buffers()), next(iter(self.model.parameters()), torch.empty(0))).device
        items = np.empty((len(users), k), dtype=np.int64)
        scores = np.empty((len(users), k), dtype=np.float32)
        if known.any() and ann is not None:
            items[known], scores[known] = self._recommend_ann(ann, index[known], k, exclude_seen, device)
        elif known.any():
            rows = torch.as_tensor(index[known], device=device)
            s = self.model.score_all(rows, **self.query_context(len(rows), at, device)).float()
            if exclude_seen:
                sub = self.seen[index[known]].tocoo()
                mask_scores_(s, torch.as_tensor(sub.row, device=device, dtype=torch.long),
                             torch.as_tensor(sub.col, device=device, dtype=torch.long))
            if self.reranker is None:
                values, top = topk_items(s, k)
            else:
                values, top = topk_items(s, max(k, self.reranker.n_candidates))
                top, values = self.reranker(rows, top, values, k)
            items[known], scores[known] = top.cpu().numpy(), values.cpu().numpy()
        if (~known).any():
            order = self._popular[:k]
            items[~known], scores[~known] = order, self.popularity[order].astype(np.float32)
        return pd.DataFrame({
            "user": np.repeat(users, k),
            "item": self.item_ids[items.ravel()],
            "rank": np.tile(np.arange(1, k + 1), len(users)),
            "score": scores.ravel(),
            "fallback": np.repeat(~known, k),
        }).loc[lambda f: np.isfinite(f["score"])].reset_index(drop=True)


    def _recommend_ann(self, ann: Any, rows: np.ndarray, k: int, exclude_seen: bool, device: torch.device
                       ) -> tuple[np.ndarray, np.ndarray]:
        """``(items, scores)``, ``(len(rows), k)``, of known user rows through ``ann``; unfilled slots: score
        ``-inf`` (dropped from :meth:`recommend`'s frame)."""
        want = max(k, self.reranker.n_candidates) if self.reranker is not None else k
        if exclude_seen:
            seen = self.seen[rows]
            indptr, indices = seen.indptr, seen.indices
        else:
            indptr, indices = np.zeros(len(rows) + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
        queries = self.model.retrieval_queries(torch.as_tensor(rows, device=device))
        values, top = ann.search_excluding(queries, want, indptr, indices)
        top = np.where(top >= 0, top, 0)  # an unfilled slot: any item, at -inf
        if self.reranker is not None:
            top, values = (t.cpu().numpy() for t in self.reranker(
                torch.as_tensor(rows, device=device), torch.from_numpy(top).to(device),
                torch.from_numpy(values).to(device), k))
        return top, values


def load_ann(directory: Path, n_items: int) -> Any:
    """The bundle's ANN index (``ann.faiss``), or ``None`` without one, or when FAISS is not installed (then the
    model is served exactly, with a warning)."""
    import importlib.util

    from recforge.retrieval.ann import INDEX_FILE, AnnIndex

    if not (directory / INDEX_FILE).exists():
        return None
    if importlib.util.find_spec("faiss") is None:
        logging.getLogger("recforge").warning("%s: FAISS is not installed, so the ANN index is not used (exact "
                                              "ranking); pip install 'recforge[ann]'", directory / INDEX_FILE)
        return None
    ann = AnnIndex.load(directory)
    if ann.n_items != n_items:
        raise RecForgeError(f"{directory / INDEX_FILE}: indexes {ann.n_items} items but the bundle has {n_items}; "
                            f"rebuild it: python -m recforge.serving.index --bundle {directory}")
    return ann


def load_reranker(path: Path) -> Any:
    """The re-ranker a bundle's ``rerank.pt`` describes (its class checked against the allow-list first), or
    None when the bundle has none."""
    if not path.is_file():
        return None
    spec = read_bundle_file(path, lambda p: torch.load(p, weights_only=True))
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise RecForgeError(f"{path}: not a RecForge re-ranker spec (no target and kwargs)")
    try:
        return import_trusted(spec.get("target"), str(path))(**spec["kwargs"])
    except (TypeError, ValueError) as exc:
        raise RecForgeError(f"{path}: cannot build {spec['target']} from its stored arguments ({exc})") from None


def _index_of(ids: pd.Index | np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``ids.get_indexer(raw)`` after coercing ``raw`` to the kind of ``ids``: strings that spell an
    integer (``"12"``, not ``"12.0"``) find integer ids, integers find string ids; booleans, floats and anything
    else are unknown (-1). The service (``recforge.serving.core``) applies the same rule to single ids."""
    ids = ids if isinstance(ids, pd.Index) else pd.Index(ids)
    int_ids = ids.dtype.kind in "iu"
    if raw.dtype.kind == "b" or raw.dtype.kind == "f":
        return np.full(len(raw), -1, dtype=np.int64)
    if raw.dtype.kind in "iu":
        return ids.get_indexer(raw if int_ids else raw.astype(str).astype(object))
    coerced = pd.Series(raw, dtype=object).map(lambda v: _coerce_id(v, int_ids))
    known = coerced.notna().to_numpy(bool)
    out = np.full(len(raw), -1, dtype=np.int64)
    if known.any():
        values = coerced[known].to_numpy(np.int64 if int_ids else object)
        out[known] = ids.get_indexer(values)
    return out


def _coerce_id(value, int_ids: bool):
    """One raw id in the ids' kind, or None (see :func:`_index_of`)."""
    if isinstance(value, (bool, np.bool_, float, np.floating)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if int_ids else str(value)
    if isinstance(value, str):
        if not int_ids:
            return value
        return int(value) if _INTEGER.fullmatch(value) else None
    return None


_INTEGER = re.compile(r"[+-]?\d{1,18}")
