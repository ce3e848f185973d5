"""The service's guards, in process on a real loopback socket (uvicorn in a thread, the production protocol):
the admin interface (off by default; token, content type and origin checks), reloads that fail for any
reason keep the old model, alias polling, request limits (body size, list lengths, id lengths), the rotating
request log, and one-line CLI errors for corrupt bundles."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from recforge.errors import RecForgeError
from recforge.serving import admin, cli, service as serve_service
from recforge.serving.admin import admin_token
from recforge.serving.app import ServiceMiddleware, create_app
from recforge.serving.observability import RequestLog
from recforge.serving.service import Service
from recforge.serving.core import ServedModel
from recforge.serving.registry import ModelRef
from recforge.tracking.bundle import Bundle
from tests.conftest import REPO
from tests.unit.test_serving_core import make_bundle

TOKEN = "s3cret-admin-token-0123456789"
JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """Two bundle directories of different models over the same ids."""
    tmp = tmp_path_factory.mktemp("bundles")
    make_bundle(tmp / "a", np.arange(10, 30), np.arange(500, 540))
    make_bundle(tmp / "b", np.arange(10, 30), np.arange(500, 540))
    with torch.no_grad():  # b: other weights, same files
        weights = torch.load(tmp / "b" / "model" / "model.pt", weights_only=True)
        torch.save({name: value.flip(0) for name, value in weights.items()}, tmp / "b" / "model" / "model.pt")
    return tmp / "a" / "model", tmp / "b" / "model"


def served(directory: Path) -> ServedModel:
    return ServedModel(Bundle.load(directory), ModelRef(str(directory.resolve())))


@contextmanager
def running(service: Service, token: str | None = None, middleware=ServiceMiddleware, http=None):
    """The service on a free 127.0.0.1 port (uvicorn in a thread, as ``recforge-serve`` runs it)."""
    import uvicorn

    from recforge.serving.transport import CorkedH11Protocol

    server = uvicorn.Server(uvicorn.Config(middleware(create_app(service, token), service), host="127.0.0.1",
                                           port=0, http=http or CorkedH11Protocol, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive())
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def call(url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict, dict]:
    """``(status, parsed JSON body, headers)``; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def raw_exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` bytes on a new connection and read the response until the server closes it."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def reloads(service: Service, outcome: str) -> float:
    return service.metrics.registry.get_sample_value("recforge_model_reloads_total", {"outcome": outcome}) or 0.0


def serving_id(base: str) -> str:
    status, body, _ = call(f"{base}/recommend", {"user": 10, "k": 3})
    assert status == 200, body
    return body["model_id"]


# ------------------------------------------------------------------------------------------- admin interface
def test_the_dropped_variants_kept_for_measuring_answer_alike(bundles):
    """scripts/serve_variants.py: /recommend in a thread pool, plain h11: the same answers as recforge-serve's."""
    spec = importlib.util.spec_from_file_location("serve_variants", REPO / "scripts" / "serve_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    body = {"user": 12, "k": 3}
    with running(Service(served(bundles[0]))) as url:
        expected = call(f"{url}/recommend", body)
    with running(Service(served(bundles[0])), middleware=variants.ThreadPoolMiddleware, http="h11") as url:
        assert call(f"{url}/recommend", body)[:2] == expected[:2]
        assert call(f"{url}/recommend", {"user": 12, "k": 0})[0] == 400
    assert expected[0] == 200 and len(expected[1]["items"]) == 3


def test_admin_is_off_without_a_token(bundles):
    service = Service(served(bundles[0]))
    with running(service) as base:
        assert call(f"{base}/admin/reload?wait=true", {"bundle": str(bundles[1])}, AUTH)[0] == 404
        assert call(f"{base}/admin/anything", {}, AUTH)[0] == 404
        assert "/admin/reload" not in call(f"{base}/openapi.json")[1]["paths"]
        assert serving_id(base) == f"bundle:{bundles[0].resolve()}"


def test_admin_requests_need_the_token_a_json_body_and_no_foreign_origin(bundles):
    """The CSRF case of the issue: a page elsewhere posts text/plain (no preflight) with the operator's
    browser; refused before anything is loaded, as is every request without the token."""
    a, b = (f"bundle:{d.resolve()}" for d in bundles)
    service = Service(served(bundles[0]))
    switch = {"bundle": str(bundles[1])}
    with running(service, TOKEN) as base:
        url = f"{base}/admin/reload?wait=true"
        status, body, headers = call(url, switch, JSON)
        assert status == 401 and "Authorization: Bearer" in body["detail"] and headers["www-authenticate"] == "Bearer"
        assert call(url, switch, {**JSON, "Authorization": f"Bearer {TOKEN[:-1]}x"})[0] == 401
        assert call(url, switch, {**JSON, "Authorization": f"Basic {TOKEN}"})[0] == 401
        status, body, _ = call(url, json.dumps(switch).encode(), {**AUTH, "Content-Type": "text/plain"})
        assert status == 415 and "application/json (got 'text/plain')" in body["detail"]
        assert call(url, json.dumps(switch).encode(), {"Authorization": AUTH["Authorization"]})[0] == 415
        for origin in ("http://evil.example", "null", f"{base}.evil.example", base.replace("http:", "ftp:")):
            status, body, _ = call(url, switch, {**AUTH, "Origin": origin})
            assert status == 403 and "another origin" in body["detail"], origin
        assert serving_id(base) == a and reloads(service, "ok") == 0

        status, body, _ = call(url, switch, {**AUTH, "Origin": base})  # the server's own page may
        assert status == 200 and body["serving"]["model_id"] == b and serving_id(base) == b
        status, body, _ = call(f"{base}/admin/reload", b"", {**AUTH, "Content-Type": "application/json; charset=utf-8"})
        assert status == 202 and body["source"] == str(bundles[1].resolve())  # no body: the current source again
        wait_until(lambda: reloads(service, "ok") == 2)
        assert serving_id(base) == b
        assert call(url, {"bundle": str(bundles[0]), "run_id": "x"}, AUTH)[0] == 400  # two sources
        assert call(url, {"bundle": 3}, AUTH)[0] == 422
        assert call(f"{base}/admin/reload?wait=maybe", {}, AUTH)[0] == 422


def corrupt(kind: str, good: Path, into: Path) -> Path:
    """A copy of the bundle ``good`` broken one way."""
    broken = into / kind
    shutil.copytree(good, broken)
    if kind == "truncated model.pt":
        data = (broken / "model.pt").read_bytes()
        (broken / "model.pt").write_bytes(data[: len(data) // 2])
    elif kind == "missing items.parquet":
        (broken / "items.parquet").unlink()
    elif kind == "untrusted class":
        spec = torch.load(broken / "spec.pt", weights_only=True)
        torch.save({**spec, "target": "builtins.dict"}, broken / "spec.pt")
    elif kind == "weights of another shape":
        weights = torch.load(broken / "model.pt", weights_only=True)
        torch.save({name: value[:3] for name, value in weights.items()}, broken / "model.pt")
    elif kind == "not a bundle":
        (broken / "spec.pt").unlink()
    return broken


KINDS = ["truncated model.pt", "missing items.parquet", "untrusted class", "weights of another shape", "not a bundle"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_reload_is_a_400_and_the_old_model_keeps_serving(bundles, tmp_path, kind):
    broken = corrupt(kind, bundles[0], tmp_path)
    old = f"bundle:{bundles[0].resolve()}"
    service = Service(served(bundles[0]))
    with running(service, TOKEN) as base:
        status, body, _ = call(f"{base}/admin/reload?wait=true", {"bundle": str(broken)}, AUTH)
        assert status == 400 and str(broken) in body["detail"] and f"still serving {old}" in body["detail"], body
        assert "\n" not in body["detail"] and serving_id(base) == old
        assert call(f"{base}/admin/reload", {"bundle": str(broken)}, AUTH)[0] == 202  # in the background
        wait_until(lambda: reloads(service, "failed") == 2)
        health = call(f"{base}/health")[1]
        assert health["model"]["model_id"] == old and str(broken) in health["last_reload_error"]
        assert serving_id(base) == old


def test_polling_keeps_the_old_model_and_logs_a_failure_once(bundles, monkeypatch, caplog):
    """The alias moves to a version that fails to load: the service keeps its model, logs one line, and
    does not retry that version at every poll; when the alias moves on, the next version loads."""
    from recforge.serving import registry

    versions = {"current": "1"}
    loads: list[str] = []

    def resolve(uri, tracking_uri=None):
        return ModelRef(uri, run_id=f"run{versions['current']}", name="m", version=versions["current"])

    def load_model(uri, tracking_uri=None, score_cache_mb=0.0, ann_min_items=0):
        loads.append(versions["current"])
        if versions["current"] == "2":
            raise RecForgeError(f"{uri}: cannot load the model (truncated model.pt)")
        model = served(bundles[1])
        model.ref = resolve(uri)
        return model

    monkeypatch.setattr(registry, "resolve", resolve)
    monkeypatch.setattr(serve_service, "load_model", load_model)
    first = served(bundles[0])
    first.ref = resolve("models:/m@live")
    service = Service(first, poll_seconds=0.01)

    async def poll_while(step) -> None:
        task = asyncio.create_task(service.poll_registry())
        await step()
        task.cancel()

    async def until(condition) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    async def steps() -> None:
        await asyncio.sleep(0.1)  # the alias has not moved: nothing loaded
        versions["current"] = "2"
        await until(lambda: loads)
        await asyncio.sleep(0.3)  # many more polls see the broken version 2
        assert service.model is first and loads == ["2"]
        versions["current"] = "3"
        await until(lambda: service.model.ref.version == "3")

    with caplog.at_level(logging.ERROR, logger="recforge.serving"):
        asyncio.run(poll_while(steps))
    assert loads == ["2", "3"] and service.last_reload_error is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "truncated model.pt" in errors[0] and "still serving m/1" in errors[0], errors


# ------------------------------------------------------------------------------------------------- limits
def test_bodies_over_the_limit_get_a_413_before_they_are_read(bundles, tmp_path):
    service = Service(served(bundles[0]), log=RequestLog(tmp_path / "serve.jsonl"), max_body_bytes=1000)
    with running(service, TOKEN) as base:
        for path in ("/recommend", "/admin/reload"):
            # Content-Length says 50 MB and no byte of it is sent: the answer comes at once (not after a wait
            # for the body), and the connection is closed
            response = raw_exchange(base, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          f"Content-Length: 50000000\r\n\r\n".encode())
            assert response.startswith(b"HTTP/1.1 413 ") and b"connection: close" in response.lower(), response
            assert b"request body over 1000 bytes" in response
        chunk = b'{"user": 10, "k": 3, "deny_items": [' + b"500, " * 200 + b"501]}"  # chunked, no length
        response = raw_exchange(base, b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
        assert response.startswith(b"HTTP/1.1 413 "), response
        assert call(f"{base}/recommend", {"user": 10, "k": 3, "deny_items": [500] * 150})[0] == 200  # under
    from prometheus_client import generate_latest

    lines = [json.loads(line) for line in (tmp_path / "serve.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == [413, 413, 413, 200]
    assert 'recforge_requests_total{endpoint="/recommend",status="413"} 2.0' in \
        generate_latest(service.metrics.registry).decode()


def test_long_lists_and_ids_are_4xx_and_never_echoed_whole(bundles, tmp_path):
    log_path = tmp_path / "serve.jsonl"
    service = Service(served(bundles[0]), log=RequestLog(log_path), max_list_items=50)
    long_id = "L" * 10_000
    with running(service) as base:
        status, body, _ = call(f"{base}/recommend", {"user": 10, "deny_items": [500] * 51})
        assert status == 400 and body["detail"].startswith("deny_items: 51 ids, more than the 50 allowed")
        assert call(f"{base}/recommend", {"user": 10, "allow_items": [500] * 50})[0] == 200
        status, body, _ = call(f"{base}/recommend", {"user": long_id})
        assert status == 422 and "user: Value error, an id has at most 256 characters (got 10000)" in body["detail"]
        assert "(10002 characters)" in body["detail"] and len(json.dumps(body)) < 500
        assert body["errors"] == [{"loc": ["body", "user"], "msg": "Value error, an id has at most 256 characters "
                                   "(got 10000)", "type": "value_error"}]
        status, body, _ = call(f"{base}/recommend", {"user": 10, "allow_items": [500, long_id]})
        assert status == 422 and body["errors"][0]["loc"] == ["body", "allow_items", 1]
        assert call(f"{base}/recommend", {"user": 2 ** 70})[0] == 422  # integer ids are 64-bit
        assert call(f"{base}/recommend", {"user": 10, "k": 10 ** 100})[0] == 422
        status, body, _ = call(f"{base}/similar-items/{'i' * 1000}")
        assert status == 422 and "item_id: String should have at most 256 characters" in body["detail"]
        assert len(json.dumps(body)) < 500
        status, body, _ = call(f"{base}/recommend", {"user": "u" * 256, "k": 2})  # at the limit: served
        assert status == 200 and body["fallback"] and body["user"] == "u" * 256
    text = log_path.read_text()
    assert len(text) < 4000 and long_id[:100] not in text
    assert [json.loads(line)["status"] for line in text.splitlines()] == [400, 200, 422, 422, 422, 422, 422, 200]


def test_the_request_log_rotates_by_size_and_keeps_the_given_count(tmp_path):
    path = tmp_path / "logs" / "serve.jsonl"
    record = {"endpoint": "/recommend", "status": 200, "user": "x" * 60}
    line_bytes = len(json.dumps({**record, "i": 100}, separators=(",", ":"))) + 1
    per_file = -(-1000 // line_bytes)  # the write that takes a file to 1,000 bytes or more rotates it

    def write(request_log: RequestLog, numbers: range) -> None:
        for i in numbers:
            request_log.write({**record, "i": i})
        request_log.close()

    def numbers(name: str) -> list[int]:
        return [json.loads(line)["i"] for line in (path.parent / name).read_text().splitlines()]

    write(RequestLog(path, max_bytes=1000, backups=2), range(100, 100 + 3 * per_file + 2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["serve.jsonl", "serve.jsonl.1", "serve.jsonl.2"]
    assert numbers("serve.jsonl.2") == list(range(100 + per_file, 100 + 2 * per_file))  # the first file dropped
    assert numbers("serve.jsonl.1") == list(range(100 + 2 * per_file, 100 + 3 * per_file))
    assert numbers("serve.jsonl") == [100 + 3 * per_file, 101 + 3 * per_file]
    # a restarted service continues the current file's size: per_file - 2 more lines fill it
    write(RequestLog(path, max_bytes=1000, backups=2), range(102 + 3 * per_file, 100 + 4 * per_file))
    assert numbers("serve.jsonl") == [] and numbers("serve.jsonl.1") == list(range(100 + 3 * per_file,
                                                                                   100 + 4 * per_file))
    write(RequestLog(tmp_path / "one.jsonl", max_bytes=1000, backups=0), range(100, 125))  # keeps no old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "one.jsonl"]
    assert (tmp_path / "one.jsonl").stat().st_size == (25 % per_file) * line_bytes


# ---------------------------------------------------------------------------------------------------- CLIs
@pytest.mark.parametrize("kind", ["truncated model.pt", "missing items.parquet", "untrusted class"])
def test_serve_and_recommend_report_a_corrupt_bundle_in_one_line(bundles, tmp_path, capsys, kind):
    from recforge.serving import batch

    broken = corrupt(kind, bundles[0], tmp_path)
    for main, args in ((cli.main, ["--log-file", "none"]), (batch.main, ["--output", str(tmp_path / "r.pq")])):
        with pytest.raises(SystemExit) as stop:
            main(["--bundle", str(broken), *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {broken}"), err
    assert not (tmp_path / "r.pq").exists()


def test_the_admin_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(admin.ADMIN_TOKEN_ENV, raising=False)
    assert admin_token(None) is None
    monkeypatch.setenv(admin.ADMIN_TOKEN_ENV, f"  {TOKEN}\n")
    assert admin_token(None) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789abcdef\n")
    assert admin_token(str(token_file)) == "file-token-0123456789abcdef"  # the file wins over the variable
    monkeypatch.setenv(admin.ADMIN_TOKEN_ENV, "short")
    with pytest.raises(RecForgeError, match=f"{admin.ADMIN_TOKEN_ENV}: the admin token must be at least 16"):
        admin_token(None)
    token_file.write_text("has spaces in the middle of it\n")
    with pytest.raises(RecForgeError, match="without spaces"):
        admin_token(str(token_file))
    with pytest.raises(SystemExit) as stop:  # checked before the model is loaded (that error would be another)
        cli.main(["--bundle", str(tmp_path / "no-bundle"), "--admin-token-file", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"error: --admin-token-file {tmp_path / 'nope'}: cannot read it")
