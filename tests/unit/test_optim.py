"""LazyAdam against torch's Adam (dense gradients) and SparseAdam (sparse gradients)."""

from __future__ import annotations

import pytest
import torch

from recforge.training.optim import LazyAdam


def run(optimizer_cls, sparse: bool, steps: int = 5, **kwargs) -> torch.Tensor:
    torch.manual_seed(0)
    table = torch.nn.Embedding(10, 4, sparse=sparse)
    optimizer = optimizer_cls(table.parameters(), lr=0.1, **kwargs)
    for step in range(steps):
        rows = torch.tensor([1, 3, 3, 7]) if step % 2 == 0 else torch.tensor([0, 3])  # duplicates add up
        optimizer.zero_grad()
        (table(rows) ** 2).sum().backward()
        optimizer.step()
    return table.weight.detach()


@pytest.mark.parametrize("fused", [None, False])
def test_dense_gradients_follow_torch_adam(fused):
    assert torch.allclose(run(LazyAdam, sparse=False, fused=fused), run(torch.optim.Adam, sparse=False), atol=1e-6)
    assert torch.allclose(run(LazyAdam, sparse=False, weight_decay=0.01, fused=fused),
                          run(torch.optim.Adam, sparse=False, weight_decay=0.01), atol=1e-6)


@pytest.mark.parametrize("fused", [None, False])
def test_sparse_gradients_follow_torch_sparse_adam_and_leave_other_rows_alone(fused):
    lazy, reference = run(LazyAdam, sparse=True, fused=fused), run(torch.optim.SparseAdam, sparse=True)
    assert torch.allclose(lazy, reference, atol=1e-6)
    torch.manual_seed(0)
    untouched = torch.nn.Embedding(10, 4).weight.detach()
    for row in (2, 4, 5, 6, 8, 9):  # never looked up: unchanged
        assert torch.equal(lazy[row], untouched[row])
    assert not torch.equal(lazy[3], untouched[3])


def test_fused_kernel_and_spelled_out_update_agree_with_weight_decay():
    fused = run(LazyAdam, sparse=True, steps=20, weight_decay=0.05)
    plain = run(LazyAdam, sparse=True, steps=20, weight_decay=0.05, fused=False)
    assert torch.allclose(fused, plain, atol=1e-6)
    assert not torch.equal(plain, run(LazyAdam, sparse=True, steps=20, fused=False))  # the decay did something


@pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="this torch has no fused Adam kernel")
def test_fused_none_uses_the_kernel_on_cpu_and_false_does_not(monkeypatch):
    calls = []
    kernel = torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    run(LazyAdam, sparse=True, steps=3)
    assert len(calls) == 3
    run(LazyAdam, sparse=True, steps=3, fused=False)
    assert len(calls) == 3
