"""The HTTP recommendation service as an ASGI app (FastAPI; ``recforge-serve``, in ``cli.py``, runs it on uvicorn).

Endpoints: ``POST /recommend``, ``GET /similar-items/{item_id}``, ``GET /health``, ``GET /metrics``
(Prometheus) and, only with an admin token (``RECFORGE_ADMIN_TOKEN`` or ``--admin-token-file``),
``POST /admin/reload`` and ``POST /admin/items`` (new items scored from their features). ``docs/serving.md`` has
examples, the limits and the status codes.

Requests are answered in the event loop (one score row per request is ~0.1 ms of tensor work; a thread pool
hop costs more than that; see the measurements in ``docs/serving.md``); model loading for a reload runs in a
worker thread and the new model is swapped in with one reference assignment, so requests in flight finish on
the model they started with. A reload that fails for any reason leaves the old model serving.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from recforge.errors import RecForgeError
from recforge.serving.admin import add_admin_routes
from recforge.serving.answers import answer_recommend, dumps, error_responses, validation_error
from recforge.serving.core import InvalidRequest
from recforge.serving.schemas import (INT64, MAX_ID_CHARS, HealthResponse, RecommendRequest, RecommendResponse,
                                      SimilarItemsResponse)
from recforge.serving.service import Service


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

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

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
                await self._answer(send, status, dumps({"detail": info["error"]}), close=True)
            elif endpoint is not None:
                status, payload = await self.recommend(body, info)
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

    async def recommend(self, body: bytes, info: dict[str, Any]) -> tuple[int, bytes]:
        """``POST /recommend``'s answer, in the event loop: a thread-pool hop costs more than the ~0.1 ms of work
        (``scripts/serve_variants.py`` serves the alternative, to measure it again)."""
        return answer_recommend(self.service, body, info)

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

    @app.post("/recommend", openapi_extra=recommend_body, response_model=RecommendResponse, responses=error_responses(
        _400="k or n_reasons out of range, an unknown id in allow_items/deny_items, a list longer than "
             "--max-list-items, a history longer than --max-history-items, a history for a model that cannot "
             "score one, or explain with a history",
        _422="not JSON, a wrong type, neither or both of user and history, an unknown field, or an id over 256 "
             "characters"))
    async def recommend(request: Request) -> Response:
        """Top-k items for one user, or for a session (``history``: item ids, oldest first). The body is read as
        JSON whatever its content type (``curl -d`` works).
        (:class:`ServiceMiddleware` answers this path before routing; this route documents it in OpenAPI and
        answers identically without the middleware.)"""
        status, payload = answer_recommend(service, await request.body(), request.scope.setdefault("recforge", {}))
        return Response(payload, status_code=status, media_type="application/json")

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse, responses=error_responses(
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

    @app.get("/health", response_model=HealthResponse, responses=error_responses())
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model.info(), "reloading": service.reloading,
                "last_reload_error": service.last_reload_error}

    @app.get("/metrics", response_class=Response, responses={200: {
        "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses()})
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if admin_token:
        add_admin_routes(app, service, admin_token)
    return app
