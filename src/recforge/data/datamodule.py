"""The LightningDataModule: prepared (and cached) interactions, index-slice batches and evaluation chunks."""

from __future__ import annotations

import logging
import time
from typing import Collection

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from recforge.data.batches import ListDataset, ShuffledBatches, UserUniformBatches, chunk_batches, split_eval_batch
from recforge.data.cache import cache_key, entry_dir, read_entry, write_entry
from recforge.data.context import checked_times, context_names, encode_context, pair_times, request_times
from recforge.data.declared import FeatureEncoder, from_training_interactions, read_encoders
from recforge.data.features import align_features, encode_frame
from recforge.data.interactions import IdMaps, default_steps, prepare
from recforge.data.pairs import labelled_pairs
from recforge.data.sources.base import PART_PREFIX, RawData, Source
from recforge.data.sorting import isin, lexsort, sort_keys
from recforge.data.split import Split, check_split
from recforge.errors import RecForgeError
from recforge.utils.distributed import process_rank
from recforge.utils.sparse import row_pointers

log = logging.getLogger("recforge")


def _tensor(values: np.ndarray, dtype) -> torch.Tensor:
    """A tensor of ``values`` (copied when NumPy/pandas hands out a read-only view)."""
    values = np.asarray(values, dtype=dtype)
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """``sp.csr_matrix((values, (rows, cols)), shape)`` in canonical form, built by one sort of the (row, col) keys
    rather than SciPy's per-row sorts; SciPy's own path sums the values of repeated pairs."""
    sorted_keys, order = sort_keys(rows * shape[1] + cols)
    if len(sorted_keys) and (sorted_keys[1:] == sorted_keys[:-1]).any():
        return sp.csr_matrix((values, (rows, cols)), shape=shape)
    index = np.int32 if max(shape[1], len(sorted_keys)) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(shape[0] + 1, index)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    matrix = sp.csr_matrix((values[order], (sorted_keys % shape[1]).astype(index), indptr), shape=shape)
    matrix.has_sorted_indices = True
    return matrix


class RecDataModule(pl.LightningDataModule):
    """Loads a source, preprocesses it, splits it, checks the split and serves tensors.

    ``preprocess`` is the ordered list of steps (:mod:`recforge.data.preprocess`; ``None`` = drop missing
    ids and deduplicate keeping the latest); ``implicit_threshold`` adds a rating threshold for the
    implicit view (after deduplication, before a k-core: :func:`recforge.data.interactions.threshold_position`).
    ``cold_users`` / ``cold_items`` (``keep`` or ``drop``) say what happens to validation and test interactions of
    users/items unseen in training. With ``cache`` and a ``cache_dir``, the prepared
    data is cached as Arrow files keyed by the raw files' checksums and the whole data config.

    Training batches are ``(users, items, ratings)`` index slices. Ranking evaluation batches are chunks
    of users sized so that ``chunk * n_items <= max_scores_in_memory``, each carrying the chunk's items
    to exclude (seen in training or fold-in, and in validation at test time) and its relevant items with
    their ratings as gains; validation chunks also carry their users' test items (``later_rows`` /
    ``later_cols``), which a sampled protocol never draws as negatives. Rating evaluation batches are
    ``(users, items, ratings)`` slices.

    ``train_view`` is ``interactions`` (the default), ``users`` or ``sequences`` (each training user once per epoch,
    in batches of ``batch_size`` users: what user-row losses such as ``loss=multinomial`` and sequential models
    need; batches are ``(users, users, ones)``) or ``items``
    (each training item once per epoch: item-row models such as I-AutoRec); the pipeline sets it from the model
    or the loss. ``sample_users_uniformly`` draws the interactions view's examples user first
    (:class:`UserUniformBatches`) instead of shuffling the interactions. ``train_on_device`` keeps the training
    tensors in a CUDA device's memory when the trainer runs on one, where each epoch is shuffled and cut into
    batches without a host-to-device copy per batch (a copy from pageable memory may wait for the device, and then
    the host's per-step work no longer overlaps the device's); the permutations then come from the device's
    generator. Without it, batches bound for a GPU are pinned (page-locked) first.

    A source that declares context features (``data.context_columns``, :mod:`recforge.data.context`) adds each
    interaction's context to its training batch (``(users, items, ratings, context)``), each ranking batch's users'
    query context (``"context"``: the earliest held-out interaction of the part), each labelled pair's
    (``"pair_context"``: a positive's own, shared by its user's negatives) and each rating batch's rows' own.

    ``feature_encoders`` (a model bundle's ``features.json``) encodes the declared features with that model's fitted
    encoders instead of fitting them on this training part (``recforge-retrain`` gives the champion's).

    ``train_on_validation`` moves the validation part into training after the split (the cached split is unchanged)
    and leaves validation empty: the data of a refit (``refit=true`` in ``recforge-train``), whose test is ranked
    exactly as the selection run's (the same items excluded) by a model that has also learnt from validation.
    """

    train_view: str = "interactions"

    def __init__(
        self,
        source: Source,
        splitter,
        feedback: str = "implicit",
        implicit_threshold: float | None = None,
        preprocess: list | None = None,
        cold_users: str = "keep",
        cold_items: str = "keep",
        cache: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 65536,
        max_scores_in_memory: int = 1 << 24,
        seed: int = 0,
        sample_users_uniformly: bool = False,
        train_on_device: bool = True,
        feature_encoders: str | None = None,
        train_on_validation: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise RecForgeError("datamodule.batch_size and datamodule.eval_batch_size must be positive")
        if max_scores_in_memory < 1:
            raise RecForgeError("datamodule.max_scores_in_memory must be positive")
        for name, value in (("cold_users", cold_users), ("cold_items", cold_items)):
            if value not in ("keep", "drop"):
                raise RecForgeError(f"datamodule.{name} must be 'keep' or 'drop', got {value!r}")
        self.source, self.splitter = source, splitter
        self.feedback, self.implicit_threshold = feedback, implicit_threshold
        self.preprocess = list(preprocess) if preprocess is not None else None
        self.cold_users, self.cold_items = cold_users, cold_items
        self.cache, self.cache_dir = cache, cache_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_scores_in_memory, self.seed = max_scores_in_memory, seed
        self.sample_users_uniformly, self.train_on_device = sample_users_uniformly, train_on_device
        self.feature_encoders_path = feature_encoders
        self.train_on_validation = train_on_validation
        self.raw: RawData | None = None
        self.split: Split | None = None
        self.id_maps: IdMaps | None = None
        self.user_features: pd.DataFrame | None = None
        self.item_features: pd.DataFrame | None = None
        self.rating_scale, self.rating_offset = 1.0, 0.0
        self.rating_range: tuple[float, float] | None = None
        self._report: dict[str, float] = {}
        self._feature_tensors: dict | None = None
        self._feature_names: dict[str, list[str]] = {}
        self._feature_encoders: dict[str, FeatureEncoder] = {}
        self.candidates: dict[str, torch.Tensor] = {}  # per stage, the ranked items when the split restricts them
        self.context_columns: list = []   # the declared context features (data.context_columns), set up with the data
        self.train_context: torch.Tensor | None = None   # (n_train, d): each training interaction's context

    # ---------------------------------------------------------------- preparation
    def cache_spec(self, checksums: dict[str, str]) -> dict:
        """Everything that determines the prepared data (the cache key is its hash)."""
        steps = self.preprocess if self.preprocess is not None else default_steps()
        spec_of = lambda obj: obj.spec() if hasattr(obj, "spec") else repr(obj)  # noqa: E731
        return {
            "source": spec_of(self.source), "checksums": checksums, "feedback": self.feedback,
            "implicit_threshold": self.implicit_threshold, "preprocess": [spec_of(s) for s in steps if s is not None],
            "split": spec_of(self.splitter), "cold_users": self.cold_users, "cold_items": self.cold_items,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        started = time.perf_counter()
        folder = None
        timings: dict[str, float] = {}
        if self.cache and self.cache_dir and hasattr(self.source, "checksums"):
            checksums = self.source.checksums()
            timings["data/checksum_s"] = time.perf_counter() - started
            folder = entry_dir(self.cache_dir, self.source.name, cache_key(self.cache_spec(checksums)))
            entry = read_entry(folder)
            if entry is not None:
                self._from_cache(*entry)
                timings["data/cache_read_s"] = time.perf_counter() - started - timings["data/checksum_s"]
                self._report.update(timings, **{"data/cache_hit": 1.0})
                self._finish(started)
                log.info("data: read prepared %s from %s", self.source.name, folder)
                return
        t0 = time.perf_counter()
        raw = self.source.load()
        timings["data/load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        frame, id_maps, state = prepare(raw, self.feedback, self.implicit_threshold, self.preprocess)
        # the raw table is not kept (bounded memory; a cache hit never reads it): ``raw`` keeps name, range, digests
        raw.interactions = raw.interactions.iloc[:0]
        timings["data/preprocess_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_users, n_items = len(id_maps.users), len(id_maps.items)
        split = self.splitter(frame)
        del frame
        split, report = check_split(split, n_users, n_items, self.cold_users, self.cold_items)
        parts = {name: part.drop(columns=[c for c in part.columns if c.startswith(PART_PREFIX)])
                 for name, part in split.parts().items()}
        split = Split(parts["train"], parts["val"], parts["test"], parts.get("fold_in"), split.meta)
        timings["data/split_s"] = time.perf_counter() - t0
        self.raw = RawData(raw.name, raw.interactions, raw.rating_range, raw.checksums)
        self.id_maps, self.split = id_maps, split
        self.n_users, self.n_items = n_users, n_items
        self.rating_scale, self.rating_offset, self.rating_range = state.rating_scale, state.rating_offset, \
            state.rating_range
        self.user_features = align_features(raw.user_features, id_maps.users)
        self.item_features = align_features(raw.item_features, id_maps.items)
        self._report = {**state.report, **report, **timings, "data/cache_hit": 0.0}
        self._validate()
        if folder is not None:
            t0 = time.perf_counter()
            self._write_cache(folder)
            self._report["data/cache_write_s"] = time.perf_counter() - t0
        self._finish(started)

    def _validate(self) -> None:
        split = self.split
        if len(split.train) == 0 or len(split.test) == 0:
            raise RecForgeError(f"split left train or test empty ({len(split.train)}/{len(split.test)} rows); "
                                "check the split settings and the preprocessing (k-core, thresholds)")
        if len(split.val) == 0:
            raise RecForgeError("split produced an empty validation set; early stopping and the best checkpoint "
                                "need one (raise split.val_ratio, or use a split with validation)")

    def _write_cache(self, folder) -> None:
        users, items = self.id_maps.to_frame()
        frames = {**self.split.parts(), "users": users, "items": items,
                  "user_features": self.user_features, "item_features": self.item_features}
        meta = {"name": self.raw.name, "rating_range": self.raw.rating_range, "checksums": self.raw.checksums,
                "stored_rating_range": self.rating_range, "rating_scale": self.rating_scale,
                "rating_offset": self.rating_offset, "split_meta": self.split.meta,
                "report": {k: v for k, v in self._report.items() if not k.endswith("_s") and k != "data/cache_hit"}}
        write_entry(folder, frames, meta)

    def _from_cache(self, frames: dict[str, pd.DataFrame], meta: dict) -> None:
        rating_range = tuple(meta["rating_range"]) if meta["rating_range"] is not None else None
        empty = pd.DataFrame({"user": [], "item": [], "rating": np.zeros(0, np.float32),
                              "timestamp": np.zeros(0, np.int64)})
        self.raw = RawData(meta["name"], empty, rating_range, meta["checksums"])
        self.id_maps = IdMaps(frames["users"]["user"].to_numpy(), frames["items"]["item"].to_numpy())
        self.n_users, self.n_items = len(self.id_maps.users), len(self.id_maps.items)
        self.split = Split(frames["train"], frames["val"], frames["test"], frames.get("fold_in"), meta["split_meta"])
        self.user_features, self.item_features = frames.get("user_features"), frames.get("item_features")
        self.rating_scale, self.rating_offset = meta["rating_scale"], meta["rating_offset"]
        stored = meta["stored_rating_range"]
        self.rating_range = tuple(stored) if stored is not None else None
        self._report = dict(meta["report"])
        self._validate()

    def _finish(self, started: float) -> None:
        t0 = time.perf_counter()
        if self.train_on_validation:   # a refit (train.py's refit=true): validation joins training and is empty
            split = self.split
            self.split = Split(pd.concat([split.train, split.val], ignore_index=True), split.val.iloc[:0], split.test,
                               split.fold_in, {**split.meta, "validation": "merged"})
        self.fingerprint = self.split.fingerprint(self.n_users, self.n_items)
        train = self.split.train
        self.train_tensors = (
            _tensor(train["user"].to_numpy(), np.int64),
            _tensor(train["item"].to_numpy(), np.int64),
            _tensor(train["rating"].to_numpy(), np.float32),
        )
        self.train_matrix = self._matrix(train)
        seen = self.train_matrix
        if self.split.fold_in is not None:
            self.fold_in_matrix = self._matrix(self.split.fold_in)
            seen = seen + self.fold_in_matrix
        else:
            self.fold_in_matrix = None
        # at test time validation items are known too, except pairs that are themselves test targets (a split that
        # validates on the test set, as LightGCN's protocol does, would otherwise mask every test item)
        val, test = self.split.val, self.split.test
        seen_val = seen + self._matrix(val[~isin(self._keys(val), self._keys(test))])
        test_matrix = self._matrix(test)
        self._eval_batches = {  # validation carries its users' test items: no sampled protocol draws them
            "val": self._eval_batches_for(val, self._matrix(val), exclude=seen, later=test_matrix),
            "test": self._eval_batches_for(test, test_matrix, exclude=seen_val),
        }
        self.candidates = {}
        if self.split.meta.get("rank_among") == "held_out" and self.feedback == "implicit":
            # the cold-item protocol ranks each stage's held-out items only (split.rank_among=held_out), in a
            # shuffled order: tied scores (every held-out item's popularity, items with the same features) are
            # ranked by it, not by item index, which follows the sorted raw ids and would pass their signal
            shuffle = np.random.default_rng(self.seed)
            for stage, part in (("val", val), ("test", test)):
                mask = torch.zeros(self.n_items, dtype=torch.bool)
                mask[torch.from_numpy(part["item"].to_numpy(np.int64, copy=True))] = True
                self.candidates[stage] = mask
                order = torch.from_numpy(shuffle.permutation(np.flatnonzero(mask.numpy())))
                for batch in self._eval_batches[stage]:
                    batch["candidate_items"], batch["candidate_order"] = mask, order
        self.context_columns = list(getattr(self.source, "context_columns", None) or [])
        self.train_context = self._set_context() if self.context_columns else None
        self._report["data/tensors_s"] = time.perf_counter() - t0
        self._report["data/setup_s"] = time.perf_counter() - started

    def _matrix(self, part: pd.DataFrame) -> sp.csr_matrix:
        matrix = csr(part["user"].to_numpy(np.int64), part["item"].to_numpy(np.int64),
                     part["rating"].to_numpy(np.float32), (self.n_users, self.n_items))
        matrix.data[matrix.data == 0] = np.float32(1e-6)   # a zero (or repeats summing to one) stays an entry
        return matrix

    def _eval_batches_for(self, part: pd.DataFrame, relevant: sp.csr_matrix, exclude: sp.csr_matrix,
                          later: sp.csr_matrix | None = None) -> list:
        """Evaluation batches of ``part`` (``relevant``: its matrix): rating slices, or full-ranking chunks that mask
        ``exclude`` and carry ``later``'s pairs (validation users' test items, blocked from sampled negatives)."""
        if self.feedback == "explicit":
            tensors = [_tensor(part[c].to_numpy(), t) for c, t in (("user", np.int64), ("item", np.int64),
                                                                    ("rating", np.float32))]
            return [tuple(t[s : s + self.eval_batch_size] for t in tensors)
                    for s in range(0, len(part), self.eval_batch_size)]
        return chunk_batches(exclude.indptr, exclude.indices, relevant.indptr, relevant.indices, relevant.data,
                             self.n_items, self.max_scores_in_memory, *(() if later is None else
                                                                        (later.indptr, later.indices)))

    def _context(self, part: pd.DataFrame) -> dict[str, np.ndarray]:
        """The declared context's timestamp columns of ``part`` (checked: one-line errors name the key)."""
        return checked_times(self.context_columns, part, self.raw.name)

    def _set_context(self) -> torch.Tensor:
        """Attach the context to the evaluation batches (ranking chunks: each user's query context, at the
        earliest of its interactions in the part; rating batches: each row's own) and return the training
        interactions' ``(n_train, d)`` context."""
        columns = self.context_columns
        for stage, part in (("val", self.split.val), ("test", self.split.test)):
            if self.feedback == "explicit":  # rating batches are slices of the part's rows
                own = torch.from_numpy(encode_context(columns, self._context(part))).split(self.eval_batch_size)
                self._eval_batches[stage] = [(*batch, c) for batch, c in zip(self._eval_batches[stage], own)]
                continue
            queries = self.query_context(stage)
            for batch in self._eval_batches[stage]:
                batch["context"] = queries[batch["users"]]
        self._report["data/n_context"] = float(len(context_names(columns)))
        return torch.from_numpy(encode_context(columns, self._context(self.split.train)))

    def query_context(self, stage: str) -> torch.Tensor:
        """``(n_users, n_context)``: each user's full-ranking query context in the ``val`` or ``test`` part, at
        the earliest of its interactions there (:func:`recforge.data.context.request_times`; time 0 for a user
        without any): what the part's ranking, and the explanation of a model that reads context, score in."""
        if stage not in ("val", "test"):
            raise RecForgeError(f"query_context(stage={stage!r}): stage must be 'val' or 'test'")
        part = self.split.val if stage == "val" else self.split.test
        users = part["user"].to_numpy(np.int64)
        return torch.from_numpy(encode_context(self.context_columns, {
            c: request_times(users, t, self.n_users) for c, t in self._context(part).items()}))

    def add_pointwise_pairs(self, negatives: int = 1, seed: int = 0, threshold: float | None = None) -> None:
        """Attach labelled pairs (:func:`recforge.data.pairs.labelled_pairs`) to every validation and test
        batch, for the point-wise metrics: each part's pairs are its positives and ``negatives`` sampled items per
        positive that the user never interacted with in any part (within the ranked candidates when the split
        restricts them), drawn under ``seed``; or, with ``threshold``, the part's rated pairs labelled
        ``rating >= threshold`` (on the original rating scale). Counts go to the data report
        (``data/pointwise_pairs_test``, ...). Rating models' evaluation batches are already their labelled pairs."""
        if self.feedback == "explicit":
            raise RecForgeError("add_pointwise_pairs is for ranking evaluation; a rating model's evaluation pairs are "
                                "its rated pairs (RecommenderModule.rating_threshold labels them)")
        scale, offset = self.rating_inverse
        split = self.split
        parts = [split.train, split.val, split.test] + ([split.fold_in] if split.fold_in is not None else [])
        blocked = np.concatenate([self._keys(p) for p in parts])
        for stage, part in (("val", split.val), ("test", split.test)):
            mask = self.candidates.get(stage)
            users, items, labels, short = labelled_pairs(
                part["user"].to_numpy(), part["item"].to_numpy(), part["rating"].to_numpy(np.float64) * scale + offset,
                self.n_items, blocked,
                negatives, seed, threshold, None if mask is None else mask.numpy())
            self._report[f"data/pointwise_pairs_{stage}"] = float(len(users))
            self._report[f"data/pointwise_positives_{stage}"] = float(labels.sum())
            self._report[f"data/pointwise_short_{stage}"] = float(short)
            users_t = torch.as_tensor(users)
            context = None
            if self.context_columns:  # a positive's own time; its user's negatives share its positives' times
                times = {c: pair_times(users, items, part["user"].to_numpy(), part["item"].to_numpy(), t, self.n_items)
                         for c, t in self._context(part).items()}
                context = torch.from_numpy(encode_context(self.context_columns, times))
            for batch in self._eval_batches[stage]:
                lo, hi = (int(torch.searchsorted(users_t, batch["users"][i], right=right))
                          for i, right in ((0, False), (-1, True)))
                batch["pair_rows"] = torch.searchsorted(batch["users"], users_t[lo:hi])
                batch["pair_cols"] = torch.as_tensor(items[lo:hi])
                batch["pair_labels"] = torch.as_tensor(labels[lo:hi])
                if context is not None:
                    batch["pair_context"] = context[lo:hi]

    @property
    def n_train_users(self) -> int:
        """Users with a training interaction, the novelty normaliser (``item_popularity`` counts training users):
        ``n_users`` also counts users held out whole (a strong-generalisation split's test users)."""
        return int(self.split.train["user"].nunique())

    # ---------------------------------------------------------------- ratings on the original scale
    @property
    def rating_inverse(self) -> tuple[float, float]:
        """``(scale, offset)``: original rating = stored rating * scale + offset ((1, 0) without normalisation)."""
        return float(self.rating_scale), float(self.rating_offset)

    def inverse_ratings(self, values: torch.Tensor) -> torch.Tensor:
        """Map stored (possibly normalised) ratings or predictions back to the original scale."""
        scale, offset = self.rating_inverse
        return values * scale + offset if (scale, offset) != (1.0, 0.0) else values

    # ---------------------------------------------------------------- sequential inputs
    def _chronological(self, parts: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
        """User and item arrays of ``parts`` grouped by user, in time order within each user (stable)."""
        users = np.concatenate([p["user"].to_numpy(np.int64) for p in parts])
        items = np.concatenate([p["item"].to_numpy(np.int64) for p in parts])
        times = np.concatenate([p["timestamp"].to_numpy(np.int64) for p in parts])
        order = lexsort((times, users))
        return users[order], items[order]

    def _keys(self, part: pd.DataFrame) -> np.ndarray:
        return part["user"].to_numpy(np.int64) * self.n_items + part["item"].to_numpy(np.int64)

    def histories(self, stage: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Each user's chronological input items for ``stage`` as CSR ``(indptr, items)``: what sequential and
        row-input models read when they are evaluated.

        ``val``: training (and fold-in) interactions; ``test``: those plus validation, except validation pairs that
        are themselves test targets (a protocol that validates on the test set). Checked to contain no pair of the
        stage's targets (nor, for ``val``, of test); a leak stops the run.
        """
        if stage not in ("val", "test"):
            raise RecForgeError(f"histories(stage={stage!r}): stage must be 'val' or 'test'")
        split = self.split
        parts = [split.train] + ([split.fold_in] if split.fold_in is not None else [])
        if stage == "test":
            parts.append(split.val[~isin(self._keys(split.val), self._keys(split.test))])
        users, items = self._chronological(parts)
        targets = [split.test] + ([split.val] if stage == "val" else [])
        target_keys = np.concatenate([self._keys(p) for p in targets])
        leaked = int(isin(users * self.n_items + items, target_keys).sum())
        self._report[f"data/seq_leak_pairs_{stage}"] = float(leaked)
        if leaked:
            raise RecForgeError(f"sequence leak: {leaked} {stage} inputs are validation/test targets; deduplicate the "
                                "data (a Deduplicate step) or fix the split")
        return row_pointers(torch.as_tensor(users), self.n_users), torch.as_tensor(items)

    # ---------------------------------------------------------------- what models are built from
    def feature_tensors(self) -> dict[str, torch.Tensor]:
        """``user_features`` / ``item_features`` as float32 matrices aligned to the contiguous indices, fitted on the
        training part only: the vocabularies, ranges and means come from the users (items) with a training
        interaction, so nothing of a validation or test id shapes the encoding. Features the source declares
        (``data.user_columns`` / ``item_columns``) are encoded as declared (:class:`FeatureEncoder`; those
        ``from_interactions`` aggregated over the training interactions only), any other feature frame by
        :func:`recforge.data.features.encode_frame`. With ``feature_encoders`` (a model bundle's ``features.json``)
        the declared features are encoded by its fitted encoders instead of fitting new ones."""
        if self._feature_tensors is None:
            self._feature_tensors, self._feature_names = {}, {}
            declared = getattr(self.source, "feature_columns", None) or {}
            given = read_encoders(self.feature_encoders_path) if self.feature_encoders_path else {}
            for side, frame, n in (("user", self.user_features, self.n_users), ("item", self.item_features,
                                                                              self.n_items)):
                frame = from_training_interactions(declared.get(side, []), frame, self.split.train, side, n)
                if frame is None:
                    continue
                rows = np.bincount(self.split.train[side].to_numpy(np.int64), minlength=n) > 0
                if declared.get(side):
                    encoder = given.get(side) or FeatureEncoder(declared[side]).fit(frame, rows)
                    if encoder.columns != declared[side]:
                        raise RecForgeError(f"datamodule.feature_encoders={self.feature_encoders_path}: its {side} "
                                            f"features ({', '.join(c.name for c in encoder.columns)}) are not those "
                                            f"data.{side}_columns declares; give the encoders of a model trained on "
                                            f"this declaration, or none")
                    encoder.cache_dir = self.cache_dir if self.cache else None   # text features' embeddings
                    self._feature_encoders[side] = encoder
                    matrix, names = encoder.transform(frame)
                    tensor = torch.from_numpy(matrix) if matrix.shape[1] else None
                else:
                    tensor, names = encode_frame(frame, fit_rows=rows)
                if tensor is not None:
                    self._feature_tensors[f"{side}_features"] = tensor
                    self._feature_names[f"{side}_features"] = names
                    self._report[f"data/n_{side}_features"] = float(tensor.shape[1])
        return self._feature_tensors

    def feature_encoders(self) -> dict[str, FeatureEncoder]:
        """The fitted encoders of the declared features (``user``, ``item``; none for automatically encoded ones):
        what a model bundle keeps to encode a new item's raw features as these were encoded."""
        self.feature_tensors()
        return self._feature_encoders

    def feature_names(self) -> dict[str, list[str]]:
        """The names of :meth:`feature_tensors`' columns (``occupation=writer``, ``genres=Comedy``, ``year``)."""
        self.feature_tensors()
        return self._feature_names

    def train_sequences(self) -> torch.Tensor:
        """``(2, n_train)`` user/item pairs of the training (and fold-in) interactions, grouped by user and in time
        order within each user (ties keep the data's order): what sequential models learn from."""
        parts = [self.split.train] + ([self.split.fold_in] if self.split.fold_in is not None else [])
        return torch.as_tensor(np.stack(self._chronological(parts)))

    def known_sequences(self) -> torch.Tensor:
        """``(2, n)`` pairs of every part (train, fold-in, validation, test) grouped by user in time order: what a
        served model that reads histories should see (everything known when it is shipped)."""
        split = self.split
        parts = [split.train, split.val, split.test] + ([split.fold_in] if split.fold_in is not None else [])
        return torch.as_tensor(np.stack(self._chronological(parts)))

    def time_features(self) -> dict[str, torch.Tensor]:
        """``user_time_features`` / ``item_time_features``: ``(n, 3)`` first, mean and last training timestamp
        of each user / item, scaled to [0, 1] over the training time range (0 for those without training data)."""
        train = self.split.train
        times = train["timestamp"].to_numpy(np.float64)
        lo, span = (times.min(), max(times.max() - times.min(), 1.0)) if len(times) else (0.0, 1.0)
        scaled = (times - lo) / span
        out = {}
        for key, n in (("user", self.n_users), ("item", self.n_items)):
            stats = pd.DataFrame({"k": train[key].to_numpy(), "t": scaled}).groupby("k")["t"].agg(["min", "mean", "max"])
            table = np.zeros((n, 3), np.float32)
            table[stats.index.to_numpy()] = stats.to_numpy(np.float32)
            out[f"{key}_time_features"] = torch.from_numpy(table)
        return out

    def model_kwargs(self, names: Collection[str] | None = None) -> dict:
        """Data-dependent constructor arguments; ``train(cfg)`` passes those a model's signature accepts. The
        costlier ones (time-ordered sequences, time features) are computed only when ``names`` (a constructor's
        parameter names; ``None``: all) asks for them."""
        train = self.split.train
        wanted = lambda key: names is None or key in names  # noqa: E731
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "global_mean": float(train["rating"].mean()),
            "item_popularity": torch.as_tensor(np.bincount(train["item"].to_numpy(), minlength=self.n_items)),
            # (2, n_train) user/item index pairs of the training split, e.g. for graph models' adjacency
            "interactions": torch.stack(self.train_tensors[:2]),
            "ratings": self.train_tensors[2],  # their (stored) ratings, in the same order
            # the training and fold-in pairs grouped by user in time order (sequential models)
            **({"sequences": self.train_sequences()} if wanted("sequences") else {}),
            **self.feature_tensors(),
            "n_context": len(context_names(self.context_columns)),   # context columns (data.context_columns)
            **(self.time_features() if wanted("user_time_features") or wanted("item_time_features") else {}),
        }

    def positive_keys(self) -> torch.Tensor:
        """Sorted ``user * n_items + item`` keys of the training pairs, for negative sampling."""
        keys = self.train_tensors[0] * self.n_items + self.train_tensors[1]
        return torch.sort(keys).values

    def seen_matrix(self) -> sp.csr_matrix:
        """Every (user, item) pair of train, validation and test: what serving never recommends again."""
        return self._matrix(pd.concat([self.split.train, self.split.val, self.split.test], ignore_index=True))

    # ---------------------------------------------------------------- loaders
    def _trainer_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def train_device(self) -> torch.device:
        """Where the training batches are drawn: the trainer's CUDA device under ``train_on_device``, else the host
        (also on Apple's MPS, which has no float64 for :class:`UserUniformBatches`)."""
        device = self._trainer_device()
        return device if self.train_on_device and device.type == "cuda" else torch.device("cpu")

    def train_dataloader(self) -> DataLoader:
        device = self.train_device()
        if self.train_view in ("users", "sequences", "items"):  # each training user (item) once per epoch
            if self.sample_users_uniformly:
                raise RecForgeError(f"datamodule.sample_users_uniformly=true draws interactions, but this model trains "
                                    f"on {self.train_view} rows (each once per epoch already); drop the override")
            ids = torch.unique(self.train_tensors[1 if self.train_view == "items" else 0]).to(device)
            dataset = ShuffledBatches((ids, ids, torch.ones(len(ids), device=device)), self.batch_size, self.seed)
        else:
            context = () if self.train_context is None else (self.train_context,)
            tensors = tuple(t.to(device) for t in self.train_tensors + context)
            kind = UserUniformBatches if self.sample_users_uniformly else ShuffledBatches
            dataset = kind(tensors, self.batch_size, self.seed)
        # batches copied from the host to a GPU: from page-locked memory, which Lightning copies without blocking
        return DataLoader(dataset, batch_size=None,
                          pin_memory=device.type == "cpu" and self._trainer_device().type == "cuda")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ListDataset(self.eval_shard("val")), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(ListDataset(self.eval_shard("test")), batch_size=None)

    def eval_shard(self, stage: str) -> list:
        """This process's evaluation batches: every ``world``-th from its rank on (all of them in one process).
        Batch ``k`` of rank ``r`` is batch ``k * world + r`` of the whole stage, which is how the module puts the
        gathered results back in order."""
        rank, world = process_rank()
        batches = self._eval_batches[stage]
        if 0 < len(batches) < world:  # every process needs at least one batch: split the chunks further
            parts = -(-world // len(batches))
            batches = [piece for batch in batches for piece in split_eval_batch(batch, parts)]
        return batches[rank::world]

    # ---------------------------------------------------------------- reports
    def data_report(self) -> dict[str, float]:
        """Counts and checks for tracking: sizes, leak and cold-start counts, preprocessing removals, timings."""
        split = self.split
        out = {"data/n_users": float(self.n_users), "data/n_items": float(self.n_items),
               "data/n_train": float(len(split.train)), "data/n_val": float(len(split.val)),
               "data/n_test": float(len(split.test))}
        if split.fold_in is not None:
            out["data/n_fold_in"] = float(len(split.fold_in))
        out.update({k: float(v) for k, v in self._report.items()})
        return dict(sorted(out.items()))

    def describe(self) -> dict:
        split = self.split
        return {
            "dataset": self.raw.name,
            "feedback": self.feedback,
            "users": self.n_users,
            "items": self.n_items,
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "fingerprint": self.fingerprint,
        }

    def stats(self) -> dict:
        """Dataset statistics after preprocessing (all parts together) and the split sizes."""
        parts = self.split.parts()
        users = np.concatenate([p["user"].to_numpy() for p in parts.values()])
        ratings = np.concatenate([p["rating"].to_numpy(np.float64) for p in parts.values()])
        per_user = np.bincount(users, minlength=self.n_users)
        counted = pd.Series(ratings).value_counts().sort_index()
        values, counts = counted.index.to_numpy(), counted.to_numpy()
        if len(values) <= 20:
            histogram = {f"{v:g}": int(c) for v, c in zip(values, counts)}
        else:
            hist, edges = np.histogram(ratings, bins=10)
            histogram = {f"[{lo:g}, {hi:g})": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], hist)}
        quantiles = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
        n = len(users)
        return {
            "dataset": self.raw.name,
            "feedback": self.feedback,
            "users": int(self.n_users),
            "items": int(self.n_items),
            "interactions": int(n),
            "density": n / max(self.n_users * self.n_items, 1),
            "rating_histogram": histogram,
            "interactions_per_user": {f"q{int(q * 100)}": float(np.quantile(per_user, q)) for q in quantiles}
            | {"mean": float(per_user.mean())},
            "split": {name: int(len(p)) for name, p in parts.items()},
            "fingerprint": self.fingerprint,
            "report": self.data_report(),
        }
