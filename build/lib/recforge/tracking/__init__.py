"""MLflow tracking. MLflow is imported only when a run is tracked, so training works without it."""

from recforge.tracking.tracker import MLflowTracker

__all__ = ["MLflowTracker"]
