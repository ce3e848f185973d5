"""Services the integration tests start themselves, all on 127.0.0.1: PostgreSQL (the ``postgres`` fixture in
conftest.py) and MLflow tracking servers. Without PostgreSQL a test that needs it skips, except under CI
(``CI=true``), where it fails (:func:`missing`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing(what: str) -> None:
    """Skip a test for a missing service, or fail under CI, which must run every test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"needs {what}, and no test may skip under CI (CI=true)")
    pytest.skip(f"needs {what}")


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH, in /usr/lib/postgresql/<v>/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    tools = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return tools[-1].parent if tools else None


@dataclass
class Postgres:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        # SQLAlchemy 2.1 picks psycopg (3) for plain postgresql://; name the psycopg2 driver the sweep extra installs
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if a test before made it (closing its connections)."""
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


def start_mlflow_server(backend_uri: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free loopback port with ``backend_uri`` and artifacts proxied into
    ``folder/artifacts``; returns the process and its URL once ``/health`` answers."""
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = folder / "server.log"
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
                             str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_for_health(proc, uri, log)
    return proc, uri


def wait_for_health(proc: subprocess.Popen, uri: str, log: Path, timeout: float = 180) -> None:
    """Wait until the MLflow server ``proc`` answers on ``uri``; stop it and fail, with its log, if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                pytest.fail(f"mlflow server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session, and everything it started. One that has ended is left alone: its
    pid may belong to another process group by now."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
