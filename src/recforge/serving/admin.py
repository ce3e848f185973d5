"""The admin side of the service: ``POST /admin/reload`` and ``POST /admin/items`` (new items scored from their
features), off unless an admin token is given, and the token's checks (never a command-line value; at least 16
printable characters)."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from recforge.errors import RecForgeError
from recforge.serving.answers import error_responses, shown
from recforge.serving.core import InvalidRequest
from recforge.serving.registry import one_line, source_uri
from recforge.serving.schemas import AddItemsRequest, ItemsAdded, ReloadAccepted, ReloadDone, ReloadRequest
from recforge.serving.service import BUSY, Service

ADMIN_TOKEN_ENV = "RECFORGE_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16


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


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server (``http(s)://`` + the ``Host`` header): a page elsewhere
    sends its own origin, or ``null``."""
    scheme, _, netloc = origin.partition("://")
    return bool(host) and scheme.lower() in ("http", "https") and netloc.lower() == host.lower()


def parsed(schema, raw: bytes, default=None):
    """``raw`` validated against the pydantic ``schema`` (an empty body is ``default`` when one is given); a 422
    naming the body's fields otherwise."""
    from pydantic import ValidationError

    if default is not None and not raw.strip():
        return default
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])


def add_admin_routes(app: FastAPI, service: Service, token: str) -> None:
    """``POST /admin/reload`` and ``POST /admin/items`` behind the admin checks (see :func:`create_app`)."""
    bearer = HTTPBearer(auto_error=False, description=f"the admin token (${ADMIN_TOKEN_ENV} or --admin-token-file)")

    async def admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request.headers.get("host", "")):
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
                         **error_responses(_400="the source is malformed or cannot be loaded (missing run or alias, "
                                           "corrupt bundle, untrusted model class); the old model keeps serving",
                                      _401="missing or wrong admin token", _403="an Origin other than this server",
                                      _409="a reload is already running", _415="Content-Type is not application/json",
                                      _422="the body or ?wait is invalid")})
    async def reload(request: Request, wait: bool = False) -> JSONResponse:
        """Load a model (by default the current source again, re-resolving a registry alias) and swap it in.
        Returns 202 at once, or with ``?wait=true`` 200 and the new model once it serves (400 if it failed).
        The optional body is ``{"model"|"run_id"|"bundle": ...}``. On any failure the old model keeps serving."""
        body = parsed(ReloadRequest, await request.body(), ReloadRequest())
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

    items_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": AddItemsRequest.model_json_schema()}}}}

    @app.post("/admin/items", dependencies=[Depends(admin)], openapi_extra=items_body, response_model=ItemsAdded,
              responses=error_responses(
                  _400="more items than --max-list-items", _401="missing or wrong admin token",
                  _403="an Origin other than this server",
                  _409="the served model cannot take new items (it scores items by their ids only, its bundle keeps "
                       "no fitted item encoder, or it re-ranks), an id is in the catalogue already, or a reload or "
                       "another addition is running",
                  _415="Content-Type is not application/json",
                  _422="not JSON, a wrong type, an unknown field, an id given twice or of another kind than the "
                       "catalogue's, or bad features: a column no declared feature reads, a declared column missing, "
                       "a value of the wrong type (the detail names the item and the column)"))
    async def add_items(request: Request) -> JSONResponse:
        """Add items that the model scores from their features, without retraining: each item's raw features are
        encoded by the encoder fitted on the training items, and the served model grows by them (swapped in as a
        reload is); ``/recommend`` returns them from then on, until the next reload. Models that score unseen items
        from item features only (FM, DeepFM, DCN-V2, Wide & Deep, AutoInt, DIN, two-tower, SASRecF)."""
        body = parsed(AddItemsRequest, await request.body())
        if len(body.items) > service.max_list_items:
            raise InvalidRequest(f"items: {len(body.items)} items, more than the {service.max_list_items} allowed; "
                                 f"send fewer per request (recforge-serve --max-list-items)")
        request.scope["recforge"]["new_items"] = len(body.items)
        new = await service.add_items([(item.item_id, item.features) for item in body.items])
        request.scope["recforge"]["model_id"] = new.ref.model_id
        return JSONResponse({"status": "ok", "items": new.item_ids[new.n_items - len(body.items):],
                             "n_items": new.n_items, "added_items": new.added_items, "serving": new.ref.to_dict()})
