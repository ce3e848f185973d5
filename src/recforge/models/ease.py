"""EASE: a shallow item-item autoencoder fitted in closed form.

Steck. 2019. Embarrassingly Shallow Autoencoders for Sparse Data. WWW.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from recforge.models.base import RowInputRecommender
from recforge.utils.sparse import csr_indices, sparse_rows

CHUNK_ELEMENTS = 1 << 26  # 256 MB of float32: the dense column block a chunked sparse product holds at once
AUTO_FLOAT32_ITEMS = 20_000  # dtype="auto" solves in float32 from this many items (float64: 12 n^2 bytes = 4.8 GB)


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can use (``MemAvailable``), or None where it does not say."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def interaction_matrix(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                       device: torch.device | None = None) -> torch.Tensor:
    """The binary user-item matrix of the given pairs as a coalesced sparse COO tensor (duplicates count
    once)."""
    index = torch.stack([users.long(), items.long()]).to(device)
    matrix = torch.sparse_coo_tensor(index, torch.ones(index.shape[1], device=index.device), (n_users, n_items),
                                     check_invariants=False)
    matrix = matrix.coalesce()
    return torch.sparse_coo_tensor(matrix.indices(), torch.ones_like(matrix.values()), matrix.shape,
                                   is_coalesced=True, check_invariants=False)


def product_chunks(left: torch.Tensor, right: torch.Tensor,
                   chunk_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(cols, left @ right[:, cols])`` for consecutive column blocks of ``right``: sparse COO ``left`` and
    ``right``, dense ``(left.shape[0], len(cols))`` blocks, so that ``X^T X`` and its kin are never held whole
    unless the caller keeps them. ``chunk_size`` columns at a time (default: a 256 MB dense block)."""
    inner, n_cols = right.shape
    step = chunk_size or max(1, CHUNK_ELEMENTS // max(inner, left.shape[0], 1))
    for start in range(0, n_cols, step):
        cols = torch.arange(start, min(start + step, n_cols), device=right.device)
        yield cols, torch.sparse.mm(left, torch.index_select(right, 1, cols).to_dense())


def invert_spd_(matrix: torch.Tensor) -> torch.Tensor:
    """Overwrite a symmetric positive definite ``matrix`` with its inverse and return it.

    Cholesky factorisation and inverse (LAPACK's ``potrf`` and ``potri``, through torch: MKL on x86 CPUs) on
    the matrix's own memory: the transposed view is column-major over the same storage, and since the matrix is
    symmetric it is the matrix itself, so torch writes both results in place and no second ``n x n`` matrix is
    allocated. (SciPy's OpenBLAS crashed in ``potrf`` from about 37,000 items on: Gowalla's 40,981.)"""
    if matrix.device.type != "cpu":
        return matrix.copy_(torch.cholesky_inverse(torch.linalg.cholesky(matrix)))
    fortran = matrix.mT
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(fortran, out=(fortran, info))
    if int(info) != 0:
        raise ValueError(f"the matrix is not positive definite (LAPACK info {int(info)}); raise the regularisation")
    torch.cholesky_inverse(fortran, out=fortran)
    return matrix


class HistoryRecommender(RowInputRecommender):
    """A closed-form model that scores from the user's training history ``X`` (``score_all = X[users] @
    W``): ``X`` is kept as non-persistent CSR buffers rebuilt from ``interactions`` (and replaced by ``fit``),
    the fitted item-item weights live in persistent buffers."""

    requires_training = False
    feedbacks = ("implicit",)
    answers_histories = True  # a history is a row of X

    def set_history(self, users: torch.Tensor, items: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Keep the training rows for scoring; returns them as a sparse COO matrix for fitting."""
        self.history_indptr, self.history_indices = csr_indices(users.to(device), items.to(device), self.n_users,
                                                                self.n_items)
        return interaction_matrix(users, items, self.n_users, self.n_items, device)


class EASE(HistoryRecommender):
    """``B = argmin ||X - X B||^2 + l2_reg ||B||^2`` s.t. ``diag(B) = 0``, in closed form:
    ``P = (X^T X + l2_reg I)^-1``, ``B = I - P diag(1 / diag(P))`` (zero diagonal); scores are ``X_u B``.
    ``l2_reg`` of a few hundred suits MovieLens-100K-sized data (the paper uses 200-1000).

    ``dtype`` is the precision of the solve (the weights are kept in float32 either way). The Gram matrix is
    built ``X^T X`` column block by column block, and on the CPU it is inverted in place (:func:`invert_spd_`):

    * ``float32`` solves in the weights' own buffer: one ``n x n`` float32 matrix (4 n^2 bytes), plus the column
      blocks of the Gram product (at most 2 x 256 MB).
    * ``float64`` solves in a float64 matrix that is then copied into the weights: 12 n^2 bytes.
    * ``auto`` (the default): float64 below 20,000 items (ML-100K, Last.fm: results as before), float32 from
      there (Gowalla). The choice depends on the catalogue only, never on the machine, so a run is the same
      everywhere; a solve that would not fit in the memory the kernel reports available stops with an error
      naming ``model.dtype`` before it allocates (LAPACK killed by the kernel, or crashing, says nothing).

    Peak memory above the model before ``fit``, measured at 4,000 items (6,000 users, 300k interactions, 16 MB
    column blocks; the matrix is 61 MB): float32 108 MB, float64 218 MB (the previous float64 fit, two float64
    matrices and a dense ``X``: 294 MB). Extrapolated to Gowalla's 40,981 items (29,858 users): float32 6.7 GB
    plus under 1 GB of blocks, which fits the 24 GB machine; float64 about 21 GB, which does not leave room for
    the rest (the previous fit: about 38 GB), hence ``auto``. Measured on Gowalla with ``auto`` (float32): 14 GB
    peak for the whole run, the shipped bundle's copy of the weights included.
    On a 600-item example both precisions give the same top-10 for every user (``tests/unit/
    test_models_leaderboard.py``)."""

    def __init__(self, n_users: int, n_items: int, interactions: torch.Tensor | None = None,
                 l2_reg: float = 500.0, dtype: str = "auto") -> None:
        super().__init__(n_users, n_items, interactions)
        if l2_reg <= 0:
            raise ValueError("l2_reg must be positive")
        if dtype not in ("auto", "float32", "float64"):
            raise ValueError(f"dtype must be auto, float32 or float64, got {dtype!r}")
        if dtype == "auto":
            dtype = "float32" if n_items >= AUTO_FLOAT32_ITEMS else "float64"
        self.l2_reg, self.dtype = l2_reg, dtype
        self.register_buffer("weights", torch.zeros(n_items, n_items))

    def fit(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        device = self.weights.device
        need = (8 if self.dtype == "float64" else 0) * self.n_items**2 + 2 * CHUNK_ELEMENTS * 4
        free = available_memory() if device.type == "cpu" else None
        if free is not None and need > free:
            raise MemoryError(f"EASE's {self.dtype} solve at {self.n_items:,} items needs {need / 2**30:.1f} GB more "
                              f"and {free / 2**30:.1f} GB is available; set model.dtype=float32 (4 n^2 bytes) "
                              "or run on a machine with more memory")
        x = self.set_history(users, items, device)
        solve = self.weights if self.dtype == "float32" else torch.empty(self.n_items, self.n_items,
                                                                         dtype=torch.float64, device=device)
        for cols, block in product_chunks(x.t().coalesce(), x):
            solve[:, cols] = block.to(solve.dtype)  # X^T X, column block by column block
        solve.diagonal().add_(self.l2_reg)
        p = invert_spd_(solve)
        p.div_(p.diagonal().neg())  # column j divided by -P_jj
        p.diagonal().zero_()
        if p is not self.weights:
            self.weights.copy_(p)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        # the sum of the history items' rows of B: sparse rows times B costs (history entries) x n_items, not
        # len(users) x n_items^2 (Gowalla: about 1,500 times less than dense rows)
        rows = sparse_rows(self.history_indptr, self.history_indices, users, self.n_items)
        return torch.sparse.mm(rows, self.weights)

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.weights
