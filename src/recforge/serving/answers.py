"""HTTP answers without a framework: ``POST /recommend`` from raw bytes to (status, JSON bytes), the 422 body of
a validation error, and the OpenAPI description of error statuses. Shared by the FastAPI routes and the ASGI
middleware that answers ``/recommend`` before routing, so both answer identically."""

from __future__ import annotations

import json
import time
from typing import Any

from recforge.serving.core import InvalidRequest, shown
from recforge.serving.schemas import ErrorResponse, RecommendRequest, ValidationErrorResponse
from recforge.serving.service import Service


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The 422 body for pydantic ``errors``: ``{"detail": one line, "errors": [{loc, msg, type}]}``. Inputs are
    echoed only in ``detail`` and cut short (:func:`shown`): an id of megabytes is never sent back or logged."""
    parts: list[str] = []
    for error in _ids_as_one(errors)[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        value = f" (got {shown(error['input'])})" if "input" in error and error.get("type") != "missing" else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{value}")
    return {"detail": "; ".join(parts), "errors": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                                                     "type": str(e.get("type", ""))} for e in errors]}


def _ids_as_one(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An id that is neither an integer nor a string fails both members of its union (``user.int``, ``user.str``):
    one error for the message, ``user: an id is an integer or a string``."""
    merged: list[dict[str, Any]] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if (loc[-1:] == ("str",) and merged and tuple(merged[-1].get("loc", ())) == (*loc[:-1], "int")
                and error.get("type") == "string_type" and merged[-1].get("type") == "int_type"):
            merged[-1] = {**error, "loc": loc[:-1], "msg": "an id is an integer or a string"}
        else:
            merged.append(error)
    return merged


def answer_recommend(service: Service, raw: bytes, info: dict[str, Any]) -> tuple[int, bytes]:
    """``POST /recommend`` from the raw body to ``(status, JSON bytes)``; client mistakes become 4xx here.

    The body is parsed as JSON whatever its content type (``curl -d`` works) and validated against
    :class:`RecommendRequest` (strict types, unknown fields rejected, ids of at most 256 characters, exactly one
    of ``user`` and ``history``); an allow/deny list may hold at most ``service.max_list_items`` ids and a history
    ``service.max_history_items``."""
    from pydantic import ValidationError

    try:
        body = RecommendRequest.model_validate_json(raw)
    except ValidationError as exc:
        payload = validation_error([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])
        info["error"] = payload["detail"]
        return 422, dumps(payload)
    for field, ids in (("allow_items", body.allow_items), ("deny_items", body.deny_items)):
        if ids is not None and len(ids) > service.max_list_items:
            info["error"] = (f"{field}: {len(ids)} ids, more than the {service.max_list_items} allowed; send fewer "
                             f"(recforge-serve --max-list-items)")
            return 400, dumps({"detail": info["error"]})
    if body.history is not None and len(body.history) > service.max_history_items:
        info["error"] = (f"history: {len(body.history)} ids, more than the {service.max_history_items} allowed; send "
                         f"the latest ones (recforge-serve --max-history-items)")
        return 400, dumps({"detail": info["error"]})
    model = service.model  # this request's model, even if a reload swaps the service's model meanwhile
    if body.history is None:
        info["user"] = body.user
    else:  # the log keeps the length, not the ids
        info["history_length"] = len(body.history)
    info["k"] = body.k
    unknown = None
    try:
        if body.explain:
            if body.history is not None:
                raise InvalidRequest("explain: explanations need a user id (a known user's history); leave explain "
                                     "out of history requests")
            model.check_reasons(body.n_reasons)
        at = body.time if body.time is not None else int(time.time())   # one time: ranked and explained at it
        if body.history is None:
            items, scores, fallback = model.recommend(body.user, body.k, body.exclude_seen, body.allow_items,
                                                      body.deny_items, at)
        else:
            items, scores, fallback, unknown = model.recommend_history(body.history, body.k, body.exclude_seen,
                                                                       body.allow_items, body.deny_items)
        explanation = model.explain(body.user, items, body.n_reasons, at) if body.explain else None
    except InvalidRequest as exc:
        info["error"] = str(exc)
        return exc.status, dumps({"detail": str(exc)})
    info.update(items=items, fallback=fallback, model_id=model.ref.model_id)
    service.metrics.served(fallback)
    answer = {"user": body.user, "items": items, "scores": scores, "fallback": fallback,
              "model_id": model.ref.model_id, "run_id": model.ref.run_id, "model_version": model.ref.version}
    if unknown is not None:
        info["unknown_history_items"] = answer["unknown_history_items"] = unknown
    if explanation is not None:
        info["explained"] = explanation["method"]
        answer["explanation"] = explanation
    return 200, dumps(answer)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def error_responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (``_400="..."``): their body schemas (one-line ``detail``;
    422 adds ``errors``) with these descriptions; every route can get a 413 (the body limit)."""
    described.setdefault("_413", "request body over --max-body-kb")
    return {int(key[1:]): {"model": ValidationErrorResponse if key == "_422" else ErrorResponse, "description": text}
            for key, text in described.items()}
