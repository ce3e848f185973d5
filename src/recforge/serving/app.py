"""``recforge-serve``: the HTTP recommendation service (FastAPI on uvicorn).

    recforge-serve --model models:/recforge@champion      # or --run-id <id>, or --bundle <run>/model

Endpoints: ``POST /recommend``, ``GET /similar-items/{item_id}``, ``GET /health``, ``GET /metrics``
(Prometheus) and, only with an admin token (``RECFORGE_ADMIN_TOKEN`` or ``--admin-token-file``),
``POST /admin/reload``. ``docs/serving.md`` has examples, the limits and the status codes.

Requests are answered in the event loop (one score row per request is ~0.1 ms of tensor work; a thread pool
hop costs more than that; see the measurements in ``docs/serving.md``); model loading for a reload runs in a
worker thread and the new model is swapped in with one reference assignment, so requests in flight finish on
the model they started with. A reload that fails for any reason leaves the old model serving.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from recforge.errors import RecForgeError
from recforge.serving.core import InvalidRequest, ServedModel
from recforge.serving.registry import add_model_source_args, load, loading, one_line, source_uri
from recforge.serving.schemas import (INT64, MAX_ID_CHARS, ErrorResponse, HealthResponse, RecommendRequest,
                                      RecommendResponse, ReloadAccepted, ReloadDone, ReloadRequest,
                                      SimilarItemsResponse, ValidationErrorResponse)

log = logging.getLogger("recforge.serving")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ADMIN_TOKEN_ENV = "RECFORGE_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16
BUSY = "a reload is already running; try again when it finishes"


def load_model(uri: str, tracking_uri: str | None = None, score_cache_mb: float = 0.0) -> ServedModel:
    """Resolve, load and warm up the model at ``uri`` (slow: run it off the event loop). Every failure is a
    RecForgeError naming ``uri`` (:func:`recforge.serving.registry.loading`)."""
    with loading(uri):
        bundle, ref = load(uri, tracking_uri)
        served = ServedModel(bundle, ref, score_cache_bytes=int(score_cache_mb * 2 ** 20))
        served.warm_up()
    return served


def admin_token(path: str | None) -> str | None:
    """The admin token: the content of ``path`` (``--admin-token-file``), else ``$RECFORGE_ADMIN_TOKEN``; None
    (admin off) when neither is given or the variable is empty. Never a command-line value: every user of the
    machine can read a process's arguments."""
    if path:
        try:
            token, where = Path(path).read_text(encoding="utf-8").strip(), f"--admin-token-file {path}"
        except (OSError, UnicodeDecodeError) as exc:
            raise RecForgeError(f"--admin-token-file {path}: cannot read it ({one_line(exc)}); write the token "
                                f"into a file only the service's user can read") from None
    else:
        token, where = os.environ.get(ADMIN_TOKEN_ENV, "").strip(), ADMIN_TOKEN_ENV
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or not (token.isascii() and token.isprintable()) or " " in token:
        raise RecForgeError(f"{where}: the admin token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                            f"without spaces (got {len(token)} characters); make one with python -c "
                            f"'import secrets; print(secrets.token_urlsafe(32))'")
    return token


class RequestLog:
    """One JSON line per request, appended to ``path`` (line-buffered, so a reader sees complete lines).

    Rotated by size: once the file reaches ``max_bytes`` it becomes ``<path>.1`` (an older ``.1`` becomes
    ``.2``, and so on; ``backups`` old files are kept, 0 keeps none) and a new file is started."""

    def __init__(self, path: Path | None, max_bytes: int = 100 << 20, backups: int = 5) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file = None
        self._size = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._size = self._file.tell()  # a restarted service continues the file it left

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            line = json.dumps(record, separators=(",", ":"), default=str) + "\n"  # ASCII: one byte a character
            self._file.write(line)
            self._size += len(line)
            if self._size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        names = [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.backups + 1)]
        with suppress(FileNotFoundError):  # someone removed a file meanwhile: nothing to keep
            names[-1].unlink()
        for newer, older in reversed(list(zip(names, names[1:]))):
            with suppress(FileNotFoundError):
                os.replace(newer, older)
        self._open()

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
    from, the request limits, metrics and the request log."""

    def __init__(self, model: ServedModel, tracking_uri: str | None = None, log: RequestLog | None = None,
                 poll_seconds: float = 0.0, score_cache_mb: float = 0.0, max_body_bytes: int = 1 << 20,
                 max_list_items: int = 10_000) -> None:
        self.model = model
        self.score_cache_mb = score_cache_mb
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.max_body_bytes, self.max_list_items = max_body_bytes, max_list_items
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
                                          self.score_cache_mb)
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


def shown(value: Any, limit: int = 64) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a message or the request log may echo of an input."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's 4,300-digit str() limit
        text = "<a very long integer>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The 422 body for pydantic ``errors``: ``{"detail": one line, "errors": [{loc, msg, type}]}``. Inputs are
    echoed only in ``detail`` and cut short (:func:`shown`): an id of megabytes is never sent back or logged."""
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        value = f" (got {shown(error['input'])})" if "input" in error and error.get("type") != "missing" else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{value}")
    return {"detail": "; ".join(parts), "errors": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                                                     "type": str(e.get("type", ""))} for e in errors]}


def answer_recommend(service: Service, raw: bytes, info: dict[str, Any]) -> tuple[int, bytes]:
    """``POST /recommend`` from the raw body to ``(status, JSON bytes)``; client mistakes become 4xx here.

    The body is parsed as JSON whatever its content type (``curl -d`` works) and validated against
    :class:`RecommendRequest` (strict types, unknown fields rejected, ids of at most 256 characters); an
    allow/deny list may hold at most ``service.max_list_items`` ids."""
    from pydantic import ValidationError

    try:
        body = RecommendRequest.model_validate_json(raw)
    except ValidationError as exc:
        payload = validation_error([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])
        info["error"] = payload["detail"]
        return 422, _dumps(payload)
    for field, ids in (("allow_items", body.allow_items), ("deny_items", body.deny_items)):
        if ids is not None and len(ids) > service.max_list_items:
            info["error"] = (f"{field}: {len(ids)} ids, more than the {service.max_list_items} allowed; send fewer "
                             f"(recforge-serve --max-list-items)")
            return 400, _dumps({"detail": info["error"]})
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
    """The outermost ASGI layer: per request, the body limit, the metrics (count by endpoint/status, latency)
    and one JSON log line with what the handler put into ``scope["recforge"]`` (user, k, items, fallback).

    A body over ``service.max_body_bytes`` gets a 413 (and the connection is closed): at once when its
    Content-Length says so, before a byte of it is read, else as soon as the bytes read pass the limit.
    ``POST /recommend`` is answered here (:func:`answer_recommend`, the same function the FastAPI route
    calls), skipping routing, dependency solving and the Request/Response objects: ~0.1 ms less CPU per
    request (docs/serving.md has the numbers); other requests go to the app with the body already read."""

    SKIP_LOG = ("/metrics", "/health")
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
        endpoint = "/recommend" if scope["path"] == "/recommend" and scope["method"] == "POST" else None
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.service.max_body_bytes
                info["error"] = f"request body over {limit} bytes; send less (recforge-serve --max-body-kb)"
                status = 413
                await self._answer(send, status, _dumps({"detail": info["error"]}), close=True)
            elif endpoint is not None:
                if self.in_threads:  # measured slower (docs/serving.md); kept to repeat the measurement
                    status, payload = await asyncio.to_thread(answer_recommend, self.service, body, info)
                else:
                    status, payload = answer_recommend(self.service, body, info)
                await self._answer(send, status, payload)
            else:
                async def send_and_capture(message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await self.app(scope, _replay(body, receive), send_and_capture)
        finally:
            seconds = time.perf_counter() - started
            if endpoint is None:
                endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            self.service.metrics.observe(endpoint, status, seconds)
            if endpoint not in self.SKIP_LOG:
                record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                          "endpoint": endpoint, "status": status, "latency_ms": round(seconds * 1000, 3), **info}
                self.service.log.write(record)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The request body, or None when it is over the limit (then not read, or read only up to the limit)."""
        limit = self.service.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _answer(self, send, status: int, payload: bytes, close: bool = False) -> None:
        headers = self.JSON_HEADERS + [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"connection", b"close")] if close else headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that hands over the already read ``body`` first, then defers to ``receive``."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server (``http(s)://`` + the ``Host`` header): a page elsewhere
    sends its own origin, or ``null``."""
    scheme, _, netloc = origin.partition("://")
    return bool(host) and scheme.lower() in ("http", "https") and netloc.lower() == host.lower()


def _responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (``_400="..."``): their body schemas (one-line ``detail``;
    422 adds ``errors``) with these descriptions; every route can get a 413 (the body limit)."""
    described.setdefault("_413", "request body over --max-body-kb")
    return {int(key[1:]): {"model": ValidationErrorResponse if key == "_422" else ErrorResponse, "description": text}
            for key, text in described.items()}


def create_app(service: Service, admin_token: str | None = None) -> FastAPI:
    """The FastAPI app of ``service``. ``/admin/*`` exists only with an ``admin_token`` (404 otherwise); then
    every admin request needs ``Authorization: Bearer <token>`` (401), ``Content-Type: application/json``
    (415) and no ``Origin`` header or this server's own (403), so a web page the operator opens cannot post
    to it."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await service.stop()

    app = FastAPI(title="RecForge", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service

    def refuse(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        request.scope.get("recforge", {})["error"] = detail
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        payload = validation_error(list(exc.errors()))
        request.scope.get("recforge", {})["error"] = payload["detail"]
        return JSONResponse(payload, status_code=422)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        return refuse(request, exc.status, str(exc))

    @app.exception_handler(RecForgeError)
    async def user_error(request: Request, exc: RecForgeError) -> JSONResponse:
        return refuse(request, 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return refuse(request, exc.status_code, str(exc.detail), exc.headers)

    recommend_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": RecommendRequest.model_json_schema()}}}}

    @app.post("/recommend", openapi_extra=recommend_body, response_model=RecommendResponse, responses=_responses(
        _400="k out of range, an unknown id in allow_items/deny_items, or a list longer than --max-list-items",
        _422="not JSON, a wrong type, a missing user, an unknown field, or an id over 256 characters"))
    async def recommend(request: Request) -> Response:
        """Top-k items for one user. The body is read as JSON whatever its content type (``curl -d`` works).
        (:class:`ServiceMiddleware` answers this path before routing; this route documents it in OpenAPI and
        answers identically without the middleware.)"""
        status, payload = answer_recommend(service, await request.body(), request.scope.setdefault("recforge", {}))
        return Response(payload, status_code=status, media_type="application/json")

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse, responses=_responses(
        _400="k out of range", _404="unknown item id",
        _422="k not an integer, or an item id over 256 characters"))
    async def similar_items(item_id: Annotated[str, PathParam(max_length=MAX_ID_CHARS)], request: Request,
                            k: Annotated[int, Query(ge=INT64[0], le=INT64[1])] = 10) -> Response:
        """Items most similar to ``item_id`` by cosine over the model's item vectors (embeddings), or over the
        item columns of the score matrix for models without item vectors (``/health`` says which)."""
        model = service.model
        request.scope["recforge"].update(item=item_id, k=k)
        items, scores = model.similar_items(item_id, k)
        request.scope["recforge"].update(items=items, model_id=model.ref.model_id)
        return Response(json.dumps({"item": model.catalogue_id(item_id), "items": items, "scores": scores,
                                    "similarity": model.similar_source, "model_id": model.ref.model_id,
                                    "run_id": model.ref.run_id, "model_version": model.ref.version},
                                   separators=(",", ":")), media_type="application/json")

    @app.get("/health", response_model=HealthResponse, responses=_responses())
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model.info(), "reloading": service.reloading,
                "last_reload_error": service.last_reload_error}

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_responses()})
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if admin_token:
        add_admin_routes(app, service, admin_token)
    return app


def add_admin_routes(app: FastAPI, service: Service, token: str) -> None:
    """``POST /admin/reload`` behind the admin checks (see :func:`create_app`)."""
    from pydantic import ValidationError

    bearer = HTTPBearer(auto_error=False, description=f"the admin token (${ADMIN_TOKEN_ENV} or --admin-token-file)")

    async def admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        origin = request.headers.get("origin")
        if origin is not None and not _same_origin(origin, request.headers.get("host", "")):
            raise HTTPException(403, f"admin requests from another origin are refused (Origin {shown(origin)})")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong admin token; send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise HTTPException(415, f"admin requests need Content-Type: application/json (got {shown(media)})")

    reload_body = {"requestBody": {"required": False, "content": {"application/json": {
        "schema": ReloadRequest.model_json_schema()}}}}

    @app.post("/admin/reload", dependencies=[Depends(admin)], openapi_extra=reload_body, response_model=ReloadDone,
              responses={202: {"model": ReloadAccepted, "description": "reload started (without ?wait=true)"},
                         **_responses(_400="the source is malformed or cannot be loaded (missing run or alias, "
                                           "corrupt bundle, untrusted model class); the old model keeps serving",
                                      _401="missing or wrong admin token", _403="an Origin other than this server",
                                      _409="a reload is already running", _415="Content-Type is not application/json",
                                      _422="the body or ?wait is invalid")})
    async def reload(request: Request, wait: bool = False) -> JSONResponse:
        """Load a model (by default the current source again, re-resolving a registry alias) and swap it in.
        Returns 202 at once, or with ``?wait=true`` 200 and the new model once it serves (400 if it failed).
        The optional body is ``{"model"|"run_id"|"bundle": ...}``. On any failure the old model keeps serving."""
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
                raise InvalidRequest(BUSY, status=409)
            service.reload_in_background(uri)
            return JSONResponse({"status": "reloading", "source": uri or service.model.ref.uri,
                                 "serving": service.model.ref.to_dict()}, status_code=202)
        new = await service.reload(uri)
        return JSONResponse({"status": "ok", "serving": new.ref.to_dict()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recforge-serve", description="Serve a RecForge model over HTTP.")
    add_model_source_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    parser.add_argument("--admin-token-file", help=f"turn on /admin/reload, guarded by the token in this file (or "
                                                   f"set ${ADMIN_TOKEN_ENV}); off by default: /admin/* answers 404")
    parser.add_argument("--log-file", default="logs/serve.jsonl",
                        help="JSON-lines request log (default logs/serve.jsonl; 'none' turns it off)")
    parser.add_argument("--log-max-mb", type=float, default=100.0,
                        help="rotate the request log when it reaches this size (default 100 MB)")
    parser.add_argument("--log-backups", type=int, default=5,
                        help="rotated request logs to keep: <log>.1 (newest) .. <log>.N (default 5)")
    parser.add_argument("--max-body-kb", type=int, default=1024,
                        help="largest request body in KiB; a larger one gets a 413 (default 1024)")
    parser.add_argument("--max-list-items", type=int, default=10_000,
                        help="most ids in allow_items/deny_items; more get a 400 (default 10000)")
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


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise RecForgeError(f"--port {args.port} must be in 0..65535")
    for flag, value, low, hint in (
            ("--poll-seconds", args.poll_seconds, 0, " (0 turns polling off)"),
            ("--score-cache-mb", args.score_cache_mb, 0, " (0 turns the cache off)"),
            ("--log-backups", args.log_backups, 0, " (0 keeps no rotated log)"),
            ("--log-max-mb", args.log_max_mb, 0.01, ""),
            ("--max-body-kb", args.max_body_kb, 1, ""), ("--max-list-items", args.max_list_items, 1, "")):
        if value < low:
            raise RecForgeError(f"{flag} {value} must be >= {low}{hint}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log_path = None if args.log_file.lower() in ("", "none") else Path(args.log_file)
    try:
        _check_args(args)
        uri = source_uri(args.model, args.run_id, args.bundle, args.ckpt)
        token = admin_token(args.admin_token_file)
        tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        model = load_model(uri, tracking_uri, args.score_cache_mb)
        try:
            request_log = RequestLog(log_path, int(args.log_max_mb * 2 ** 20), args.log_backups)
        except OSError as exc:
            raise RecForgeError(f"--log-file {log_path}: {one_line(exc)}; give a writable path or 'none'") from None
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    import torch
    import uvicorn

    torch.set_num_threads(max(1, args.threads))  # one request is one small row: more threads only contend
    service = Service(model, tracking_uri, request_log, args.poll_seconds, args.score_cache_mb,
                      args.max_body_kb << 10, args.max_list_items)
    log.info("serving %s (%d users, %d items) on http://%s:%d; request log: %s; admin: %s", model.ref.model_id,
             model.n_users, model.n_items, args.host, args.port, log_path or "off", "on" if token else "off")
    from recforge.serving.transport import CorkedH11Protocol

    uvicorn.run(ServiceMiddleware(create_app(service, token), service, args.compute == "threads"), host=args.host,
                port=args.port, http=CorkedH11Protocol if args.http == "corked" else "h11", access_log=args.access_log,
                log_level="info", timeout_graceful_shutdown=5, server_header=False, proxy_headers=False)


if __name__ == "__main__":
    main()
