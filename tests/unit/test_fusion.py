"""Fusion maths against hand-computed values, the ensemble model against the fusion functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recforge.models.fusion import fuse, normalize_weights, ranks, simplex_grid, transform
from recforge.ensemble.runner import search_weights
from recforge.models.ensemble import EnsembleRecommender

NEG = float("-inf")
# one user, 4 items; item 3 is excluded (seen)
ROW = torch.tensor([[2.0, 4.0, 1.0, NEG]])


def test_ranks_follow_the_evaluator_tie_policy():
    scores = torch.tensor([[1.0, 3.0, 3.0, NEG, 0.5]])
    assert ranks(scores).tolist() == [[3.0, 1.0, 2.0, 5.0, 4.0]]  # tie 3.0: lower item index first


@pytest.mark.parametrize("method,normalization,expected", [
    ("score", "minmax", [1 / 3, 1.0, 0.0, 0.0]),                       # (s - 1) / (4 - 1)
    ("score", "rank", [0.5, 1.0, 0.0, 0.0]),                           # ranks 2, 1, 3 of n=3
    ("rrf", "minmax", [1 / 62, 1 / 61, 1 / 63, 0.0]),
    ("borda", "minmax", [1.0, 2.0, 0.0, 0.0]),                         # n - r
])
def test_transform_hand_computed(method, normalization, expected):
    out = transform(ROW, method, normalization, rrf_k=60)
    assert out[0].tolist() == pytest.approx(expected)


def test_zscore_uses_only_recommendable_items():
    out = transform(ROW, "score", "zscore")[0]
    mean, std = 7 / 3, math.sqrt(((2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2 + (1 - 7 / 3) ** 2) / 3)
    assert out.tolist() == pytest.approx([(2 - mean) / std, (4 - mean) / std, (1 - mean) / std, 0.0])


def test_vote_counts_top_depth_and_breaks_ties_by_reciprocal_rank():
    out = transform(ROW, "vote", vote_depth=2, rrf_k=60)[0]
    assert out.tolist() == pytest.approx([1 + 1e-3 / 62, 1 + 1e-3 / 61, 1e-3 / 63, 0.0])


def test_constant_row_normalises_to_zero():
    row = torch.tensor([[3.0, 3.0, NEG]])
    assert transform(row, "score", "minmax")[0].tolist() == [0.0, 0.0, 0.0]
    assert transform(row, "score", "zscore")[0].tolist() == [0.0, 0.0, 0.0]


def test_rrf_fusion_of_two_rankings_by_hand():
    a = torch.tensor([[3.0, 2.0, 1.0]])   # ranks item0 > item1 > item2
    b = torch.tensor([[2.0, 1.0, 3.0]])   # ranks item2 > item0 > item1
    fused = fuse([transform(a, "rrf", rrf_k=60), transform(b, "rrf", rrf_k=60)], [1.0, 1.0])[0]
    assert fused.tolist() == pytest.approx([1 / 61 + 1 / 62, 1 / 62 + 1 / 63, 1 / 63 + 1 / 61])
    assert torch.argsort(fused, descending=True).tolist() == [0, 2, 1]
    # Borda: item0 2+1, item1 1+0, item2 0+2; weights 1:3 make member b decide the order
    borda = fuse([transform(a, "borda"), transform(b, "borda")], [1.0, 3.0])[0]
    assert borda.tolist() == pytest.approx([2 + 3 * 1, 1 + 0, 0 + 3 * 2])


def test_fuse_masks_excluded_and_checks_weights():
    values = torch.ones(2, 1, 3)
    out = fuse(values, [0.5, 0.5], excluded=torch.tensor([[False, True, False]]))
    assert out.tolist() == [[1.0, NEG, 1.0]]
    with pytest.raises(ValueError, match="one weight per member"):
        fuse(values, [1.0])


def test_weights_and_grid():
    assert normalize_weights([1, 3]) == [0.25, 0.75]
    with pytest.raises(ValueError):
        normalize_weights([0, 0])
    grid = simplex_grid(3, 0.5)
    assert len(grid) == 6 and [1.0, 0.0, 0.0] in grid and [0.5, 0.0, 0.5] in grid
    assert all(sum(w) == pytest.approx(1) for w in grid)


def test_search_weights_finds_the_grid_optimum_and_starts_optuna_from_each_member():
    target = np.array([0.2, 0.8])

    def score(w):
        return -float(np.abs(np.array(w) - target).sum())

    grid = search_weights(score, 2, "grid", grid_step=0.1)
    assert [grid.loc[0, "w0"], grid.loc[0, "w1"]] == pytest.approx([0.2, 0.8])
    tpe = search_weights(lambda w: w[1], 2, "optuna", n_trials=5, seed=0)
    assert len(tpe) == 5 and tpe.loc[0, "value"] == pytest.approx(1.0)  # member 1 alone was tried
    fixed = search_weights(score, 2, "none", weights=[1, 1])
    assert fixed.loc[0, ["w0", "w1"]].tolist() == [0.5, 0.5]


class Fixed(torch.nn.Module):
    """A member with fixed scores (state: the score table), for checking the ensemble model."""

    def __init__(self, n_users: int, n_items: int, seed: int = 0) -> None:
        super().__init__()
        self.n_items = n_items
        self.register_buffer("table", torch.randn(n_users, n_items, generator=torch.Generator().manual_seed(seed)))

    def score_all(self, users):
        return self.table[users].clone()


@pytest.mark.parametrize("method", ["score", "rrf", "borda", "vote"])
def test_ensemble_model_equals_fusion_of_members(method, tmp_path, monkeypatch):
    import scipy.sparse as sp

    from recforge.tracking.bundle import Bundle, save_bundle
    from recforge.utils import trust

    monkeypatch.setattr(trust, "_registered", {f"{__name__}.Fixed"})  # a user's own class, trusted explicitly

    members = [{"target": f"{__name__}.Fixed", "kwargs": {"n_users": 5, "n_items": 7, "seed": s}} for s in (1, 2)]
    exclude = torch.tensor([[0, 0, 3], [1, 4, 6]])
    model = EnsembleRecommender(members, [1.0, 3.0], 7, method=method, normalization="zscore", vote_depth=3,
                                exclude=exclude)
    for m in model.members:  # trained state differs from a fresh build: the bundle must carry it
        m.table.mul_(2).add_(torch.arange(7.0))
    users = torch.tensor([0, 3, 4])
    excluded = torch.zeros(3, 7, dtype=torch.bool)
    excluded[0, [1, 4]] = excluded[1, 6] = True
    assert torch.equal(model.excluded(users), excluded)
    expected = fuse([transform(m.score_all(users).masked_fill(excluded, NEG), method, "zscore", 60.0, 3)
                     for m in model.members], [0.25, 0.75], excluded)
    assert torch.equal(model.score_all(users), expected)
    # a bundle round trip serves the same scores: member weights are the ensemble's state
    save_bundle(tmp_path, model, "recforge.models.ensemble.EnsembleRecommender",
                {"members": members, "weights": [1.0, 3.0], "n_items": 7, "method": method,
                 "normalization": "zscore", "vote_depth": 3, "exclude": exclude},
                np.arange(5), np.arange(7), sp.csr_matrix((5, 7)), {})
    reloaded = Bundle.load(tmp_path).model
    assert torch.equal(reloaded.score_all(users), expected)
