"""Fixtures of the integration tests: a PostgreSQL server for the session (tests/integration/services.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.services import Postgres, free_port, missing, postgres_bin


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for this test session on a loopback port, with trust authentication (never reachable
    from outside this machine). PostgreSQL refuses to run as root: as root the data folder belongs to the
    ``postgres`` user the Debian package creates, and the server runs as that user."""
    bindir = postgres_bin()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing("psycopg2 (pip install -e '.[sweep]')")
    if bindir is None:
        missing("PostgreSQL's server (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="recforge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "recforge", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "server.log"), "-o",
                    f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                   check=True, capture_output=True)
    try:
        yield Postgres("127.0.0.1", port, "recforge")
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
