"""Dense products on the scoring path."""

from __future__ import annotations

import torch


def candidates_by_product(candidates: torch.Tensor, n_items: int) -> bool:
    """Whether ``(B, k)`` candidates a row are best scored by one ``(B, d) x (d, n_items)`` product whose columns
    are then picked, rather than by a ``(B, k, d)`` gather of their vectors: when ``k * 128 >= n_items``. The gather
    moves memory, the product computes: a training step of 1,024 rows, 1,000 candidates each, took 0.26 s by the
    product and 2.5 s by the gather on Last.fm's 17,632 items (4.2x on Gowalla's 40,981), and the two broke even near
    150 items a candidate (``scripts/bench_candidates.py``, SimpleX, one thread of a 2-core Intel Xeon beside two
    other runs)."""
    return candidates.dim() == 2 and candidates.shape[1] * 128 >= n_items


def inner_products(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``queries @ items.T``: (B, d) query vectors against (N, d) item vectors, a fresh (B, N) score matrix.

    When no gradient is needed and both are float32 on a CPU (evaluation, serving), the product goes through
    numpy's BLAS (OpenBLAS): on the 2-core AMD EPYC this project benchmarks on it runs the thin ``d = 64`` products
    of full-ranking evaluation at 52-102 GFLOPS against 21-55 for torch's MKL sgemm (``scripts/bench_eval.py``).
    The result is the same product up to float rounding. numpy's BLAS is held to torch's thread count
    (``torch.set_num_threads``, a server's ``--threads``, a DDP process's share), through ``threadpoolctl``.
    Anywhere else (autograd, GPU, other dtypes, no ``threadpoolctl``) it is ``torch.matmul``.
    """
    if (queries.device.type == "cpu" and items.device.type == "cpu" and queries.dtype == torch.float32
            and items.dtype == torch.float32 and queries.dim() == 2 and items.dim() == 2
            and not (torch.is_grad_enabled() and (queries.requires_grad or items.requires_grad))
            and _blas_threads_follow_torch()):
        return torch.from_numpy(queries.detach().numpy() @ items.detach().numpy().T)
    return queries @ items.T


def with_shared_products(queries: torch.Tensor, positives: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + n)``: each ``(B, d)`` query with its own ``(B, d)`` positive vector, then with every ``(n, d)`` shared
    negative vector (``score_with_shared`` of SimpleX and the two-tower model: the queries computed once for both,
    so a dropout in them is one draw)."""
    return torch.cat([(queries * positives).sum(-1, keepdim=True), inner_products(queries, shared)], dim=1)


_blas_threads: list[int] = []  # the count numpy's BLAS was last limited to


def _blas_threads_follow_torch() -> bool:
    """Limit the BLAS libraries' threads to torch's intra-op thread count (again only when that changes)."""
    n = torch.get_num_threads()
    if _blas_threads != [n]:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy's BLAS would use every core whatever torch was told: stay with torch
            return False
        threadpool_limits(limits=n, user_api="blas")
        _blas_threads[:] = [n]
    return True
