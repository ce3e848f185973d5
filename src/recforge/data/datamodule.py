"""The LightningDataModule: interaction tensors, index-slice batches and evaluation chunks."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from recforge.data.interactions import IdMaps, prepare
from recforge.data.sources.base import RawData, Source
from recforge.data.split import Split, check_no_leak
from recforge.errors import RecForgeError


class ShuffledBatches(IterableDataset):
    """Yields ``(users, items, ratings)`` batches as index slices of a permutation, new each epoch."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        self.tensors, self.batch_size, self.seed, self.epoch = tensors, batch_size, seed, 0

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.tensors[0]), generator=generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


class ListDataset(Dataset):
    """Precomputed batches; a DataLoader with ``batch_size=None`` hands them out one by one."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]


def csr_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zeros of ``rows`` as (local row, column, value) arrays, without a Python loop."""
    starts, ends = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = ends - starts
    local = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    positions = offsets + np.arange(lengths.sum())
    return local, matrix.indices[positions], matrix.data[positions]


class RecDataModule(pl.LightningDataModule):
    """Loads a source, prepares the chosen feedback view, splits it and serves tensors.

    Training batches are ``(users, items, ratings)`` index slices. Ranking evaluation batches are chunks
    of users sized so that ``chunk * n_items <= max_scores_in_memory``, each carrying the chunk's items
    to exclude (seen in training, and in validation at test time) and its relevant items with their
    ratings as gains. Rating evaluation batches are ``(users, items, ratings)`` slices.
    """

    def __init__(
        self,
        source: Source,
        splitter,
        feedback: str = "implicit",
        implicit_threshold: float | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 65536,
        max_scores_in_memory: int = 1 << 24,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise RecForgeError("datamodule.batch_size and datamodule.eval_batch_size must be positive")
        if max_scores_in_memory < 1:
            raise RecForgeError("datamodule.max_scores_in_memory must be positive")
        self.source, self.splitter = source, splitter
        self.feedback, self.implicit_threshold = feedback, implicit_threshold
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_scores_in_memory, self.seed = max_scores_in_memory, seed
        self.raw: RawData | None = None
        self.split: Split | None = None
        self.id_maps: IdMaps | None = None

    # ---------------------------------------------------------------- preparation
    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.raw = self.source.load()
        frame, self.id_maps = prepare(self.raw, self.feedback, self.implicit_threshold)
        self.n_users, self.n_items = len(self.id_maps.users), len(self.id_maps.items)
        self.split = self.splitter(frame)
        if len(self.split.train) == 0 or len(self.split.test) == 0:
            raise RecForgeError(f"split left train or test empty ({len(self.split.train)}/{len(self.split.test)} rows)")
        if len(self.split.val) == 0:
            raise RecForgeError("split produced an empty validation set; early stopping and the best checkpoint "
                                "need one (raise split.val_ratio, or use a split with validation)")
        check_no_leak(self.split, self.n_items)
        self.fingerprint = self.split.fingerprint(self.n_users, self.n_items)
        train = self.split.train
        self.train_tensors = (
            torch.as_tensor(train["user"].to_numpy()),
            torch.as_tensor(train["item"].to_numpy()),
            torch.as_tensor(train["rating"].to_numpy()),
        )
        self.train_matrix = self._matrix(train)
        seen_val = self.train_matrix + self._matrix(self.split.val)
        self._eval_batches = {
            "val": self._eval_batches_for(self.split.val, exclude=self.train_matrix),
            "test": self._eval_batches_for(self.split.test, exclude=seen_val),
        }

    def _matrix(self, part: pd.DataFrame) -> sp.csr_matrix:
        values = part["rating"].to_numpy(np.float32)
        values = np.where(values == 0, np.float32(1e-6), values)  # keep explicit zeros as stored entries
        return sp.csr_matrix((values, (part["user"].to_numpy(), part["item"].to_numpy())),
                             shape=(self.n_users, self.n_items))

    def _eval_batches_for(self, part: pd.DataFrame, exclude: sp.csr_matrix) -> list:
        if self.feedback == "explicit":
            tensors = [torch.as_tensor(part[c].to_numpy()) for c in ("user", "item", "rating")]
            return [tuple(t[s : s + self.eval_batch_size] for t in tensors)
                    for s in range(0, len(part), self.eval_batch_size)]
        relevant = self._matrix(part)
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        chunk = max(1, self.max_scores_in_memory // self.n_items)
        batches = []
        for start in range(0, len(users), chunk):
            rows = users[start : start + chunk]
            ex_rows, ex_cols, _ = csr_rows(exclude, rows)
            rel_rows, rel_cols, gains = csr_rows(relevant, rows)
            batches.append({
                "users": torch.as_tensor(rows, dtype=torch.long),
                "exclude_rows": torch.as_tensor(ex_rows, dtype=torch.long),
                "exclude_cols": torch.as_tensor(ex_cols, dtype=torch.long),
                "relevant_rows": torch.as_tensor(rel_rows, dtype=torch.long),
                "relevant_cols": torch.as_tensor(rel_cols, dtype=torch.long),
                "relevant_gains": torch.as_tensor(gains, dtype=torch.float32),
            })
        return batches

    # ---------------------------------------------------------------- what models are built from
    def model_kwargs(self) -> dict:
        """Data-dependent constructor arguments; ``train(cfg)`` passes those a model's signature accepts."""
        train = self.split.train
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "global_mean": float(train["rating"].mean()),
            "item_popularity": torch.as_tensor(np.bincount(train["item"].to_numpy(), minlength=self.n_items)),
        }

    def positive_keys(self) -> torch.Tensor:
        """Sorted ``user * n_items + item`` keys of the training pairs, for negative sampling."""
        keys = self.train_tensors[0] * self.n_items + self.train_tensors[1]
        return torch.sort(keys).values

    def item_popularity(self) -> torch.Tensor:
        return self.model_kwargs()["item_popularity"]

    # ---------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        dataset = ShuffledBatches(self.train_tensors, self.batch_size, self.seed)
        return DataLoader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ListDataset(self._eval_batches["val"]), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(ListDataset(self._eval_batches["test"]), batch_size=None)

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
