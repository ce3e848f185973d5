"""``recforge-serve``: the HTTP recommendation service (FastAPI on uvicorn).

    recforge-serve --model models:/recforge@champion      # or --run-id <id>, or --bundle <run>/model

Endpoints: ``POST /recommend``, ``GET /similar-items/{item_id}``, ``GET /health``, ``GET /metrics``
(Prometheus), ``POST /admin/reload``. ``docs/serving.md`` has examples. Requests are answered in the event
loop (one score row per request is ~0.1 ms of tensor work; a thread pool hop costs more than that; see the
measurements in ``docs/serving.md``); model loading for a reload runs in a worker thread and the new model
is swapped in with one reference assignment, so requests in flight finish on the model they started with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from recforge.errors import RecForgeError
from recforge.serving.core import InvalidRequest, ServedModel
from recforge.serving.registry import add_model_source_args, load, source_uri
from recforge.serving.schemas import RecommendRequest, ReloadRequest

log = logging.getLogger("recforge.serving")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def load_model(uri: str, tracking_uri: str | None = None, score_cache_mb: float = 0.0) -> ServedModel:
    """Resolve, load and warm up the model at ``uri`` (slow: run it off the event loop)."""
    bundle, ref = load(uri, tracking_uri)
    served = ServedModel(bundle, ref, score_cache_bytes=int(score_cache_mb * 2 ** 20))
    served.warm_up()
    return served


class RequestLog:
    """One JSON line per request, appended to ``path`` (line-buffered, so a reader sees complete lines)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Metrics:
    """Prometheus metrics in a registry of their own (several apps can live in one process, e.g. tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the exposition and nobody graphs them

        self.registry = CollectorRegistry()
        self.requests = Counter("recforge_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("recforge_request_latency_seconds", "request latency in seconds by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recommendations = Counter("recforge_recommendations_total", "successful /recommend responses",
                                       registry=self.registry)
        self.fallbacks = Counter("recforge_fallback_total", "successful /recommend responses for unknown users "
                                 "(popularity fallback)", registry=self.registry)
        self.fallback_rate = Gauge("recforge_fallback_rate", "fallback_total / recommendations_total",
                                   registry=self.registry)
        self.reloads = Counter("recforge_model_reloads_total", "model reloads by outcome", ["outcome"],
                               registry=self.registry)
        self.model_info = Gauge("recforge_model_info", "the served model (value 1)", ["model_id", "run_id"],
                                registry=self.registry)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._n_served = self._n_fallback = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(endpoint, str(status))
        counter.inc()
        histogram = self._latency_children.get(endpoint)
        if histogram is None:
            histogram = self._latency_children[endpoint] = self.latency.labels(endpoint)
        histogram.observe(seconds)

    def served(self, fallback: bool) -> None:
        self._n_served += 1
        self.recommendations.inc()
        if fallback:
            self._n_fallback += 1
            self.fallbacks.inc()
        self.fallback_rate.set(self._n_fallback / self._n_served)

    def set_model(self, served: ServedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(served.ref.model_id, served.ref.run_id or "").set(1)


class Service:
    """The mutable state of a running service: the current model (swapped atomically), the source to reload
    from, metrics and the request log."""

    def __init__(self, model: ServedModel, tracking_uri: str | None = None, log_path: Path | None = None,
                 poll_seconds: float = 0.0, score_cache_mb: float = 0.0) -> None:
        self.model = model
        self.score_cache_mb = score_cache_mb
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.metrics = Metrics()
        self.metrics.set_model(model)
        self.log = RequestLog(log_path)
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
        it in. Raises RecForgeError when the source cannot be loaded; the old model keeps serving."""
        if not self._reload_lock.acquire(blocking=False):
            raise InvalidRequest("a reload is already running; try again when it finishes", status=409)
        self.reloading = True
        try:
            new = await asyncio.to_thread(load_model, uri or self.model.ref.uri, self.tracking_uri,
                                          self.score_cache_mb)
        except Exception as exc:
            self.metrics.reloads.labels("failed").inc()
            self.last_reload_error = str(exc)
            raise
        finally:
            self.reloading = False
            self._reload_lock.release()
        self.swap(new)
        self.metrics.reloads.labels("ok").inc()
        self.last_reload_error = None
        return new

    def reload_in_background(self, uri: str | None) -> None:
        async def run() -> None:
            try:
                await self.reload(uri)
            except Exception as exc:  # recorded in /health and the reload metric
                log.error("reload of %s failed: %s", uri or self.model.ref.uri, exc)

        self._spawn(run())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def poll_registry(self) -> None:
        """Every ``poll_seconds``, re-resolve a ``models:/`` source and reload when it points at another run."""
        from recforge.serving.registry import resolve

        while True:
            await asyncio.sleep(self.poll_seconds)
            ref = self.model.ref
            if not ref.is_registry or self.reloading:
                continue
            try:
                latest = await asyncio.to_thread(resolve, ref.uri, self.tracking_uri)
                if (latest.run_id, latest.version) != (ref.run_id, ref.version):
                    await self.reload(ref.uri)
            except Exception as exc:
                self.last_reload_error = str(exc)
                log.error("polling %s failed: %s", ref.uri, exc)

    def start(self) -> None:
        if self.poll_seconds > 0:
            self._spawn(self.poll_registry())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.log.close()


def _one_line(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        value = f" (got {error['input']!r})" if "input" in error and error.get("type") != "missing" else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{value}")
    return "; ".join(parts)


def answer_recommend(service: Service, raw: bytes, info: dict[str, Any]) -> tuple[int, bytes]:
    """``POST /recommend`` from the raw body to ``(status, JSON bytes)``; client mistakes become 4xx here.

    The body is parsed as JSON whatever its content type (``curl -d`` works) and validated against
    :class:`RecommendRequest` (strict types, unknown fields rejected)."""
    from pydantic import ValidationError

    try:
        body = RecommendRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        info["error"] = _one_line(errors)
        return 422, _dumps({"detail": info["error"], "errors": json.loads(_dumps(errors))})
    model = service.model  # this request's model, even if a reload swaps the service's model meanwhile
    info["user"], info["k"] = body.user, body.k
    try:
        items, scores, fallback = model.recommend(body.user, body.k, body.exclude_seen, body.allow_items,
                                                  body.deny_items)
    except InvalidRequest as exc:
        info["error"] = str(exc)
        return exc.status, _dumps({"detail": str(exc)})
    info.update(items=items, fallback=fallback, model_id=model.ref.model_id)
    service.metrics.served(fallback)
    return 200, _dumps({"user": body.user, "items": items, "scores": scores, "fallback": fallback,
                        "model_id": model.ref.model_id, "run_id": model.ref.run_id, "model_version": model.ref.version})


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


class ServiceMiddleware:
    """The outermost ASGI layer: per request, the metrics (count by endpoint/status, latency) and one JSON
    log line with what the handler put into ``scope["recforge"]`` (user, k, items, fallback).

    It also answers ``POST /recommend`` itself (:func:`answer_recommend`, the same function the FastAPI route
    calls), skipping routing, dependency solving and the Request/Response objects: ~0.1 ms less CPU per
    request (docs/serving.md has the numbers). Bodies over ``MAX_BODY`` bytes get a 413."""

    SKIP_LOG = ("/metrics", "/health")
    MAX_BODY = 8 << 20
    JSON_HEADERS = [(b"content-type", b"application/json")]

    def __init__(self, app, service: Service, in_threads: bool = False) -> None:
        self.app, self.service, self.in_threads = app, service, in_threads

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        info: dict[str, Any] = {}
        scope["recforge"] = info
        endpoint = None
        try:
            if scope["path"] == "/recommend" and scope["method"] == "POST":
                endpoint = "/recommend"
                chunks, size = [], 0
                while True:
                    message = await receive()
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if not message.get("more_body") or size > self.MAX_BODY:
                        break
                if size > self.MAX_BODY:
                    info["error"] = f"request body over {self.MAX_BODY} bytes"
                    status, payload = 413, _dumps({"detail": info["error"]})
                elif self.in_threads:  # measured slower (docs/serving.md); kept to repeat the measurement
                    status, payload = await asyncio.to_thread(answer_recommend, self.service, b"".join(chunks), info)
                else:
                    status, payload = answer_recommend(self.service, b"".join(chunks), info)
                await send({"type": "http.response.start", "status": status,
                            "headers": self.JSON_HEADERS + [(b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
            else:
                async def send_and_capture(message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await self.app(scope, receive, send_and_capture)
        finally:
            seconds = time.perf_counter() - started
            if endpoint is None:
                endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            self.service.metrics.observe(endpoint, status, seconds)
            if endpoint not in self.SKIP_LOG:
                record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                          "endpoint": endpoint, "status": status, "latency_ms": round(seconds * 1000, 3), **info}
                self.service.log.write(record)


def create_app(service: Service) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await service.stop()

    app = FastAPI(title="RecForge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.scope.get("recforge", {})["error"] = _one_line(exc.errors())
        return JSONResponse({"detail": _one_line(exc.errors()), "errors": json.loads(json.dumps(
            exc.errors(), default=str))}, status_code=422)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        request.scope.get("recforge", {})["error"] = str(exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RecForgeError)
    async def user_error(request: Request, exc: RecForgeError) -> JSONResponse:
        request.scope.get("recforge", {})["error"] = str(exc)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    recommend_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": RecommendRequest.model_json_schema()}}}}

    @app.post("/recommend", openapi_extra=recommend_body)
    async def recommend(request: Request) -> Response:
        """Top-k items for one user: ``{user, items, scores, fallback, model_id, run_id, model_version}``.
        (:class:`ServiceMiddleware` answers this path before routing; this route documents it in OpenAPI and
        answers identically without the middleware.)"""
        status, payload = answer_recommend(service, await request.body(), request.scope.setdefault("recforge", {}))
        return Response(payload, status_code=status, media_type="application/json")

    @app.get("/similar-items/{item_id}")
    async def similar_items(item_id: str, request: Request, k: int = 10) -> Response:
        """Items most similar to ``item_id`` by cosine over the model's item vectors (embeddings), or over the
        item columns of the score matrix for models without item vectors (``/health`` says which)."""
        model = service.model
        request.scope["recforge"].update(item=item_id, k=k)
        items, scores = model.similar_items(item_id, k)
        request.scope["recforge"].update(items=items, model_id=model.ref.model_id)
        return Response(json.dumps({"item": item_id, "items": items, "scores": scores,
                                    "similarity": model.similar_source, "model_id": model.ref.model_id,
                                    "run_id": model.ref.run_id, "model_version": model.ref.version},
                                   separators=(",", ":")), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model.info(), "reloading": service.reloading,
                "last_reload_error": service.last_reload_error}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    reload_body = {"requestBody": {"required": False, "content": {"application/json": {
        "schema": ReloadRequest.model_json_schema()}}}}

    @app.post("/admin/reload", openapi_extra=reload_body)
    async def reload(request: Request, wait: bool = False) -> JSONResponse:
        """Load a model (by default the current source again, re-resolving a registry alias) and swap it in.
        Returns 202 at once, or with ``?wait=true`` 200 and the new model once it serves (400 if it failed).
        The optional body ``{"model"|"run_id"|"bundle": ...}`` is read as JSON whatever its content type."""
        from pydantic import ValidationError

        raw = await request.body()
        try:
            body = ReloadRequest.model_validate_json(raw) if raw.strip() else ReloadRequest()
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])
        uri = source_uri(body.model, body.run_id, body.bundle) if (body.model or body.run_id or body.bundle) \
            else None
        request.scope["recforge"].update(source=uri or service.model.ref.uri)
        if not wait:
            if service.reloading:
                raise InvalidRequest("a reload is already running; try again when it finishes", status=409)
            service.reload_in_background(uri)
            return JSONResponse({"status": "reloading", "source": uri or service.model.ref.uri,
                                 "serving": service.model.ref.to_dict()}, status_code=202)
        new = await service.reload(uri)
        return JSONResponse({"status": "ok", "serving": new.ref.to_dict()})

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recforge-serve", description="Serve a RecForge model over HTTP.")
    add_model_source_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-file", default="logs/serve.jsonl",
                        help="JSON-lines request log (default logs/serve.jsonl; 'none' turns it off)")
    parser.add_argument("--poll-seconds", type=float, default=0.0,
                        help="re-resolve a models:/ alias every N seconds and reload when it moves (0: off)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--score-cache-mb", type=float, default=256.0,
                        help="precompute every known user's scores when they fit in this many MB (default 256; "
                             "0: call score_all per request)")
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log on stdout (slower)")
    parser.add_argument("--compute", choices=("loop", "threads"), default="loop",
                        help="answer /recommend in the event loop (default, faster) or in a thread pool")
    parser.add_argument("--http", choices=("corked", "h11"), default="corked",
                        help="uvicorn's h11 protocol with one socket write per response (default) or as is")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if not 0 <= args.port <= 65535:
            raise RecForgeError(f"--port {args.port} must be in 0..65535")
        if args.poll_seconds < 0:
            raise RecForgeError(f"--poll-seconds {args.poll_seconds} must be >= 0 (0 turns polling off)")
        uri = source_uri(args.model, args.run_id, args.bundle, args.ckpt)
        tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if args.score_cache_mb < 0:
            raise RecForgeError(f"--score-cache-mb {args.score_cache_mb} must be >= 0 (0 turns the cache off)")
        model = load_model(uri, tracking_uri, args.score_cache_mb)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    import torch
    import uvicorn

    torch.set_num_threads(max(1, args.threads))  # one request is one small row: more threads only contend
    log_path = None if args.log_file.lower() in ("", "none") else Path(args.log_file)
    service = Service(model, tracking_uri, log_path, args.poll_seconds, args.score_cache_mb)
    log.info("serving %s (%d users, %d items) on http://%s:%d; request log: %s", model.ref.model_id,
             model.n_users, model.n_items, args.host, args.port, log_path or "off")
    from recforge.serving.transport import CorkedH11Protocol

    uvicorn.run(ServiceMiddleware(create_app(service), service, args.compute == "threads"), host=args.host,
                port=args.port, http=CorkedH11Protocol if args.http == "corked" else "h11", access_log=args.access_log,
                log_level="info", timeout_graceful_shutdown=5, server_header=False, proxy_headers=False)


if __name__ == "__main__":
    main()
