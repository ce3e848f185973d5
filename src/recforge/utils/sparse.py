"""Row access to a sparse 0/1 matrix held as CSR index tensors, with plain tensor ops.

``torch.index_select`` on a sparse COO tensor fails inside ``torch.inference_mode`` (as Lightning evaluates)
once the matrix is large (seen with torch 2.13 on MovieLens-100K: "Inplace update to inference tensor"), so
models and ensembles read rows through these helpers instead.
"""

from __future__ import annotations

import warnings

import torch


def row_pointers(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR ``indptr`` (``n_rows + 1``) of entries grouped by row, given each entry's row."""
    counts = torch.bincount(rows.long(), minlength=n_rows)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def csr_indices(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indptr, indices)`` of the unique (row, col) pairs, columns sorted within each row."""
    keys = torch.unique(rows.long() * n_cols + cols.long())  # sorted: by row, then column
    return row_pointers(torch.div(keys, n_cols, rounding_mode="floor"), n_rows), keys % n_cols


def dense_rows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, n_cols: int,
               dtype: torch.dtype = torch.float32, values: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(rows), n_cols)``: 1 (``True``), or the entry's value from ``values`` (aligned with ``indices``), at
    each stored entry of the selected rows; rows past the matrix are empty."""
    rows = rows.to(indptr.device).long()
    out = torch.zeros(len(rows), n_cols, dtype=dtype, device=indptr.device)
    if not len(rows) or len(indptr) < 2:
        return out
    lengths, positions = row_entries(indptr, rows)
    local = torch.repeat_interleave(torch.arange(len(rows), device=out.device), lengths)
    out[local, indices[positions]] = 1 if values is None else values[positions].to(dtype)
    return out


def sparse_rows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The selected rows as a sparse COO ``(len(rows), n_cols)`` tensor of ones (each row's entries in stored
    order): ``torch.sparse.mm(sparse_rows(...), dense)`` costs (stored entries) x ``dense.shape[1]``, where the
    dense rows' product costs ``len(rows) x n_cols`` times that width."""
    rows = rows.to(indptr.device).long()
    lengths, positions = row_entries(indptr, rows)
    local = torch.repeat_interleave(torch.arange(len(rows), device=indptr.device), lengths)
    index = torch.stack([local, indices[positions].long()])
    return torch.sparse_coo_tensor(index, torch.ones(len(positions), device=indptr.device), (len(rows), n_cols),
                                   check_invariants=False)


def row_entries(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lengths, positions)``: each selected CSR row's number of entries (0 for rows past the matrix) and the
    positions of their entries in ``indices``, row after row."""
    n_stored_rows = len(indptr) - 1
    inside = (rows >= 0) & (rows < n_stored_rows)
    safe = rows.clamp(0, max(n_stored_rows - 1, 0))
    starts = indptr[safe]
    lengths = torch.where(inside, indptr[safe + 1] - starts, torch.zeros_like(starts))
    positions = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths) + torch.arange(
        int(lengths.sum()), device=rows.device)
    return lengths, positions


def to_csr(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (sparse COO) as sparse CSR, without PyTorch's warning that CSR support is beta: CSR @ dense is
    the fast path on CPU and GPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return matrix.to_sparse_csr()
