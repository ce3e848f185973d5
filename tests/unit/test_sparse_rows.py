"""CSR row access (used by history models and ensembles) against scipy, and inside inference mode."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

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
