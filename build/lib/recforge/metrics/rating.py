"""Rating-prediction metrics (RMSE, MAE), overall and per user, on tensors. Imports only torch.

Errors are ``pred - target`` after optionally clipping ``pred`` to the rating range ``clip = (low, high)``.
Outputs are floating point in the promoted dtype of ``pred`` and ``target`` (integer inputs become float32).
NaN policy: an empty input gives NaN; per user, users without ratings get NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rating_errors", "error_metrics", "per_user_error_metrics", "rmse", "mae", "per_user_rating_metrics"]


def rating_errors(pred: Tensor, target: Tensor, clip: tuple[float, float] | None = None) -> Tensor:
    """Per-interaction prediction error ``pred - target`` after optional clipping of ``pred`` to ``clip``."""
    if not pred.is_floating_point():
        pred = pred.float()
    if clip is not None:
        pred = pred.clamp(min=clip[0], max=clip[1])
    return pred - target.to(pred.device)


def error_metrics(errors: Tensor) -> dict[str, Tensor]:
    """``{'rmse', 'mae'}`` (0-dim tensors) of per-interaction errors."""
    return {"rmse": errors.square().mean().sqrt(), "mae": errors.abs().mean()}


def per_user_error_metrics(users: Tensor, errors: Tensor, n_users: int) -> dict[str, Tensor]:
    """``{'rmse', 'mae', 'n'}``, each ``(n_users,)``: every user's errors aggregated with ``index_add_``
    (``users[j]`` is the user of interaction j, in ``[0, n_users)``); users without ratings get NaN and n 0."""
    users = users.to(errors.device, torch.long)
    n = torch.bincount(users, minlength=n_users)
    count = n.to(errors.dtype)
    sse = errors.new_zeros(n_users).index_add_(0, users, errors.square())
    sae = errors.new_zeros(n_users).index_add_(0, users, errors.abs())
    return {"rmse": (sse / count).sqrt(), "mae": sae / count, "n": n}


def rmse(pred: Tensor, target: Tensor, clip: tuple[float, float] | None = None) -> Tensor:
    """Root mean squared error over all interactions (0-dim tensor)."""
    return error_metrics(rating_errors(pred, target, clip))["rmse"]


def mae(pred: Tensor, target: Tensor, clip: tuple[float, float] | None = None) -> Tensor:
    """Mean absolute error over all interactions (0-dim tensor)."""
    return error_metrics(rating_errors(pred, target, clip))["mae"]


def per_user_rating_metrics(
    users: Tensor, pred: Tensor, target: Tensor, n_users: int, clip: tuple[float, float] | None = None
) -> dict[str, Tensor]:
    """``{'rmse': (n_users,), 'mae': (n_users,)}`` of each user's predictions; users without ratings get NaN."""
    stats = per_user_error_metrics(users, rating_errors(pred, target, clip), n_users)
    return {"rmse": stats["rmse"], "mae": stats["mae"]}
