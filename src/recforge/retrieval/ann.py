"""An ANN index of a dot-product model's item vectors (FAISS, ``pip install 'recforge[ann]'``).

A model whose scores are a dot product of a user and an item vector declares the two sides
(:meth:`~recforge.models.base.Recommender.retrieval_items` and ``retrieval_queries``); :class:`AnnIndex` indexes
the item side for maximum inner product search:

* ``flat``: exact search (``IndexFlatIP``): the reference, and the right choice for small catalogues;
* ``ivf``: ``nlist`` k-means cells, ``nprobe`` of them searched per query (``IndexIVFFlat``);
* ``hnsw``: a navigable small-world graph with ``m`` links per node, built with ``ef_construction`` and searched
  with ``ef_search`` candidates (``IndexHNSWFlat``); the search looks at ``max(ef_search, k)`` candidates;
* ``ivfpq``: IVF cells whose vectors are product-quantised to 4 bits per sub-vector and scanned with SIMD lookup
  tables ("fast scan": André et al., "Cache locality is not enough: high-performance nearest neighbor search with
  product quantization fast scan", VLDB 2015), ``pq_m`` sub-vectors per item; the best ``refine * k`` candidates of
  the approximate scan are re-ranked by their exact inner products (``IndexRefineFlat``), so the scores returned are
  the model's own. It scans several times faster than ``ivf`` at the same ``nprobe`` and keeps the full vectors for
  the re-ranking (memory: the vectors plus ``pq_m / 2`` bytes an item).

``metric="cosine"`` normalises item and query vectors first (for models trained on cosine scores; for a dot-product
model it changes the ranking).

``ip_to_l2=True`` reduces inner product to L2 distance (Bachrach et al., "Speeding up the Xbox recommender system
using a Euclidean transformation for inner-product spaces", RecSys 2014): each item vector ``x`` gets one more
coordinate ``sqrt(M^2 - |x|^2)``, ``M`` the largest item norm, each query a 0; then ``|q - x'|^2 = |q|^2 + M^2 -
2 q.x``, so the nearest items in L2 are exactly the top inner products, and the index is built and searched in L2.
Searches still return inner products (the model's scores), recovered from the distances. It is off by default: it is
exact, but it lowers HNSW's recall on item vectors of varying norm (a graph of L2 neighbours among the reduced items
leads the greedy search badly towards a query that lies far from all of them; Morozov and Babenko, NeurIPS 2018,
found the same), e.g. recall@100 0.46 against 0.96 without it (docs/serving.md).

The index lives in a model bundle as ``ann.faiss`` plus ``ann.json`` (its arguments, and ``max_norm_sq`` with
``ip_to_l2``), written atomically; the service searches it when present.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recforge.errors import RecForgeError

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
IVF_KINDS = ("ivf", "ivfpq")  # the kinds searched through k-means cells: nprobe, nlist and seed apply
METRICS = ("ip", "cosine")
INDEX_FILE, SPEC_FILE = "ann.faiss", "ann.json"
DOT_PRODUCT_MODELS = ("MF/BPR-MF, SVD++, UltraGCN, LightGCN, NGCF, SimpleX, iALS, SASRec, SASRecF, GRU4Rec, "
                      "BERT4Rec, Caser, the two-tower model")


def import_faiss():
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines on every first import
    try:
        import faiss
    except ImportError:
        raise RecForgeError("the ANN index needs FAISS: pip install 'recforge[ann]' (faiss-cpu), or use exact "
                            "retrieval (eval.retrieval=exact)") from None
    return faiss


def retrieval_items(model: torch.nn.Module) -> torch.Tensor:
    """The model's item side for an index; a model that is not a dot product is refused in one line."""
    method = getattr(model, "retrieval_items", None)
    items = method() if method is not None else None
    if items is None:
        raise RecForgeError(f"{type(model).__name__} does not score by a dot product of user and item vectors, so it "
                            f"has no ANN index; use exact retrieval (eval.retrieval=exact), or a model that does "
                            f"({DOT_PRODUCT_MODELS})")
    return items


def check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise RecForgeError(f"ann.{name}={value} must be >= 1")
    return int(value)


def search_size(needed: np.ndarray | int, n_items: int) -> np.ndarray:
    """How many neighbours to ask the index for when ``needed`` must survive filtering: the next power of two, at
    most the catalogue. Rounding up lets a chunk of users with different numbers of seen items share a few search
    calls, and a user's search size (hence an HNSW search's candidate list, ``max(ef_search, size)``) never depends
    on who else is in the call."""
    needed = np.maximum(np.asarray(needed, dtype=np.int64), 1)
    return np.minimum(1 << np.ceil(np.log2(needed)).astype(np.int64), n_items)


class AnnIndex:
    """A FAISS index over ``(n_items, d)`` item vectors, searched with ``(B, d)`` query vectors.

    Args:
        kind: ``flat`` (exact), ``ivf``, ``hnsw`` or ``ivfpq``.
        metric: ``ip`` (inner product: the model's own ranking) or ``cosine``.
        nlist: ``ivf``, ``ivfpq``: k-means cells (~sqrt(n_items) to 4 sqrt(n_items); at most the number of items,
            for ``ivfpq`` a sixteenth of it: small catalogues get cells of 16 items or more).
        nprobe: ``ivf``, ``ivfpq``: cells searched per query (more: higher recall, slower).
        m: ``hnsw``: graph links per node.
        ef_construction: ``hnsw``: candidate list size while building.
        ef_search: ``hnsw``: candidate list size while searching (more: higher recall, slower).
        seed: ``ivf``, ``ivfpq``: the k-means seed.
        pq_m: ``ivfpq``: sub-vectors per item, 4 bits each; it must divide the vectors' dimension (plus one with
            ``ip_to_l2``); 0: one per dimension (the most accurate).
        refine: ``ivfpq``: how many candidates per wanted neighbour the approximate scan passes to the exact
            re-ranking (more: higher recall, slower).
        ip_to_l2: index in L2 after the inner-product-to-L2 reduction (see the module; off: it lowers HNSW's recall).
    """

    def __init__(self, kind: str = "hnsw", metric: str = "ip", nlist: int = 1024, nprobe: int = 16, m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, seed: int = 0, ip_to_l2: bool = False,
                 pq_m: int = 0, refine: int = 4) -> None:
        if kind not in KINDS:
            raise RecForgeError(f"ann.kind={kind!r} is not an index kind; use one of {', '.join(KINDS)}")
        if metric not in METRICS:
            raise RecForgeError(f"ann.metric={metric!r} is not a metric; use ip or cosine")
        if not isinstance(ip_to_l2, bool):
            raise RecForgeError(f"ann.ip_to_l2={ip_to_l2!r} is not a switch; use true or false")
        for name, value in (("nlist", nlist), ("m", m), ("ef_construction", ef_construction)):
            check_positive(name, value)
        if int(pq_m) < 0:
            raise RecForgeError(f"ann.pq_m={pq_m} must be >= 0 (0: one sub-vector per dimension)")
        self.kind, self.metric, self.ip_to_l2 = kind, metric, ip_to_l2
        self.pq_m = int(pq_m)
        self.nlist, self.m, self.ef_construction, self.seed = int(nlist), int(m), int(ef_construction), int(seed)
        self.index: Any = None
        self.n_items = self.dim = 0
        self.max_norm_sq = 0.0  # ip_to_l2: M^2, the largest squared item norm of the built index
        self.set_search(nprobe=nprobe, ef_search=ef_search, refine=refine)

    def arguments(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "nlist": self.nlist, "nprobe": self.nprobe, "m": self.m,
                "ef_construction": self.ef_construction, "ef_search": self.ef_search, "seed": self.seed,
                "ip_to_l2": self.ip_to_l2, "pq_m": self.pq_m, "refine": self.refine}

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None,
                   refine: int | None = None) -> "AnnIndex":
        """Change the search parameters (``ivf``: ``nprobe``; ``hnsw``: ``ef_search``; ``ivfpq``: ``nprobe`` and
        ``refine``; ``None`` keeps one), on the built index too: they need no rebuild. Returns ``self``."""
        if nprobe is not None:
            self.nprobe = check_positive("nprobe", nprobe)
        if ef_search is not None:
            self.ef_search = check_positive("ef_search", ef_search)
        if refine is not None:
            self.refine = check_positive("refine", refine)
        if self.index is None:
            return self
        if self.kind in IVF_KINDS:
            import_faiss().extract_index_ivf(self.index).nprobe = self.nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.ef_search
        if self.kind == "ivfpq":  # k_factor is not saved with the index: set on every load
            self.index.k_factor = float(self.refine)
        return self

    def _prepare(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().float().cpu().numpy()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def build(self, items: torch.Tensor | np.ndarray) -> "AnnIndex":
        """Index ``items`` (replacing any earlier index); returns ``self``."""
        faiss = import_faiss()
        x = self._prepare(items)
        self.n_items, self.dim = x.shape
        if self.ip_to_l2:  # one more coordinate, sqrt(M^2 - |x|^2): every item vector gets norm M
            norms_sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
            self.max_norm_sq = float(norms_sq.max(initial=0.0))
            extra = np.sqrt(np.maximum(self.max_norm_sq - norms_sq, 0.0)).astype(np.float32)
            x = np.ascontiguousarray(np.hstack([x, extra[:, None]]))
        d = x.shape[1]
        metric = faiss.METRIC_L2 if self.ip_to_l2 else faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            index = faiss.IndexFlat(d, metric)
        elif self.kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, min(self.nlist, max(self.n_items, 1)), metric)
        elif self.kind == "ivfpq":
            pq_m = self.pq_m or d
            if d % pq_m:
                raise RecForgeError(f"ann.pq_m={pq_m} does not divide the vectors' {d} dimensions"
                                    + (" (the model's plus one for ip_to_l2)" if self.ip_to_l2 else "")
                                    + f"; use a divisor of {d}, or 0 for one sub-vector per dimension")
            if self.n_items < 16:
                raise RecForgeError(f"ann.kind=ivfpq needs at least 16 items to train its 4-bit codes, and the "
                                    f"catalogue has {self.n_items}; use ann=flat (exact) for a catalogue this small")
            index = faiss.index_factory(d, f"IVF{min(self.nlist, self.n_items // 16)},PQ{pq_m}x4fs,RFlat", metric)
        else:
            index = faiss.IndexHNSWFlat(d, self.m, metric)
            index.hnsw.efConstruction = self.ef_construction
        if self.kind in IVF_KINDS:  # the k-means of the cells (ivfpq: inside the re-ranking wrapper)
            cells = faiss.extract_index_ivf(index)
            cells.cp.seed = self.seed
            cells.cp.min_points_per_centroid = 1  # small catalogues: no warning per build
            index.train(x)
        index.add(x)
        self.index = index
        return self.set_search()

    def extended(self, items: torch.Tensor | np.ndarray) -> "AnnIndex":
        """A new index of ``items``, whose first ``n_items`` rows are the ones this index holds: a copy of it with the
        others added (this index is left as it is, so it can be searched meanwhile), or, under ``ip_to_l2`` when an
        added item is longer than every indexed one (the reduction's ``M``), one built anew."""
        faiss = import_faiss()
        x = self._prepare(items)
        added = x[self.n_items:]
        if self.ip_to_l2:
            norms_sq = np.einsum("ij,ij->i", added, added, dtype=np.float64)
            if norms_sq.max(initial=0.0) > self.max_norm_sq:
                return AnnIndex(**self.arguments()).build(x)
            extra = np.sqrt(np.maximum(self.max_norm_sq - norms_sq, 0.0)).astype(np.float32)
            added = np.hstack([added, extra[:, None]])
        grown = AnnIndex(**self.arguments())
        grown.index = faiss.clone_index(self.index)
        grown.index.add(np.ascontiguousarray(added))
        grown.n_items, grown.dim, grown.max_norm_sq = len(x), self.dim, self.max_norm_sq
        return grown.set_search()

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, items)``, both ``(B, min(k, n_items))``, best first; slots the index could not fill have item
        -1 and score ``-inf``."""
        if self.index is None:
            raise RecForgeError("the ANN index is empty; build() it from the model's item vectors first")
        q = self._prepare(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RecForgeError(f"ANN queries have {q.shape[-1]} dimensions but the index has {self.dim}; the index "
                                f"belongs to another model: rebuild it")
        if not self.ip_to_l2:
            scores, items = self.index.search(q, min(int(k), self.n_items))
        else:  # queries get a 0 coordinate; the squared distance |q|^2 + M^2 - 2 q.x gives back the inner product
            distances, items = self.index.search(np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)]),
                                                 min(int(k), self.n_items))
            q_norms_sq = np.einsum("ij,ij->i", q, q, dtype=np.float64)[:, None]
            scores = ((q_norms_sq + self.max_norm_sq - distances) / 2).astype(np.float32)
        scores[items < 0] = -np.inf
        return scores, items

    def search_excluding(self, queries: torch.Tensor | np.ndarray, k: int, drop_indptr: np.ndarray,
                         drop_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, items)``, both ``(B, k)``, of each query without the items it must not get: query
        ``b`` drops ``drop_indices[drop_indptr[b]:drop_indptr[b + 1]]`` (its seen or denied items, a CSR row).

        Each query asks the index for :func:`search_size` of ``k`` plus its number of dropped items, so that every
        caller (the service with one query, ``recforge-recommend`` with a chunk) searches a given user with the same
        size and gets the same list; queries of equal size are searched together. Unfilled slots have item -1
        and score ``-inf``. Memory: ``B x search_size`` scores and ids at most."""
        q = self._prepare(queries)
        n_rows = len(q)
        drop_indptr = np.asarray(drop_indptr, dtype=np.int64)
        drop_indices = np.asarray(drop_indices, dtype=np.int64)
        counts = np.diff(drop_indptr)
        sizes = search_size(k + counts, self.n_items)
        out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
        out_items = np.full((n_rows, k), -1, dtype=np.int64)
        stride = self.n_items + 1  # (row, item + 1) as one code; item -1 (unfilled) is code row * stride
        for size in np.unique(sizes):
            rows = np.flatnonzero(sizes == size)
            scores, items = self.search(q[rows], int(size))
            keep = items >= 0
            lengths = counts[rows]
            if lengths.any():  # the dropped items of these rows, as (local row, item) codes
                starts = drop_indptr[rows] - np.cumsum(lengths) + lengths  # each row's start minus its output offset
                offsets = np.repeat(starts, lengths) + np.arange(lengths.sum())
                dropped = np.repeat(np.arange(len(rows)), lengths) * stride + drop_indices[offsets] + 1
                codes = np.arange(len(rows))[:, None] * stride + items + 1
                keep &= ~np.isin(codes, dropped)
            position = np.cumsum(keep, axis=1) - 1  # each kept item's place in its row's answer
            keep &= position < k
            local, column = np.nonzero(keep)
            out_scores[rows[local], position[local, column]] = scores[local, column]
            out_items[rows[local], position[local, column]] = items[local, column]
        return out_scores, out_items

    def memory_bytes(self) -> int:
        """The index's size as FAISS serialises it (vectors, graph or lists): about its memory."""
        return 0 if self.index is None else int(import_faiss().serialize_index(self.index).nbytes)

    # files -----------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``ann.faiss`` and ``ann.json`` into ``directory``, each atomically (temporary file, rename)."""
        faiss = import_faiss()
        directory = Path(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ann-", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, directory / INDEX_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        spec = {**self.arguments(), "n_items": self.n_items, "dim": self.dim}
        if self.ip_to_l2:
            spec["max_norm_sq"] = self.max_norm_sq
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ann-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(spec, handle, indent=2)
        os.replace(tmp, directory / SPEC_FILE)
        return directory / INDEX_FILE

    @classmethod
    def load(cls, directory: str | Path) -> "AnnIndex | None":
        """The index saved in ``directory``, or ``None`` when it has none."""
        directory = Path(directory)
        if not (directory / INDEX_FILE).exists():
            return None
        faiss = import_faiss()
        try:
            spec = json.loads((directory / SPEC_FILE).read_text())
            spec.setdefault("ip_to_l2", False)  # written before the option existed: built without the reduction
            n_items, dim = spec.pop("n_items"), spec.pop("dim")
            max_norm_sq = float(spec.pop("max_norm_sq")) if spec["ip_to_l2"] else 0.0
            ann = cls(**spec)
            ann.index = faiss.read_index(str(directory / INDEX_FILE))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RecForgeError(f"{directory / INDEX_FILE}: cannot read the ANN index ({str(exc).splitlines()[0]}); "
                                f"rebuild it: python -m recforge.serving.index --bundle {directory}") from None
        metric = {faiss.METRIC_L2: "L2", faiss.METRIC_INNER_PRODUCT: "inner product"}
        found = (ann.index.ntotal, ann.index.d, metric.get(ann.index.metric_type, "another metric"))
        wanted = (n_items, dim + int(ann.ip_to_l2), "L2" if ann.ip_to_l2 else "inner product")  # +1: the reduction
        if found != wanted:
            raise RecForgeError(f"{directory / INDEX_FILE}: holds {found[0]} vectors of {found[1]} dimensions under "
                                f"{found[2]}, {SPEC_FILE} says {wanted[0]} of {wanted[1]} under {wanted[2]}; "
                                f"rebuild it")
        ann.n_items, ann.dim, ann.max_norm_sq = n_items, dim, max_norm_sq
        return ann.set_search()


class ModelRetriever:
    """Top-``k`` candidates of a model's users from an index of its item vectors: ``(users, k) -> (scores,
    items)`` tensors, ``(B, k)``, item -1 and score ``-inf`` for unfilled slots (the evaluator's ``retriever``)."""

    def __init__(self, model: torch.nn.Module, index: AnnIndex) -> None:
        self.model = model
        with torch.no_grad():
            self.index = index.build(retrieval_items(model))

    @torch.no_grad()
    def __call__(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, items = self.index.search(self.model.retrieval_queries(users), k)
        device = users.device
        return torch.from_numpy(scores).to(device), torch.from_numpy(items).to(device)
