"""inner_products: the same product as torch's matmul, through numpy on a CPU only where no gradient is needed."""

from __future__ import annotations

import torch

from recforge.utils.linalg import inner_products


def test_equals_matmul_without_and_with_autograd():
    torch.manual_seed(0)
    queries, items = torch.randn(7, 16), torch.randn(50, 16)
    with torch.no_grad():
        scores = inner_products(queries, items)
    assert scores.shape == (7, 50) and scores.dtype == torch.float32
    assert torch.allclose(scores, queries @ items.T, atol=1e-5)
    scores[0, 0] = 123.0  # a fresh, writable matrix: the evaluator masks it in place
    assert queries[0, 0].item() != 123.0

    queries.requires_grad_()
    with_grad = inner_products(queries, items)
    assert with_grad.grad_fn is not None
    with_grad.sum().backward()
    assert torch.allclose(queries.grad, items.sum(0).expand(7, -1), atol=1e-5)
    with torch.no_grad():  # parameters that require grad, under no_grad (evaluation): the numpy path
        assert inner_products(queries, items).grad_fn is None


def test_other_dtypes_and_empty_batches():
    queries, items = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(inner_products(queries, items), queries @ items.T)
    assert inner_products(torch.empty(0, 4), torch.randn(5, 4)).shape == (0, 5)
