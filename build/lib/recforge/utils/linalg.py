"""Dense products on the scoring path."""

from __future__ import annotations

import torch


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
