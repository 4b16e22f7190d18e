"""SQL databases for tests, as a pytest plugin: `database_url` runs a test once on SQLite and once on PostgreSQL.

- **sqlite**: a file in the test's tmp_path.
- **postgresql**: a database `tc_test_<hex>` of its own per test module, created on the PostgreSQL at 127.0.0.1:5432
  (user postgres, trust auth; another server's admin URL in `PG_TEST_ADMIN_URL`), emptied before each test and
  dropped after the module. When no server answers there, a private one is started from Debian's binaries
  (/usr/lib/postgresql/*/bin, initdb into a temporary folder, as the `postgres` user when we run as root, on a free
  port) for the session. When that is impossible too, the PostgreSQL variant is skipped, with the reason.

Use it from a test module with `pytest_plugins = ["tests.databases"]` (or once in tests/conftest.py for all).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from traffic_celery.embedded_redis import free_port

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(conninfo: str) -> str | None:
    """None if a PostgreSQL answers at `conninfo`, else why not."""
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return f"{exc.__class__.__name__}: {str(exc).strip()}"


class _PrivateServer:
    """A PostgreSQL server of this test session, started from Debian's binaries in a temporary folder."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.prefix: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="tc-pg-"))
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root and runuser is missing")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A libpq URL of a PostgreSQL superuser connection (database `postgres`); skips when there is none."""
    url = os.environ.get("PG_TEST_ADMIN_URL", DEFAULT_ADMIN_URL)
    why = _answers(url)
    if why is None:
        yield url
        return
    try:
        server = _PrivateServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no PostgreSQL at {url} ({why}) and none could be started: {exc}")
    try:
        yield server.admin_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database for this test module: its SQLAlchemy URL (psycopg 3); dropped after the module."""
    name = f"tc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = postgres_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _empty_postgres(url: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once SQLite and once PostgreSQL: its SQLAlchemy URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'history.db'}"
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres(url)
    return url
