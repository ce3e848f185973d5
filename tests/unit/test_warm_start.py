"""Warm starts grow a trained model to new users and items by raw id."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recforge.errors import RecForgeError
from recforge.models.ease import EASE
from recforge.models.mf import MatrixFactorization
from recforge.tracking.bundle import save_bundle
from recforge.training.warm_start import grow_state, index_map, warm_start


def test_index_map_matches_raw_ids_across_dtypes():
    new_pos, old_pos = index_map(np.array([10, 20, 30]), np.array(["30", "40", "10"]))
    assert new_pos.tolist() == [0, 2] and old_pos.tolist() == [2, 0]


def test_mf_rows_follow_their_ids_and_new_rows_keep_fresh_init(tmp_path):
    torch.manual_seed(0)
    old = MatrixFactorization(n_users=3, n_items=4, embedding_dim=5)
    save_bundle(tmp_path, old, "recforge.models.mf.MatrixFactorization", {}, np.array(["a", "b", "c"]),
                np.array([100, 101, 102, 103]), sp.csr_matrix((3, 4)), {})
    new = MatrixFactorization(n_users=4, n_items=5, embedding_dim=5)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    users, items = np.array(["c", "a", "z", "b"]), np.array([103, 104, 100, 101, 102])
    report = warm_start(new, tmp_path, users, items)
    assert report == {"warm_start/known_users": 3, "warm_start/new_users": 1, "warm_start/known_items": 4,
                      "warm_start/new_items": 1}
    for name, table in (("user", new.user_embedding.weight), ("item", new.item_embedding.weight)):
        old_table = getattr(old, f"{name}_embedding").weight
        mapping = {0: 2, 1: 0, 3: 1} if name == "user" else {0: 3, 2: 0, 3: 1, 4: 2}
        for new_row, old_row in mapping.items():
            assert torch.equal(table[new_row], old_table[old_row])
    assert torch.equal(new.user_embedding.weight[2], fresh["user_embedding.weight"][2])  # user z: fresh init
    assert torch.equal(new.item_embedding.weight[1], fresh["item_embedding.weight"][1])  # item 104: fresh init


def test_item_by_item_matrices_grow_on_both_axes():
    old = {"B": torch.arange(9.0).view(3, 3)}
    grown = grow_state(old, {"B": torch.full((4, 4), -1.0)}, old_n_users=5, old_n_items=3,
                       users=(torch.arange(0), torch.arange(0)),
                       items=(torch.tensor([0, 1, 3]), torch.tensor([2, 0, 1])))
    expected = torch.full((4, 4), -1.0)
    for i, oi in zip([0, 1, 3], [2, 0, 1]):
        for j, oj in zip([0, 1, 3], [2, 0, 1]):
            expected[i, j] = old["B"][oi, oj]
    assert torch.equal(grown["B"], expected)


def test_mismatched_architecture_is_refused(tmp_path):
    save_bundle(tmp_path, MatrixFactorization(3, 4, embedding_dim=5), "x", {}, np.arange(3), np.arange(4),
                sp.csr_matrix((3, 4)), {})
    with pytest.raises(RecForgeError, match="shape"):
        warm_start(MatrixFactorization(3, 4, embedding_dim=8), tmp_path, np.arange(3), np.arange(4))
    with pytest.raises(RecForgeError, match="not a model bundle"):
        warm_start(EASE(3, 4), tmp_path / "nope", np.arange(3), np.arange(4))


def test_sequential_models_refuse_warm_start_with_a_clear_message(tmp_path):
    from recforge.models.sasrec import SASRec

    with pytest.raises(RecForgeError, match="sequential models.*init_from=null"):
        warm_start(SASRec(n_users=2, n_items=3), tmp_path, np.arange(2), np.arange(3))
