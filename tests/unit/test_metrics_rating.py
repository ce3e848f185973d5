"""Rating metrics against hand-computed values, with and without clipping, overall and per user."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.metrics import mae, per_user_rating_metrics, rating_errors, rmse

# 4 interactions of users [0, 0, 1, 1] on a 1..5 scale; user 2 has no rating
USERS = torch.tensor([0, 0, 1, 1])
PRED = torch.tensor([3.5, 5.5, 0.0, 4.0])
TARGET = torch.tensor([4, 5, 1, 4])  # integer ratings are fine


def test_rating_errors_with_and_without_clip():
    assert rating_errors(PRED, TARGET).tolist() == [-0.5, 0.5, -1.0, 0.0]
    # clipped predictions [3.5, 5.0, 1.0, 4.0]
    assert rating_errors(PRED, TARGET, clip=(1.0, 5.0)).tolist() == [-0.5, 0.0, 0.0, 0.0]
    assert rating_errors(PRED, TARGET).dtype == torch.float32
    assert rating_errors(torch.tensor([2, 3]), torch.tensor([1, 3])).tolist() == [1.0, 0.0]  # int pred -> float


def test_rmse_mae_hand_computed():
    # no clip: squared errors [0.25, 0.25, 1, 0] -> rmse sqrt(1.5 / 4) = sqrt(0.375) = 0.612372; mae 2 / 4 = 0.5
    assert rmse(PRED, TARGET).item() == pytest.approx(math.sqrt(0.375))
    assert mae(PRED, TARGET).item() == pytest.approx(0.5)
    # clip (1, 5): errors [-0.5, 0, 0, 0] -> rmse sqrt(0.25 / 4) = 0.25; mae 0.5 / 4 = 0.125
    assert rmse(PRED, TARGET, clip=(1, 5)).item() == pytest.approx(0.25)
    assert mae(PRED, TARGET, clip=(1, 5)).item() == pytest.approx(0.125)
    assert rmse(PRED, TARGET).dim() == 0
    assert math.isnan(rmse(torch.zeros(0), torch.zeros(0)).item())


def test_per_user_hand_computed():
    out = per_user_rating_metrics(USERS, PRED, TARGET, n_users=3)
    # user 0 errors [-0.5, 0.5]: rmse sqrt(0.5 / 2) = 0.5, mae 0.5
    # user 1 errors [-1, 0]: rmse sqrt(1 / 2) = 0.7071, mae 0.5; user 2: NaN
    assert out["rmse"][:2].tolist() == pytest.approx([0.5, math.sqrt(0.5)])
    assert out["mae"][:2].tolist() == pytest.approx([0.5, 0.5])
    assert out["rmse"][2].isnan() and out["mae"][2].isnan()
    clipped = per_user_rating_metrics(USERS, PRED, TARGET, n_users=3, clip=(1.0, 5.0))
    # user 0 errors [-0.5, 0]: rmse sqrt(0.25 / 2) = 0.35355, mae 0.25; user 1 errors [0, 0]
    assert clipped["rmse"][:2].tolist() == pytest.approx([math.sqrt(0.125), 0.0])
    assert clipped["mae"][:2].tolist() == pytest.approx([0.25, 0.0])


def test_per_user_order_independent():
    perm = torch.tensor([3, 1, 0, 2])
    a = per_user_rating_metrics(USERS, PRED, TARGET, 3)
    b = per_user_rating_metrics(USERS[perm], PRED[perm], TARGET[perm], 3)
    for name in ("rmse", "mae"):
        torch.testing.assert_close(a[name], b[name], equal_nan=True)
