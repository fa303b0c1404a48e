"""Test fixtures: real database servers, a fresh schema prefix per test run.

The embedded PostgreSQL server (in a throwaway pipeline home) is always a backend. A
MySQL-family server is a second one when ``PIPELINE_TEST_MYSQL`` names it, as
``user[:password]@host:port`` (CI: ``root@127.0.0.1:3306``). Tests that take the ``db``
fixture run once per backend; each backend gets a fresh prefix, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="No datajoint.json found")
warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")

import datajoint as dj  # noqa: E402

import schemas  # noqa: E402
from schemas import database  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def mysql_spec() -> dict | None:
    """``PIPELINE_TEST_MYSQL`` parsed into connection settings, or None."""
    spec = os.environ.get("PIPELINE_TEST_MYSQL")
    if not spec:
        return None
    credentials, _, address = spec.rpartition("@")
    user, _, password = credentials.partition(":")
    host, _, port = address.partition(":")
    return {"user": user or "root", "password": password, "host": host, "port": int(port or 3306)}


BACKENDS = ["postgresql"] + (["mysql"] if mysql_spec() else [])


def pytest_collection_modifyitems(config, items):
    """Mark every test that takes a database fixture ``db``, so that ``-m "not db"`` runs without a server."""
    for item in items:
        if {"db", "pipeline_home"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="session")
def pipeline_home(tmp_path_factory) -> Path:
    """A throwaway pipeline home with its own embedded server, stopped at the end."""
    path = Path(os.environ.get("PIPELINE_TEST_HOME") or tmp_path_factory.mktemp("home"))
    os.environ["PIPELINE_HOME"] = str(path)
    for var in ("DJ_HOST", "DJ_USER", "DJ_PASS", "DJ_BACKEND", "DJ_PORT"):
        os.environ.pop(var, None)
    yield path
    if not os.environ.get("PIPELINE_TEST_HOME"):
        database.delete_embedded()


@dataclass
class Database:
    """A configured backend with a fresh, activated prefix."""

    backend: str
    connection: dj.Connection
    prefix: str
    env: dict = field(default_factory=dict)  # environment for subprocesses (CLI, workers)


def _connect(backend: str, home: Path) -> tuple[dj.Connection, dict]:
    env = {"PIPELINE_HOME": str(home), "DJ_IGNORE_CONFIG_FILE": "true"}
    if backend == "postgresql":
        where = database.target()
        connection = dj.Connection(where.host, "postgres", "", where.port, use_tls=False, backend="postgresql")
    else:
        spec = mysql_spec()
        connection = dj.Connection(
            spec["host"], spec["user"], spec["password"], spec["port"], use_tls=False, backend="mysql"
        )
        env.update(
            DJ_HOST=spec["host"],
            DJ_PORT=str(spec["port"]),
            DJ_USER=spec["user"],
            DJ_PASS=spec["password"],
            DJ_BACKEND="mysql",
        )
    return connection, env


@pytest.fixture(scope="session", params=BACKENDS)
def db(request, pipeline_home) -> Database:
    """Every stage's schemas activated under a fresh prefix on one backend."""
    backend = request.param
    connection, env = _connect(backend, pipeline_home)
    database.configure_stores()
    # DataJoint's own helpers (stores, codecs) use the config's connection settings
    dj.config["database.backend"] = backend
    dj.conn.connection = connection
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix, connection=connection)
    env["PIPELINE_PREFIX"] = prefix
    yield Database(backend, connection, prefix, env)
    with dj.config.override(safemode=False):
        schemas.drop_all(prefix, connection)
    connection.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings in ../shared/data; tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA
