"""What the data module hands the trainer: training batches as index slices of a per-epoch permutation (or of
user-first draws), and evaluation batches of users with their excluded and relevant items."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from recforge.utils.distributed import process_rank


class ShuffledBatches(IterableDataset):
    """Yields ``(users, items, ratings)`` batches as index slices of a permutation, new each epoch.

    Under distributed training every process draws the same permutation (same seed and epoch) and takes every
    ``world``-th batch from its rank on: the processes see disjoint batches that together cover the epoch. The
    last round is padded by wrapping around to the first batches, so every process takes the same number of
    steps (DDP synchronises each one), as ``DistributedSampler`` pads.

    The permutation is drawn where the tensors are (a GPU's generator when the data module put them on one: a
    kernel instead of a host permutation of every row, ~10-30 ms for 810k rows), except under distributed training:
    a GPU's random kernels give different draws on different GPU models (their launch grid follows the number of
    multiprocessors), so there it is drawn by the host's generator, the same in every process, and copied over.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        self.tensors, self.batch_size, self.seed, self.epoch = tensors, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The next pass yields epoch ``epoch``'s permutation (the training module calls it at each epoch's
        start, so a resumed fit continues with the permutation an uninterrupted one would draw)."""
        self.epoch = epoch

    def _n_batches(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __len__(self) -> int:
        return -(-self._n_batches() // process_rank()[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.batches(*process_rank())

    def epoch_rows(self, generator: torch.Generator) -> torch.Tensor:
        """The rows of ``tensors`` one epoch visits, in order: a permutation of all of them."""
        return torch.randperm(len(self.tensors[0]), generator=generator, device=generator.device)

    def batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, ...]]:
        device = self.tensors[0].device
        generator = torch.Generator(device=device if world == 1 else "cpu").manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = self.epoch_rows(generator)
        n_batches, size = self._n_batches(), self.batch_size
        mine = [order[b * size : (b + 1) * size] for b in
                ((k * world + rank) % n_batches for k in range(-(-n_batches // world)))]
        # this process's rows gathered once per epoch, then cut into its batches: ~4x cheaper than a gather per
        # batch from random rows
        index = (order if world == 1 else torch.cat(mine)).to(device)
        rows = tuple(t[index] for t in self.tensors)
        yield from zip(*(r.split([len(m) for m in mine]) for r in rows))


class UserUniformBatches(ShuffledBatches):
    """Training examples drawn user first: a user uniformly among those with training interactions, then one of
    that user's training interactions uniformly, as many per epoch as there are training interactions. This is
    the sampler of the NGCF and LightGCN reference code; it weighs every user alike, as per-user averaged metrics
    do, where a shuffle of the interactions weighs users by their activity. Batches as :class:`ShuffledBatches`
    (also under DDP)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int) -> None:
        by_user = torch.argsort(tensors[0], stable=True)
        super().__init__(tuple(t[by_user] for t in tensors), batch_size, seed)
        _, self.counts = torch.unique_consecutive(self.tensors[0], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def epoch_rows(self, generator: torch.Generator) -> torch.Tensor:
        n, device = len(self.tensors[0]), generator.device
        counts, starts = self.counts.to(device), self.starts.to(device)
        users = torch.randint(len(counts), (n,), generator=generator, device=device)
        offsets = (torch.rand(n, generator=generator, dtype=torch.float64, device=device) * counts[users]).long()
        return starts[users] + offsets


def split_eval_batch(batch, parts: int) -> list:
    """Split an evaluation batch into ``parts`` consecutive pieces (per-user results do not depend on chunking):
    a ranking chunk by its users (row indices rebased), a rating batch by its rows."""
    if isinstance(batch, (tuple, list)):
        return [tuple(pieces) for pieces in zip(*(torch.tensor_split(t, parts) for t in batch))]
    out = []
    for rows in torch.tensor_split(torch.arange(len(batch["users"])), parts):
        if not len(rows):
            continue
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        piece = {"users": batch["users"][lo:hi]}
        if "context" in batch:  # the users' query context
            piece["context"] = batch["context"][lo:hi]
        for prefix, extra in (("exclude", ()), ("relevant", ("relevant_gains",)), ("later", ()),
                              ("pair", ("pair_labels", "pair_context"))):
            if f"{prefix}_rows" not in batch:
                continue
            inside = (batch[f"{prefix}_rows"] >= lo) & (batch[f"{prefix}_rows"] < hi)
            piece[f"{prefix}_rows"] = batch[f"{prefix}_rows"][inside] - lo
            piece[f"{prefix}_cols"] = batch[f"{prefix}_cols"][inside]
            for key in extra:
                if key in batch:
                    piece[key] = batch[key][inside]
        for key in ("candidate_items", "candidate_order"):
            if key in batch:
                piece[key] = batch[key]
        out.append(piece)
    return out


class ListDataset(Dataset):
    """Precomputed batches; a DataLoader with ``batch_size=None`` hands them out one by one."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]


def chunk_batches(
    exclude_indptr, exclude_indices, relevant_indptr, relevant_indices, relevant_data, n_items: int,
    max_scores_in_memory: int, later_indptr=None, later_indices=None,
) -> list[dict[str, torch.Tensor]]:
    """Evaluation batches from CSR arrays (numpy or torch) of excluded and relevant items, one user per row, and
    optionally of ``later`` items (``later_rows`` / ``later_cols``: a validation user's test items, which a sampled
    protocol must not draw as negatives although they are neither masked nor relevant yet).

    Users without relevant items are skipped; chunks hold ``max(1, max_scores_in_memory // n_items)`` users.
    """
    ex_ptr, ex_idx = np.asarray(exclude_indptr), np.asarray(exclude_indices)
    rel_ptr, rel_idx, rel_val = np.asarray(relevant_indptr), np.asarray(relevant_indices), np.asarray(relevant_data)
    later_ptr, later_idx = (None, None) if later_indptr is None else (np.asarray(later_indptr),
                                                                        np.asarray(later_indices))
    users = np.flatnonzero(np.diff(rel_ptr) > 0)
    chunk = max(1, int(max_scores_in_memory) // max(1, n_items))

    def rows_of(indptr, rows):
        starts, ends = indptr[rows], indptr[rows + 1]
        lengths = ends - starts
        local = np.repeat(np.arange(len(rows)), lengths)
        positions = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths) + np.arange(
            lengths.sum())
        return local, positions

    batches = []
    for start in range(0, len(users), chunk):
        rows = users[start : start + chunk]
        ex_local, ex_pos = rows_of(ex_ptr, rows)
        rel_local, rel_pos = rows_of(rel_ptr, rows)
        batches.append({
            "users": torch.as_tensor(rows, dtype=torch.long),
            "exclude_rows": torch.as_tensor(ex_local, dtype=torch.long),
            "exclude_cols": torch.as_tensor(ex_idx[ex_pos], dtype=torch.long),
            "relevant_rows": torch.as_tensor(rel_local, dtype=torch.long),
            "relevant_cols": torch.as_tensor(rel_idx[rel_pos], dtype=torch.long),
            "relevant_gains": torch.as_tensor(rel_val[rel_pos], dtype=torch.float32),
        })
        if later_ptr is not None:
            later_local, later_pos = rows_of(later_ptr, rows)
            batches[-1]["later_rows"] = torch.as_tensor(later_local, dtype=torch.long)
            batches[-1]["later_cols"] = torch.as_tensor(later_idx[later_pos], dtype=torch.long)
    return batches
