"""The request path of the service: one user's scores, seen-item masking, allow/deny filtering, top-K.

Per request: one ``score_all`` row (torch), then masking, filtering and top-K as vectorised numpy on that
row (on a single row of a few thousand items, numpy's few calls cost ~30 us where the equivalent torch ops
cost ~400 us of per-op overhead). The id maps are dicts, so a lookup is O(1). Ranking ties go to the lower
item index, exactly as :func:`recforge.metrics.ranking.topk_items` and :meth:`Bundle.recommend`, so the
service, the batch job and the MLflow model agree.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from recforge.errors import RecForgeError
from recforge.serving.registry import ModelRef
from recforge.tracking.bundle import ANN_MIN_ITEMS, FEATURES_FILE, Bundle

# the full score matrix for the score cache: above this many scores, compute in user chunks of this size
_SCORE_CHUNK = 1 << 22
MAX_REASONS = 100  # reasons per explained item a request may ask for
HISTORY_MODELS = ("sequential: SASRec, SASRecF, GRU4Rec, BERT4Rec, Caser; item-item: EASE, ItemKNN, SLIM, RP3beta; "
                  "autoencoders: Mult-VAE, RecVAE")
# the model options that score items from their features (recforge.pipeline's FEATURE_MODELS + ITEM_FEATURE_MODELS)
ITEM_FEATURE_MODELS = "model=fm, deepfm, dcnv2, widedeep, autoint, din, twotower, sasrecf"


_INTEGER = re.compile(r"[+-]?\d{1,18}")


def shown(value: Any, limit: int = 64) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a message or the request log may echo of an input."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's 4,300-digit str() limit
        text = "<a very long integer>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class InvalidRequest(ValueError):
    """A request the client must fix (unknown item, ``k`` out of range); the service answers 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _lookup_table(ids: np.ndarray) -> tuple[dict[Any, int], bool]:
    return {raw: i for i, raw in enumerate(ids.tolist())}, ids.dtype.kind in "iu"


def _find(table: dict[Any, int], int_ids: bool, raw: Any) -> int | None:
    """Row of a raw id; ``"12"`` finds the integer id 12 and ``12`` the string id ``"12"``; booleans and floats
    are unknown (the same rule as ``Bundle.user_index``, so service, batch job and MLflow model agree)."""
    if isinstance(raw, (bool, float, np.bool_, np.floating)):
        return None
    row = table.get(raw)
    if row is None:
        if int_ids and isinstance(raw, str):
            return table.get(int(raw)) if _INTEGER.fullmatch(raw) else None
        if not int_ids and isinstance(raw, (int, np.integer)):
            row = table.get(str(raw))
    return row


def topk_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(indices, values)`` of one score row, highest first, ties by LOWER index (also at the k
    boundary): exactly :func:`recforge.metrics.ranking.topk_items`'s order, without its per-op overhead on a
    single row. ``-inf`` entries (masked items) are dropped, so fewer than ``k`` may come back."""
    n = scores.shape[0]
    k = min(k, n)
    if k < n:
        threshold = -np.partition(-scores, k - 1)[k - 1]  # the k-th largest score
        candidates = np.flatnonzero(scores >= threshold)  # every item that can be in the top k, index order
    else:
        candidates = np.arange(n)
    values = scores[candidates]
    order = np.lexsort((candidates, -values))[:k]  # score desc, then index asc
    top, values = candidates[order], values[order]
    finite = np.isfinite(values)
    return (top, values) if finite.all() else (top[finite], values[finite])


def _filtered(scores: np.ndarray, allow: np.ndarray | None, deny: np.ndarray | None) -> np.ndarray:
    """``scores`` with every column outside ``allow`` (when given) and in ``deny`` set to ``-inf``."""
    if allow is not None:
        kept = np.full_like(scores, -np.inf)
        kept[allow] = scores[allow]
        scores = kept
    if deny is not None:
        scores[deny] = -np.inf
    return scores


class ServedModel:
    """A loaded bundle prepared for single-user requests (immutable once built; swapped whole on reload)."""

    def __init__(self, bundle: Bundle, ref: ModelRef, score_cache_bytes: int = 0,
                 ann_min_items: int = ANN_MIN_ITEMS) -> None:
        """``score_cache_bytes``: when the full known-user x item score matrix (float32) fits in this many
        bytes, it is computed once here (``score_all`` in chunks) and a request copies its user's row instead
        of calling ``score_all`` (~5 us instead of ~60-100 us of torch per-call overhead on a small model);
        0 turns the cache off.

        ``ann_min_items``: a bundle with an ANN index (``bundle.ann``) answers known users through it when the
        catalogue has at least this many items (then there is no score cache); smaller catalogues are ranked
        exactly. Requests with ``allow_items`` score the allowed items exactly either way. Session requests
        (``history``) go through the index too when the model turns a history into a query vector
        (``history_queries``: the sequential models)."""
        self.bundle, self.ref = bundle, ref
        self.model = bundle.model
        self.n_items = len(bundle.item_ids)
        self.n_users = len(bundle.user_ids)
        self._users, self._int_users = _lookup_table(bundle.user_ids)
        self._rows = torch.arange(self.n_users)  # a slice of it is the (1,) index tensor of a request's user
        self._items, self._int_items = _lookup_table(bundle.item_ids)
        self.item_ids: list[Any] = bundle.item_ids.tolist()
        seen = bundle.seen.tocsr()
        self._seen_indptr = seen.indptr.astype(np.int64)
        self._seen_indices = seen.indices.astype(np.int64)
        self._popularity = bundle.popularity.astype(np.float32)
        self.reranker = bundle.reranker  # the run's re-ranker: known users' lists are re-ranked as they were tested
        self._vectors: np.ndarray | None = None
        self._vectors_lock = threading.Lock()
        self._explainer = None  # built on the first request that asks for explanations
        self._explainer_lock = threading.Lock()
        self.similar_source = "item_vectors" if self._raw_item_vectors() is not None else "score_columns"
        self.ann = bundle.retrieval_index(ann_min_items)
        self._score_cache = None   # none for a model that reads context: a request's scores follow its time
        if self.ann is None and not bundle.reads_context and 0 < 4 * self.n_users * self.n_items <= score_cache_bytes:
            self._score_cache = self._all_scores()
        self.loaded_at = time.time()
        self.added_items = 0  # items added while serving (POST /admin/items), not in the loaded bundle

    @torch.inference_mode()
    def _all_scores(self) -> np.ndarray:
        step = max(1, _SCORE_CHUNK // max(self.n_items, 1))
        return torch.cat([self.model.score_all(chunk).float() for chunk in self._rows.split(step)]).numpy()

    # ids -------------------------------------------------------------------------------------------------------
    def user_row(self, raw: Any) -> int | None:
        return _find(self._users, self._int_users, raw)

    def catalogue_id(self, raw: Any) -> Any:
        """A known item id as the catalogue holds it (the path's ``"50"`` is the integer 50 when ids are integers)."""
        column = _find(self._items, self._int_items, raw)
        return raw if column is None else self.item_ids[column]

    def item_columns(self, raw_items: Sequence[Any], field: str) -> np.ndarray:
        """Columns of raw item ids; an unknown id is a 400 naming ``field`` and the id."""
        columns = [_find(self._items, self._int_items, raw) for raw in raw_items]
        unknown = [raw for raw, col in zip(raw_items, columns) if col is None]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InvalidRequest(f"{field}: unknown item id(s) {shown}; use ids of the model's catalogue "
                                 f"({self.n_items} items)")
        return np.asarray(columns, dtype=np.int64)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.n_items:
            raise InvalidRequest(f"k={k} is out of range; use 1 <= k <= {self.n_items} (the catalogue size)")

    # requests --------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def recommend(self, user: Any, k: int = 10, exclude_seen: bool = True, allow_items: Sequence[Any] | None = None,
                  deny_items: Sequence[Any] | None = None, at: float | None = None
                  ) -> tuple[list[Any], list[float], bool]:
        """Top-``k`` ``(items, scores, fallback)`` for one raw user id; an unknown user gets the most popular
        items with ``fallback`` true, scored by their number of training interactions: a count, not on the scale
        of the model's scores (the batch job and the MLflow model answer the same). Fewer than ``k`` items come
        back when filtering leaves fewer candidates. A model that reads context scores the request at ``at`` (Unix
        seconds; default: now)."""
        self.check_k(k)
        allow = self.item_columns(allow_items, "allow_items") if allow_items is not None else None
        deny = self.item_columns(deny_items, "deny_items") if deny_items else None
        row = self.user_row(user)
        if row is not None and self.ann is not None and allow is None:
            return self._recommend_ann(row, k, exclude_seen, deny) + (False,)
        if row is None:
            scores = self._popularity.copy()
        else:
            if self._score_cache is not None:
                scores = self._score_cache[row].copy()
            else:
                scores = self.model.score_all(self._rows[row:row + 1], **self.bundle.query_context(1, at))[0]
                scores = (scores if scores.dtype == torch.float32 else scores.float()).numpy().copy()
            if exclude_seen:
                scores[self._seen_indices[self._seen_indptr[row]:self._seen_indptr[row + 1]]] = -np.inf
        scores = _filtered(scores, allow, deny)
        rerank = self.reranker is not None and row is not None
        top, values = topk_row(scores, max(k, self.reranker.n_candidates) if rerank else k)
        if rerank and len(top):
            top, values = (t[0].numpy() for t in self.reranker(self._rows[row:row + 1], torch.from_numpy(top)[None],
                                                               torch.from_numpy(values)[None], k))
        return [self.item_ids[i] for i in top.tolist()], values.tolist(), row is None

    def _recommend_ann(self, row: int, k: int, exclude_seen: bool, deny: np.ndarray | None
                       ) -> tuple[list[Any], list[float]]:
        """Top-``k`` of a known user through the ANN index: ``k`` plus the user's seen and denied items are
        searched, those are dropped, and the index's inner products (the model's scores) come back."""
        drop = self._seen_indices[self._seen_indptr[row]:self._seen_indptr[row + 1]] if exclude_seen else \
            np.empty(0, dtype=np.int64)
        want = max(k, self.reranker.n_candidates) if self.reranker is not None else k
        items, scores = self._search(self.model.retrieval_queries(self._rows[row:row + 1]), want, drop, deny)
        if self.reranker is not None and len(items):
            items, scores = (t[0].numpy() for t in self.reranker(self._rows[row:row + 1], torch.from_numpy(items)[None],
                                                                 torch.from_numpy(scores)[None], k))
        return [self.item_ids[i] for i in items.tolist()], scores.tolist()

    def _search(self, query: torch.Tensor, k: int, drop: np.ndarray, deny: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(items, scores)`` of one query through the index without ``drop`` and ``deny`` (fewer than ``k`` when
        the index fills fewer slots); :meth:`AnnIndex.search_excluding` sizes the search as ``recforge-recommend``
        does, so the two answer a user alike."""
        if deny is not None:
            drop = np.concatenate([drop, deny])
        scores, items = self.ann.search_excluding(query, k, np.array([0, len(drop)]), drop)
        keep = items[0] >= 0
        return items[0][keep], scores[0][keep]

    @torch.inference_mode()
    def recommend_history(self, history: Sequence[Any], k: int = 10, exclude_seen: bool = True,
                          allow_items: Sequence[Any] | None = None, deny_items: Sequence[Any] | None = None
                          ) -> tuple[list[Any], list[float], bool, int]:
        """Top-``k`` ``(items, scores, fallback, unknown)`` for an anonymous user known by ``history`` (raw item ids,
        oldest first): the model's :meth:`score_histories` of the known items, with ``exclude_seen`` leaving the
        history's items out. Unknown ids are dropped and their number is ``unknown``; a history with no known item
        gets the most popular items with ``fallback`` true, as an unknown user does. The run's re-ranker is not
        applied (it reads known users). A model that cannot score a history is a 400 naming the models that can.
        With an ANN index in use and a model that encodes a history as a query vector (``history_queries``: the
        sequential models), the history is answered through the index (unless ``allow_items`` is given): ``k`` plus
        the history's and denied items are searched and those dropped, as for a known user."""
        if not getattr(self.model, "answers_histories", False):
            raise InvalidRequest(f"history: {type(self.model).__name__} cannot score a history without a user; send "
                                 f"a user id, or serve a model that can ({HISTORY_MODELS})")
        self.check_k(k)
        allow = self.item_columns(allow_items, "allow_items") if allow_items is not None else None
        deny = self.item_columns(deny_items, "deny_items") if deny_items else None
        columns = [_find(self._items, self._int_items, raw) for raw in history]
        known = np.asarray([c for c in columns if c is not None], dtype=np.int64)
        unknown = len(columns) - len(known)
        indptr = torch.tensor([0, len(known)])
        if len(known) and self.ann is not None and allow is None:
            query = self.model.history_queries(indptr, torch.from_numpy(known))
            if query is not None:
                drop = np.unique(known) if exclude_seen else np.empty(0, dtype=np.int64)
                items, values = self._search(query, k, drop, deny)
                return [self.item_ids[i] for i in items.tolist()], values.tolist(), False, unknown
        if not len(known):
            scores = self._popularity.copy()
        else:
            scores = self.model.score_histories(indptr, torch.from_numpy(known))[0]
            scores = (scores if scores.dtype == torch.float32 else scores.float()).numpy().copy()
            if exclude_seen:
                scores[known] = -np.inf
        scores = _filtered(scores, allow, deny)
        top, values = topk_row(scores, k)
        return [self.item_ids[i] for i in top.tolist()], values.tolist(), not len(known), unknown

    # new items -------------------------------------------------------------------------------------------------------
    def bundle_with_items(self, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> Bundle:
        """The bundle grown by ``items``, ``(raw id, raw features)`` pairs (:meth:`Bundle.with_items`), their
        features encoded by the bundle's fitted item encoder as the training items' were. A 409 when this model
        cannot take new items (it scores items by their ids only, its bundle keeps no item encoder, or it re-ranks
        with tables of the training items) or an id is in the catalogue already; a 422 for an id given twice or of
        another kind than the catalogue's, or bad features (naming the item and the column)."""
        self._check_takes_items()
        ids = self._new_item_ids([raw for raw, _ in items])
        try:
            features = self.bundle.encoders["item"].encode_records([f for _, f in items],
                                                                   [f"item {shown(i)}" for i in ids])
        except RecForgeError as exc:
            raise InvalidRequest(str(exc), status=422) from None
        try:
            return self.bundle.with_items(np.asarray(ids, dtype=self.bundle.item_ids.dtype), features)
        except (ValueError, RecForgeError) as exc:  # a features.json of another run than the model's
            raise InvalidRequest(f"items: the bundle's {FEATURES_FILE} does not fit its model ({exc}); copy the whole "
                                 f"model folder of one run", status=409) from None

    def _check_takes_items(self) -> None:
        name = type(self.model).__name__
        if not self.model.scores_unseen("items"):
            raise InvalidRequest(f"items: {name} scores items by their ids only and cannot score items it never "
                                 f"trained on; serve a model that scores them from their item features "
                                 f"({ITEM_FEATURE_MODELS}; with model.use_features=true)", status=409)
        if "item" not in self.bundle.encoders:
            raise InvalidRequest(f"items: this {name} bundle keeps no fitted encoder of its item features (no "
                                 f"{FEATURES_FILE}: written before bundles kept it, or its item features were not "
                                 f"declared with data.item_columns); retrain it with declared item features",
                                 status=409)
        if self.reranker is not None:
            raise InvalidRequest(f"items: the served model re-ranks its lists ({type(self.reranker).__name__}) with "
                                 f"tables of its training items, which new items are not in; serve a model trained "
                                 f"with rerank=none", status=409)

    def _new_item_ids(self, raw_ids: Sequence[Any]) -> list[Any]:
        """``raw_ids`` in the catalogue's kind (integers, or strings), checked to be new and distinct."""
        ids = []
        for raw in raw_ids:
            if self._int_items and isinstance(raw, str):
                if not _INTEGER.fullmatch(raw):
                    raise InvalidRequest(f"item_id {shown(raw)}: this catalogue's item ids are integers", status=422)
                raw = int(raw)
            ids.append(str(raw) if not self._int_items else raw)
        repeated = [i for i, count in Counter(ids).items() if count > 1]
        if repeated:
            raise InvalidRequest(f"items: item id {shown(repeated[0])} is given more than once; give each new item "
                                 f"once", status=422)
        known = [i for i in ids if _find(self._items, self._int_items, i) is not None]
        if known:
            raise InvalidRequest(f"items: item id {shown(known[0])} is in the catalogue already "
                                 f"({len(known)} of the {len(ids)} are); add only new items (an item's features "
                                 f"change with retraining: recforge-retrain new_items=...)", status=409)
        return ids

    def check_reasons(self, n_reasons: int) -> None:
        if not 1 <= n_reasons <= MAX_REASONS:
            raise InvalidRequest(f"n_reasons={n_reasons} is out of range; use 1 <= n_reasons <= {MAX_REASONS}")

    def explain(self, user: Any, items: Sequence[Any], n_reasons: int = 5, at: float | None = None
                ) -> dict[str, Any]:
        """Why each of ``items`` (raw ids, as :meth:`recommend` answered) was recommended to ``user``: the JSON
        form of :func:`recforge.explain.records`, by the method that fits the model; a model that reads context
        is explained in the context of ``at`` (Unix seconds; default: now), as :meth:`recommend` scored. An unknown
        user's popularity fallback gets no reasons and says so. Off the request path unless asked for: the
        explainer is built on first use."""
        self.check_reasons(n_reasons)
        row = self.user_row(user)
        if row is None:
            return {"method": "popularity_fallback", "exact": False,
                    "note": "unknown user: the most popular items, with no personal reasons",
                    "items": [{"item": item, "reasons": []} for item in items]}
        from recforge.explain import at_time, records

        columns = torch.as_tensor(self.item_columns(items, "items"))
        explainer = at_time(self.explainer(), self.bundle, at)
        return records(explainer.explain(row, columns, n_reasons), self.item_ids)

    def explainer(self):
        """The model's explainer (:func:`recforge.explain.explainer_for`), histories from the seen items."""
        if self._explainer is None:
            with self._explainer_lock:
                if self._explainer is None:
                    from recforge.explain import bundle_explainer

                    self._explainer = bundle_explainer(self.bundle)   # a request's context bound in explain
        return self._explainer

    def similar_items(self, item: Any, k: int = 10) -> tuple[list[Any], list[float]]:
        """The ``k`` items with the highest cosine similarity to ``item`` (itself excluded); see
        :meth:`item_vectors` for the vectors compared."""
        column = _find(self._items, self._int_items, item)
        if column is None:
            raise InvalidRequest(f"unknown item id {item!r}; use an id of the model's catalogue ({self.n_items} items)",
                                 status=404)
        if not 1 <= k < self.n_items:
            raise InvalidRequest(f"k={k} is out of range; use 1 <= k <= {self.n_items - 1}")
        vectors = self.item_vectors()
        cosine = vectors @ vectors[column]
        cosine[column] = -np.inf
        top, values = topk_row(cosine, k)
        return [self.item_ids[i] for i in top.tolist()], values.tolist()

    # similar items ---------------------------------------------------------------------------------------------
    def _raw_item_vectors(self) -> torch.Tensor | None:
        method = getattr(self.model, "item_vectors", None)
        return method() if method is not None else None

    @torch.inference_mode()
    def item_vectors(self) -> np.ndarray:
        """L2-normalised item vectors: the model's ``item_vectors()`` (embeddings) when it has them, otherwise
        the item columns of the full user x item score matrix (each item as its vector of scores over all
        training users). Computed once, on first use."""
        if self._vectors is None:
            with self._vectors_lock:
                if self._vectors is None:
                    from recforge.explain.similarity import item_space

                    self._vectors = item_space(self.model, self.n_users)[1].numpy().copy()
        return self._vectors

    def warm_up(self) -> None:
        """Run one request of each kind so the first client request pays no lazy initialisation."""
        user = self.bundle.user_ids[0] if self.n_users else None
        self.recommend(user.item() if hasattr(user, "item") else user, k=min(10, self.n_items))
        if self.n_items > 1:
            self.similar_items(self.item_ids[0], k=1)
        if getattr(self.model, "answers_histories", False) and self.n_items:
            self.recommend_history(self.item_ids[:1], k=1)

    def info(self) -> dict[str, Any]:
        return {**self.ref.to_dict(), "n_users": self.n_users, "n_items": self.n_items,
                "similar_items_from": self.similar_source, "score_cache": self._score_cache is not None,
                "retrieval": "exact" if self.ann is None else f"ann:{self.ann.kind}",
                "rerank": type(self.reranker).__name__ if self.reranker is not None else None,
                "loaded_at": self.loaded_at, "added_items": self.added_items}
