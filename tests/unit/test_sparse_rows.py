"""CSR row access (used by history models and ensembles) against scipy, and inside inference mode."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recforge.models.base import row_linear
from recforge.models.ease import EASE
from recforge.utils.sparse import csr_indices, dense_rows


def test_dense_rows_equal_scipy_including_duplicates_and_rows_past_the_end():
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 50, 400), rng.integers(0, 30, 400)
    indptr, indices = csr_indices(torch.as_tensor(rows), torch.as_tensor(cols), 50, 30)
    expected = (sp.csr_matrix((np.ones(400), (rows, cols)), shape=(50, 30)).toarray() > 0).astype(np.float32)
    pick = torch.tensor([3, 0, 49, 3, 60])  # 60: a user the matrix does not have -> empty row
    got = dense_rows(indptr, indices, pick, 30).numpy()
    assert np.array_equal(got[:4], expected[[3, 0, 49, 3]]) and not got[4].any()


def test_ease_scores_inside_inference_mode_at_movielens_scale():
    # regression: sparse index_select failed under torch.inference_mode on a 100k-interaction matrix
    rng = np.random.default_rng(1)
    users, items = torch.as_tensor(rng.integers(0, 943, 100_000)), torch.as_tensor(rng.integers(0, 1682, 100_000))
    model = EASE(943, 1682, l2_reg=500.0)
    model.fit(users, items, torch.ones(len(users)))
    with torch.inference_mode():
        scores = model.score_all(torch.arange(0, 943, 7))
    x = torch.zeros(943, 1682)
    x[users, items] = 1
    assert torch.allclose(scores, x[torch.arange(0, 943, 7)] @ model.weights, atol=1e-5)


def test_row_linear_takes_the_sparse_product_for_sparse_rows_with_the_dense_values_and_gradients(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(2_000, 16)
    rows = torch.zeros(8, 2_000)
    rows[torch.arange(8).repeat_interleave(5), torch.randint(0, 2_000, (40,))] = torch.rand(40)  # 0.25% non-zero
    expected = layer(rows)
    expected.square().sum().backward()
    dense_grads = layer.weight.grad.clone(), layer.bias.grad.clone()
    layer.zero_grad()
    calls = []
    sparse_mm = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm", lambda *a: calls.append(1) or sparse_mm(*a))
    got = row_linear(rows, layer)
    got.square().sum().backward()
    assert calls == [1]
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close((layer.weight.grad, layer.bias.grad), dense_grads)
    with torch.inference_mode():
        torch.testing.assert_close(row_linear(rows, layer), expected.detach())
    assert calls == [1, 1]
    dense = torch.rand(8, 2_000)  # every entry non-zero: the dense product
    assert torch.equal(row_linear(dense, layer), layer(dense)) and calls == [1, 1]
