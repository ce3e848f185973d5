"""Lightning's MLflow logger for :class:`recforge.tracking.MLflowTracker` (imported with Lightning, when a run is
tracked)."""

from __future__ import annotations

from pytorch_lightning.loggers import MLFlowLogger


class RunLogger(MLFlowLogger):
    """Logs Lightning's metrics into the tracker's run and leaves the run's status to the tracker.

    Lightning finalizes its loggers after every ``fit``, ``validate`` and ``test``, and ``MLFlowLogger`` then marks
    the run FINISHED (or FAILED), although the run goes on: a run killed during its test or its final writes would
    show FINISHED. :meth:`~recforge.tracking.MLflowTracker.finish` sets the status once the run has ended.
    """

    def finalize(self, status: str = "success") -> None:
        pass
