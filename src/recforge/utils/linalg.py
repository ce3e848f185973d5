"""Dense products on the scoring path."""

from __future__ import annotations

import torch


def inner_products(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``queries @ items.T``: (B, d) query vectors against (N, d) item vectors, a fresh (B, N) score matrix.

    When no gradient is needed and both are float32 on a CPU (evaluation, serving), the product goes through
    numpy's BLAS (OpenBLAS): on the 2-core AMD EPYC this project benchmarks on it runs the thin ``d = 64`` products
    of full-ranking evaluation at 52-102 GFLOPS against 21-55 for torch's MKL sgemm (``scripts/bench_eval.py``).
    The result is the same product up to float rounding. Anywhere else (autograd, GPU,
    other dtypes) it is ``torch.matmul``.
    """
    if (queries.device.type == "cpu" and items.device.type == "cpu" and queries.dtype == torch.float32
            and items.dtype == torch.float32 and queries.dim() == 2 and items.dim() == 2
            and not (torch.is_grad_enabled() and (queries.requires_grad or items.requires_grad))):
        return torch.from_numpy(queries.detach().numpy() @ items.detach().numpy().T)
    return queries @ items.T
