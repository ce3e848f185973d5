"""The admin side of the service: ``POST /admin/reload``, off unless an admin token is given, and the token's
checks (never a command-line value; at least 16 printable characters)."""

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
from recforge.serving.schemas import ReloadAccepted, ReloadDone, ReloadRequest
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


def add_admin_routes(app: FastAPI, service: Service, token: str) -> None:
    """``POST /admin/reload`` behind the admin checks (see :func:`create_app`)."""
    from pydantic import ValidationError

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
