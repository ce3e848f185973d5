"""Ranking and rating metrics as pure functions on tensors (imports only torch and numpy)."""

from recforge.metrics.evaluator import RankingEvaluator, rating_batch_errors
from recforge.metrics.ranking import beyond_accuracy, mask_scores_, ranking_metrics, relevance_matrix, topk_items
from recforge.metrics.rating import mae, per_user_rating_metrics, rating_errors, rmse

__all__ = [
    "RankingEvaluator",
    "rating_batch_errors",
    "beyond_accuracy",
    "mae",
    "mask_scores_",
    "per_user_rating_metrics",
    "ranking_metrics",
    "rating_errors",
    "relevance_matrix",
    "rmse",
    "topk_items",
]
