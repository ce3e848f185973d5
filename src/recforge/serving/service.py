"""The state of a running service: the model it serves (loaded, warmed up, swapped atomically on a reload or when
items are added), the source to reload from, the request limits, metrics and the request log. No HTTP here (that is
``app.py``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Mapping, Sequence

from recforge.errors import RecForgeError
from recforge.serving.core import ANN_MIN_ITEMS, InvalidRequest, ServedModel
from recforge.serving.observability import Metrics, RequestLog
from recforge.serving.registry import load, loading, one_line

log = logging.getLogger("recforge.serving")

BUSY = "a reload or an item addition is already running; try again when it finishes"


def load_model(uri: str, tracking_uri: str | None = None, score_cache_mb: float = 0.0,
               ann_min_items: int = ANN_MIN_ITEMS) -> ServedModel:
    """Resolve, load and warm up the model at ``uri`` (slow: run it off the event loop). Every failure is a
    RecForgeError naming ``uri`` (:func:`recforge.serving.registry.loading`)."""
    with loading(uri):
        return prepared(*load(uri, tracking_uri), score_cache_mb, ann_min_items)


def prepared(bundle, ref, score_cache_mb: float, ann_min_items: int) -> ServedModel:
    """``bundle`` served and warmed up (slow: run it off the event loop)."""
    served = ServedModel(bundle, ref, score_cache_bytes=int(score_cache_mb * 2 ** 20), ann_min_items=ann_min_items)
    served.warm_up()
    return served


class Service:
    """The mutable state of a running service: the current model (swapped atomically), the source to reload
    from, the request limits, metrics and the request log."""

    def __init__(self, model: ServedModel, tracking_uri: str | None = None, log: RequestLog | None = None,
                 poll_seconds: float = 0.0, score_cache_mb: float = 0.0, max_body_bytes: int = 1 << 20,
                 max_list_items: int = 10_000, max_history_items: int = 1_000,
                 ann_min_items: int = ANN_MIN_ITEMS) -> None:
        self.model = model
        self.score_cache_mb = score_cache_mb
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.max_body_bytes, self.max_list_items = max_body_bytes, max_list_items
        self.max_history_items, self.ann_min_items = max_history_items, ann_min_items
        self.metrics = Metrics()
        self.metrics.set_model(model)
        self.log = log or RequestLog(None)
        self.reloading = False
        self.last_reload_error: str | None = None
        self._reload_lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()

    def swap(self, new: ServedModel) -> None:
        self.model = new  # one reference assignment: a request holds its own reference to the old model
        self.metrics.set_model(new)
        log.info("serving %s", new.ref.model_id)

    async def reload(self, uri: str | None = None) -> ServedModel:
        """Load ``uri`` (default: the current source, re-resolving a registry alias) in a worker thread and swap
        it in. Raises InvalidRequest, and the old model keeps serving, when a reload is already running (409)
        or the source cannot be loaded for any reason (400, the reason in the message)."""
        if not self._reload_lock.acquire(blocking=False):
            raise InvalidRequest(BUSY, status=409)
        self.reloading = True
        try:
            new = await asyncio.to_thread(load_model, uri or self.model.ref.uri, self.tracking_uri,
                                          self.score_cache_mb, self.ann_min_items)
        except RecForgeError as exc:  # load_model turns every failure into one
            self.metrics.reloads.labels("failed").inc()
            self.last_reload_error = f"{exc} (still serving {self.model.ref.model_id})"
            raise InvalidRequest(self.last_reload_error) from exc
        finally:
            self.reloading = False
            self._reload_lock.release()
        self.swap(new)
        self.metrics.reloads.labels("ok").inc()
        self.last_reload_error = None
        return new

    async def add_items(self, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> ServedModel:
        """Serve the current model grown by ``items``, ``(raw id, raw features)`` pairs
        (:meth:`ServedModel.bundle_with_items`): built in a worker thread while the current one keeps answering,
        then swapped in. One at a time with reloads (409 while either runs); a request the model cannot take is an
        InvalidRequest, and the current model keeps serving. Items added live until the next reload."""
        if not self._reload_lock.acquire(blocking=False):
            raise InvalidRequest(BUSY, status=409)
        try:
            new = await asyncio.to_thread(self._grown, self.model, items)
        finally:
            self._reload_lock.release()
        self.swap(new)
        return new

    def _grown(self, model: ServedModel, items: Sequence[tuple[Any, Mapping[str, Any]]]) -> ServedModel:
        new = prepared(model.bundle_with_items(items), model.ref, self.score_cache_mb, self.ann_min_items)
        new.added_items = model.added_items + len(items)
        log.info("added %d items to %s (%d items now)", len(items), model.ref.model_id, new.n_items)
        return new

    def reload_in_background(self, uri: str | None) -> None:
        async def run() -> None:
            try:
                await self.reload(uri)
            except InvalidRequest as exc:  # also recorded in /health and the reload metric
                log.error("reload failed: %s", exc)

        self._spawn(run())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def poll_registry(self) -> None:
        """Every ``poll_seconds``, re-resolve a ``models:/`` source and reload when it points at another version.
        On any failure the old model keeps serving; a version that failed to load is not tried again until the
        alias moves on, and a failure is logged once (one line), not at every poll."""
        from recforge.serving.registry import resolve

        failed: tuple[str | None, str | None] | None = None  # the (run id, version) that failed to load
        reported: str | None = None
        while True:
            await asyncio.sleep(self.poll_seconds)
            ref = self.model.ref
            if not ref.is_registry or self.reloading:
                continue
            try:
                latest = await asyncio.to_thread(resolve, ref.uri, self.tracking_uri)
                target = (latest.run_id, latest.version)
                if target not in ((ref.run_id, ref.version), failed):
                    try:
                        await self.reload(ref.uri)
                    except InvalidRequest as exc:
                        if exc.status == 409:  # an admin reload came first
                            continue
                        failed = target
                        raise
                reported = None
            except Exception as exc:
                message = f"polling {ref.uri} failed: {one_line(exc)}"
                self.last_reload_error = message
                if message != reported:
                    log.error(message)
                    reported = message

    def start(self) -> None:
        if self.poll_seconds > 0:
            self._spawn(self.poll_registry())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.log.close()
