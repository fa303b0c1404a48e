"""Workers on many machines: the Worker heartbeat table, the worker loop, the controller, launch, status, jobs.

A worker (``pipeline worker``) is one process that walks the auto-populated tables in
dependency order and calls ``populate(reserve_jobs=True, suppress_errors=True, ...)`` on each,
again and again. The database is the only thing workers share:

- the jobs tables (DataJoint's ``~~table``) hand out keys atomically;
- the ``Worker`` table holds one row per worker process, kept alive by a heartbeat thread on
  its own connection (so a long computation, or a dropped main connection, does not stop it);
- the controller (``pipeline controller``, and every worker now and then) creates missing jobs
  tables, refreshes the queues and puts back to pending any job reserved by a worker whose
  heartbeat is older than the timeout (DataJoint never recovers a SIGKILLed worker's job).

Policies (what "a job is not lost" means here):

- SIGTERM / SIGINT: the worker takes no new job; the current job may finish within the grace
  period; otherwise it is interrupted and put back to *pending* (never left reserved, never
  marked as an error), and the worker exits with status 0 before the grace period is over.
- A lost database connection during a job is an infrastructure failure, not the job's: the
  worker reconnects and puts the job back to pending (at most ``RETRIES_AFTER_LOST_CONNECTION``
  times per key, after that the error is recorded, so a job that kills its connection, e.g. by
  exceeding the server's packet size, cannot loop forever).
- A job that raises: the message and traceback go to the jobs table (``pipeline jobs``), the
  worker goes on with other keys; ``pipeline jobs retry`` puts errors back.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Sequence

import datajoint as dj

schema = dj.Schema()

log = logging.getLogger("pipeline.worker")

LIVE_STATUSES = ("idle", "busy", "stopping")
RETRIES_AFTER_LOST_CONNECTION = 2
WORKER_MEMORY_S = 7 * 24 * 3600
BATCH_SECONDS = 2.0
MAX_BATCH = 50


@schema
class Worker(dj.Manual):
    definition = """
    # a worker process and its heartbeat (server time)
    worker_id: varchar(64)           # host:pid:token, unique over time
    ---
    host: varchar(255)               # as DataJoint writes it in jobs.host
    pid: int32                       # as DataJoint writes it in jobs.pid
    gpu="": varchar(64)              # CUDA_VISIBLE_DEVICES of the worker ('' = CPU only)
    started: datetime(3)
    last_seen: datetime(3)           # the last heartbeat
    status: enum('idle', 'busy', 'stopping', 'stopped', 'lost')
    current_table="": varchar(255)   # the table of the job being computed
    current_key="": varchar(2047)    # its key as JSON
    jobs_done=0: int32
    jobs_failed=0: int32
    """


# ---------------------------------------------------------------------------------------------
# tables: the stages' and those of extra modules (a lab's own analysis tables)
# ---------------------------------------------------------------------------------------------


def activate_modules(names: Sequence[str], prefix: str, connection: dj.Connection) -> list[ModuleType]:
    """Import and activate extra schema modules; return them.

    A module is a DataJoint schema module like the stages: a module-level ``schema =
    dj.Schema()`` and tables decorated with ``@schema``. It is activated as
    ``<prefix><STAGE>`` where ``STAGE`` is the module's ``STAGE`` attribute or the last part of
    its name, after the stages it may reference.
    """
    modules = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise SystemExit(f"pipeline: cannot import schema module {name!r}: {error}") from None
        module_schema = getattr(module, "schema", None)
        if not isinstance(module_schema, dj.Schema):
            raise SystemExit(f"pipeline: module {name!r} has no `schema = dj.Schema()` (expected a schema module)")
        database = prefix + getattr(module, "STAGE", name.rsplit(".", 1)[-1])
        if module_schema.database != database or module_schema.connection is not connection:
            if module_schema.database is not None:
                module_schema.database = None
            _retry_race(lambda: module_schema.activate(database, connection=connection))
        modules.append(module)
    return modules


def module_auto_tables(modules: Sequence[ModuleType]) -> list[type]:
    """The Imported/Computed tables of extra modules, in declaration (dependency) order."""
    out = []
    for module in modules:
        for cls, _context in module.schema.declare_list:
            if issubclass(cls, (dj.Imported, dj.Computed)):
                out.append(cls)
    return out


def select_tables(names: Sequence[str] | None, modules: Sequence[ModuleType] = ()) -> list[type]:
    """Auto-populated tables in dependency order, filtered by class name (or ``stage.Class``)."""
    import schemas

    candidates = schemas.auto_tables() + module_auto_tables(modules)
    if not names:
        return candidates
    chosen = []
    for name in names:
        stage, _, cls_name = name.rpartition(".")
        found = [c for c in candidates if c.__name__ == cls_name and (not stage or c.__module__.endswith(stage))]
        if not found:
            known = ", ".join(c.__name__ for c in candidates)
            raise SystemExit(f"pipeline: no auto-populated table {name!r} (expected one of: {known})")
        chosen.extend(c for c in found if c not in chosen)
    return [c for c in candidates if c in chosen]  # keep dependency order


def _retry_race(action, attempts: int = 5):
    """Run an idempotent action that concurrent workers may race for, retrying the race.

    The races: two processes declaring one jobs table (PostgreSQL DuplicateTable), and two
    processes refreshing one queue (a MariaDB/MySQL deadlock, error 1213, or PostgreSQL's).
    """
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - re-raised below unless it is the race
            text = str(error).lower()
            race = "already exists" in text or "duplicate" in text or "deadlock" in text
            if attempt == attempts - 1 or not race:
                raise
            time.sleep(0.05 * (attempt + 1))


def ensure_jobs_tables(tables: Sequence[type]) -> int:
    """Create the jobs tables that do not exist yet; return how many were created."""
    created = 0
    for cls in tables:
        jobs = _retry_race(lambda: cls().jobs)
        if not jobs.is_declared:
            _retry_race(jobs.declare)
            created += 1
    return created


# ---------------------------------------------------------------------------------------------
# the controller: queues and recovery of dead workers' jobs
# ---------------------------------------------------------------------------------------------


def _interval(connection: dj.Connection, seconds: float) -> str:
    return connection.adapter.interval_expr(int(round(seconds * 1e6)), "microsecond")


def _now(connection: dj.Connection) -> str:
    return connection.adapter.current_timestamp_expr(3)


def _sql_condition(expr) -> str:
    """The WHERE condition of a restricted DataJoint expression (values escaped by DataJoint)."""
    where = expr.where_clause()
    return where[len(" WHERE ") :] if where.startswith(" WHERE ") else "TRUE"


def release_reserved(jobs, restriction: dict | list | None = None) -> int:
    """Put reserved jobs matching ``restriction`` back to pending; return how many.

    One conditional UPDATE: a job that was completed or re-reserved meanwhile is left alone.
    The priority and the scheduled time are kept.
    """
    expr = jobs.reserved
    if restriction is not None:
        expr = expr & restriction
    condition = _sql_condition(expr)
    cursor = jobs.connection.query(
        f"UPDATE {jobs.full_table_name} SET status='pending', reserved_time=NULL, host='', pid=0, "
        f"connection_id=0 WHERE {condition}"
    )
    return cursor.rowcount


def mark_lost_workers(connection: dj.Connection, heartbeat_timeout: float) -> int:
    """Mark live-looking workers whose heartbeat is older than ``heartbeat_timeout`` as lost."""
    table = Worker()
    statuses = ", ".join(f"'{s}'" for s in LIVE_STATUSES)
    cursor = connection.query(
        f"UPDATE {table.full_table_name} SET status='lost', current_table='', current_key='' "
        f"WHERE status IN ({statuses}) AND last_seen < {_now(connection)} - {_interval(connection, heartbeat_timeout)}"
    )
    return cursor.rowcount


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def recover_orphans(tables: Sequence[type], heartbeat_timeout: float) -> dict[str, int]:
    """Put back to pending the jobs of dead workers; return counts per table.

    A reserved job is orphaned when its (host, pid) belongs to no live worker and either a
    worker row with that host and pid has stopped heartbeating (any machine), or the host is
    this machine and no process has that pid (a ``populate()`` killed in a notebook).
    """
    connection = Worker.connection
    mark_lost_workers(connection, heartbeat_timeout)
    # forget workers gone for a week (their jobs were recovered long ago)
    connection.query(
        f"DELETE FROM {Worker.full_table_name} WHERE status IN ('stopped', 'lost') "
        f"AND last_seen < {_now(connection)} - {_interval(connection, WORKER_MEMORY_S)}"
    )
    rows = Worker().to_dicts()
    live = {(r["host"], r["pid"]) for r in rows if r["status"] in LIVE_STATUSES}
    dead = {(r["host"], r["pid"]) for r in rows if r["status"] in ("lost", "stopped")} - live
    here = platform.node()
    counts = {}
    for cls in tables:
        jobs = cls().jobs
        holders = {(h, int(p)) for h, p in zip(*jobs.reserved.to_arrays("host", "pid"))} if len(jobs.reserved) else set()
        orphans = [
            (h, p) for (h, p) in holders if (h, p) not in live and ((h, p) in dead or (h == here and not _pid_alive(p)))
        ]
        n = sum(release_reserved(jobs, {"host": h, "pid": p}) for h, p in orphans)
        if n:
            log.warning("%s: %d job(s) of dead workers put back to pending", cls.__name__, n)
            counts[cls.__name__] = n
    return counts


def refresh_queue(cls: type, restrictions: Sequence[dict] = ()) -> int:
    """Add the keys that are ready to ``cls``'s jobs table; return how many were added."""
    priority = getattr(cls, "job_priority", None)
    return _retry_race(lambda: cls().jobs.refresh(*restrictions, delay=-1, priority=priority)["added"])


def control(tables: Sequence[type], heartbeat_timeout: float, restrictions: Sequence[dict] = ()) -> dict:
    """One controller pass: jobs tables, queues, recovery of dead workers' jobs."""
    ensure_jobs_tables(tables)
    added = {cls.__name__: refresh_queue(cls, restrictions) for cls in tables}
    recovered = recover_orphans(tables, heartbeat_timeout)
    return {"added": {k: v for k, v in added.items() if v}, "recovered": recovered}


# ---------------------------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------------------------


def pin_gpu(gpu: str | None) -> str:
    """Choose this worker's GPU before CUDA initializes; return CUDA_VISIBLE_DEVICES ('' = CPU).

    ``gpu`` given: that device ("none" hides every GPU). Otherwise the scheduler's choice:
    SLURM (or docker) sets CUDA_VISIBLE_DEVICES; if it lists several devices and SLURM_LOCALID
    is set, this task takes the one at its local rank.
    """
    if gpu is not None:
        value = "" if gpu.lower() in ("none", "cpu", "") else gpu
    else:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        local = os.environ.get("SLURM_LOCALID")
        if len(visible) > 1 and local is not None and int(local) < len(visible):
            value = visible[int(local)]
        else:
            value = ",".join(visible)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if getattr(torch.cuda, "is_initialized", lambda: False)():
            raise RuntimeError("CUDA was initialized before the worker pinned its GPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def key_json(key: dict) -> str:
    return json.dumps(dict(key), default=_jsonable, sort_keys=True)[:2047]


class Interrupted(SystemExit):
    """Raised in the main thread when the grace period of a stopping worker runs out."""


@dataclass
class WorkerOptions:
    tables: list[str] | None = None
    modules: list[str] = field(default_factory=list)
    restrictions: list[dict] = field(default_factory=list)
    priority: int | None = None
    max_jobs: int | None = None
    exit_when_idle: bool = False
    batch: int | None = None  # None: adaptive
    poll: float = 2.0
    heartbeat: float = 10.0
    heartbeat_timeout: float = 60.0
    controller_interval: float = 30.0
    refresh_interval: float = 5.0
    grace: float = 30.0
    gpu: str | None = None
    progress: bool = False  # tqdm bars per populate call (an interactive run, e.g. the demo)


class WorkerProcess:
    """The worker loop of this process (one per process: it owns the signal handlers)."""

    def __init__(self, connection: dj.Connection, tables: Sequence[type], options: WorkerOptions, gpu: str = ""):
        self.connection = connection
        self.options = options
        self.gpu = gpu
        self.host = platform.node()
        self.pid = os.getpid()
        self.worker_id = f"{self.host[:40]}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.tables = [cls() for cls in tables]
        self.status = "idle"
        self.current: tuple[str, str] = ("", "")
        self.done = 0
        self.failed = 0
        self.stopping = False
        self.signalled = False
        self.interrupting = False
        self.in_job = False
        self.lost_connection_retries: dict[tuple[str, str], int] = {}
        self._last_refresh: dict[str, float] = {}
        self._durations: dict[str, float] = {}  # running mean of job durations per table
        self._last_control = 0.0
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._job_started = 0.0
        for table in self.tables:
            self._instrument(table)

    # -- the jobs of a table report to the worker -----------------------------------------

    def _instrument(self, table) -> None:
        """Wrap the table's jobs object so the worker knows the current job and its outcome."""
        jobs = table.jobs
        reserve, complete, error = jobs.reserve, jobs.complete, jobs.error
        name = table.__class__.__name__

        def on_reserve(key):
            if self.stopping:  # take no new job once asked to stop
                return False
            if not reserve(key):
                return False
            self.in_job = True
            self._job_started = time.monotonic()
            self.current = (name, key_json(jobs._get_pk(key)))
            self.status = "busy"
            # populate() installed a SIGTERM handler that marks the job as an error: ours
            # lets the job finish within the grace period, then puts it back to pending
            self._install_signal_handlers()
            return True

        def on_complete(key, duration=None):
            complete(key, duration=duration)
            self._finish_job(name, key, ok=True)

        def on_error(key, error_message, error_stack=None):
            job = (name, key_json(jobs._get_pk(key)))
            if self.interrupting:
                release_reserved(jobs, {**jobs._get_pk(key), "host": self.host, "pid": self.pid})
                log.warning("%s %s: interrupted by the stop request, put back to pending", name, job[1])
                self._finish_job(name, key, ok=None)
                return
            if error_message.startswith("LostConnectionError"):
                retries = self.lost_connection_retries.get(job, 0)
                if retries < RETRIES_AFTER_LOST_CONNECTION:
                    self.lost_connection_retries[job] = retries + 1
                    self._after_lost_connection()
                    release_reserved(jobs, {**jobs._get_pk(key), "host": self.host, "pid": self.pid})
                    log.warning("%s %s: database connection lost, reconnected, job put back to pending", *job)
                    self._finish_job(name, key, ok=None)
                    return
            error(key, error_message, error_stack)
            log.error("%s %s: %s", name, job[1], error_message.splitlines()[0][:300])
            self._finish_job(name, key, ok=False)

        jobs.reserve, jobs.complete, jobs.error = on_reserve, on_complete, on_error

    def _finish_job(self, name: str, key: dict, ok: bool | None) -> None:
        elapsed = time.monotonic() - self._job_started
        previous = self._durations.get(name)
        self._durations[name] = elapsed if previous is None else 0.8 * previous + 0.2 * elapsed
        if ok:
            self.done += 1
            log.info("%s %s done in %.2f s", name, self.current[1], elapsed)
        elif ok is False:
            self.failed += 1
        self.in_job = False
        self.current = ("", "")
        self.status = "stopping" if self.stopping else "idle"
        signal.setitimer(signal.ITIMER_REAL, 0)  # a finished job needs no interruption

    def _after_lost_connection(self) -> None:
        from . import database

        if database.ensure_connected(self.connection):
            # a new session: no transaction is open on it, whatever DataJoint's flag says
            self.connection._in_transaction = False
            self.connection.connection_id = self.connection.adapter.get_connection_id(self.connection._conn)
        elif self.connection.in_transaction:  # left open by a make() that broke off
            self.connection.cancel_transaction()

    # -- signals ------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGALRM, self._on_grace_over)

    def _on_stop_signal(self, signum, frame) -> None:
        if self.stopping and self.in_job:  # a second request: interrupt now
            self._on_grace_over(signum, frame)
        self.stopping = True
        self.signalled = True
        self.status = "stopping"
        log.warning("worker %s: %s received, stopping", self.worker_id, signal.Signals(signum).name)
        if self.in_job:
            # leave time, within the grace period, to put the job back and to exit
            margin = min(5.0, 0.4 * self.options.grace)
            signal.setitimer(signal.ITIMER_REAL, max(0.01, self.options.grace - margin))

    def _on_grace_over(self, signum, frame) -> None:
        if self.in_job:
            self.interrupting = True
            raise Interrupted("stop requested and grace period over: job interrupted")

    # -- heartbeat ----------------------------------------------------------------------------

    def _register(self) -> None:
        # a new process: any job still reserved under this host and pid is an orphan of an
        # earlier process that had the same pid
        for table in self.tables:
            release_reserved(table.jobs, {"host": self.host, "pid": self.pid})
        now = self.connection.query(f"SELECT {_now(self.connection)}").fetchone()[0]
        Worker.insert1(
            dict(worker_id=self.worker_id, host=self.host, pid=self.pid, gpu=self.gpu, started=now, last_seen=now,
                 status="idle")
        )

    def _beat_sql(self) -> str:
        return (
            f"UPDATE {Worker.full_table_name} SET last_seen={_now(self.connection)}, status=%s, current_table=%s, "
            "current_key=%s, jobs_done=%s, jobs_failed=%s WHERE worker_id=%s"
        )

    def _beat(self, connection: dj.Connection) -> None:
        table, key = self.current
        connection.query(self._beat_sql(), args=(self.status, table, key, self.done, self.failed, self.worker_id))

    def _heartbeat_loop(self) -> None:
        """Runs in its own thread, on its own connection, for as long as the worker lives."""
        info = self.connection.conn_info
        beat_connection = None
        while not self._beat_stop.is_set():
            try:
                if beat_connection is None:
                    beat_connection = dj.Connection(
                        info["host"], info["user"], info["passwd"], info["port"], use_tls=info.get("ssl_input"),
                        backend=self.connection.adapter.backend,
                    )
                self._beat(beat_connection)
            except Exception as error:  # noqa: BLE001 - the next beat reconnects
                log.warning("worker %s: heartbeat failed (%s), reconnecting", self.worker_id, error)
                beat_connection = None
            self._beat_stop.wait(self.options.heartbeat)
        if beat_connection is not None:
            beat_connection.close()

    # -- the loop -----------------------------------------------------------------------------

    def _refresh_due(self, table) -> bool:
        name = table.__class__.__name__
        return time.monotonic() - self._last_refresh.get(name, -1e9) >= self.options.refresh_interval

    def _refresh(self, table) -> None:
        refresh_queue(table.__class__, self.options.restrictions)
        self._last_refresh[table.__class__.__name__] = time.monotonic()

    def _control_if_due(self) -> None:
        if time.monotonic() - self._last_control >= self.options.controller_interval:
            recover_orphans([t.__class__ for t in self.tables], self.options.heartbeat_timeout)
            self._last_control = time.monotonic()

    def _remaining(self) -> int | None:
        if self.options.max_jobs is None:
            return None
        return self.options.max_jobs - self.done - self.failed

    def _populate(self, table) -> int:
        """One populate call on ``table``; return the number of jobs it ran."""
        remaining = self._remaining()
        batch = self.options.batch or self._adaptive_batch(table.__class__.__name__)
        calls = batch if remaining is None else min(batch, remaining)
        before = self.done + self.failed
        started = time.monotonic()
        try:
            table.populate(
                *self.options.restrictions,
                reserve_jobs=True,
                suppress_errors=True,
                max_calls=calls,
                priority=self.options.priority,
                refresh=False,
                display_progress=self.options.progress,
            )
        except SystemExit:
            # a stop request, or DataJoint's own SIGTERM handler between two jobs
            self.stopping = True
            self.signalled = True
            self.status = "stopping"
        except Exception as error:  # noqa: BLE001 - the connection broke during a job
            log.warning("%s: %s: %s; reconnecting", table.__class__.__name__, type(error).__name__, error)
            self._after_lost_connection()
            self.in_job = False
            self.current = ("", "")
            self.status = "stopping" if self.stopping else "idle"
            release_reserved(table.jobs, {"host": self.host, "pid": self.pid})
        finally:
            self._install_signal_handlers()
        if time.monotonic() - started > 1.0:
            # a long computation: the server may have dropped the idle connection meanwhile
            self._after_lost_connection()
        return self.done + self.failed - before

    def _adaptive_batch(self, name: str) -> int:
        """Keys to list per populate call: about ``BATCH_SECONDS`` of work, 1 to ``MAX_BATCH``.

        Short jobs: a long list, so the pending query is paid once per many jobs; long jobs:
        one key at a time, so a more urgent job that arrives meanwhile is taken next.
        """
        duration = self._durations.get(name)
        if duration is None:
            return 4
        return int(min(MAX_BATCH, max(1, BATCH_SECONDS / max(duration, 1e-3))))

    def _idle(self) -> bool:
        """True when no job is pending or reserved in this worker's tables (after a refresh)."""
        for table in self.tables:
            self._refresh(table)
            jobs = table.jobs
            scope = jobs & self.options.restrictions if self.options.restrictions else jobs
            if len(scope & "status in ('pending', 'reserved')"):
                return False
        return True

    def run(self) -> int:
        """Work until stopped, ``max_jobs`` done, or (with ``exit_when_idle``) nothing is left."""
        self._install_signal_handlers()
        self._register()
        self._beat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._beat_thread.start()
        log.info("worker %s started (gpu %r) on %s", self.worker_id, self.gpu, [t.__class__.__name__ for t in self.tables])
        try:
            while not self.stopping:
                self._control_if_due()
                ran = 0
                for table in self.tables:
                    if self.stopping or self._remaining() == 0:
                        break
                    n = self._populate(table)
                    if n == 0 and self._refresh_due(table):
                        self._refresh(table)
                        n = self._populate(table)
                    ran += n
                if self._remaining() == 0:
                    break
                if ran == 0 and not self.stopping:
                    if self.options.exit_when_idle and self._idle():
                        break
                    self._sleep(self.options.poll)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._beat_stop.set()
            self._beat_thread.join(timeout=1)
            self.status = "stopped"
            try:
                self._after_lost_connection()
                # nothing stays reserved under this process once it is gone (e.g. a stop
                # request that arrived in the middle of a reservation)
                for table in self.tables:
                    release_reserved(table.jobs, {"host": self.host, "pid": self.pid})
                self._beat(self.connection)
            except Exception as error:  # noqa: BLE001 - the controller will mark it lost
                log.warning("worker %s: could not record its exit: %s", self.worker_id, error)
        log.info("worker %s stopped: %d done, %d failed", self.worker_id, self.done, self.failed)
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def _modules_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module", dest="modules", action="append", default=None, metavar="MODULE",
        help="an extra schema module whose tables to include (a lab's own tables; repeatable; "
        "default $PIPELINE_MODULES, comma-separated)",
    )


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _modules_option(parser)
    parser.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables (class names)")
    parser.add_argument("--restrict", nargs="+", default=[], metavar="ATTR=VALUE", help="only keys matching these")
    parser.add_argument("--priority", type=int, help="only jobs of this priority or more urgent (lower number)")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when nothing is pending or reserved")
    parser.add_argument("--gpu", help="the GPU this worker uses (an index; 'none' for CPU only); default: "
                        "the scheduler's CUDA_VISIBLE_DEVICES / SLURM_LOCALID")
    parser.add_argument("--batch", type=int, help="keys listed per populate call (default: about 2 s of work, "
                        "from the mean job duration, 1 to 50)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks when idle (default 2)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats (default 10)")
    parser.add_argument("--heartbeat-timeout", type=float, default=60.0,
                        help="a worker silent this long is dead and its jobs go back to pending (default 60)")
    parser.add_argument("--controller-interval", type=float, default=30.0,
                        help="seconds between this worker's recovery passes (default 30)")
    parser.add_argument("--refresh-interval", type=float, default=5.0,
                        help="seconds between refreshes of a table's queue (default 5)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds a stopping worker gives its job before putting it back (default 30)")


def _module_names(args) -> list[str]:
    if args.modules:
        return [m for value in args.modules for m in value.split(",") if m]
    return [m for m in os.environ.get("PIPELINE_MODULES", "").split(",") if m.strip()]


def _activate(args) -> tuple[dj.Connection, list[ModuleType]]:
    import schemas

    prefix = schemas.activate(args.prefix)
    connection = Worker.connection
    modules = activate_modules(_module_names(args), prefix, connection)
    return connection, modules


def _setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def options_from_args(args) -> WorkerOptions:
    from .cli import parse_restrictions

    restrictions = [parse_restrictions(args.restrict)] if args.restrict else []
    return WorkerOptions(
        tables=args.tables, modules=_module_names(args), restrictions=restrictions, priority=args.priority,
        max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle, batch=args.batch, poll=args.poll,
        heartbeat=args.heartbeat, heartbeat_timeout=args.heartbeat_timeout,
        controller_interval=args.controller_interval, refresh_interval=args.refresh_interval, grace=args.grace,
        gpu=args.gpu,
    )


def _cmd_worker(args) -> int:
    _setup_logging()
    gpu = pin_gpu(args.gpu)  # before anything can initialize CUDA
    options = options_from_args(args)
    connection, modules = _activate(args)
    tables = select_tables(options.tables, modules)
    ensure_jobs_tables(tables)
    worker = WorkerProcess(connection, tables, options, gpu=gpu)
    code = worker.run()
    if worker.signalled:
        # everything is recorded; tearing down the interpreter (torch and friends) can take
        # seconds on a busy machine, which the grace period does not have
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _cmd_controller(args) -> int:
    _setup_logging()
    from .cli import parse_restrictions

    connection, modules = _activate(args)
    tables = select_tables(args.tables, modules)
    restrictions = [parse_restrictions(args.restrict)] if args.restrict else []
    while True:
        result = control(tables, args.heartbeat_timeout, restrictions)
        added = sum(result["added"].values())
        recovered = sum(result["recovered"].values())
        log.info("controller: %d job(s) added, %d recovered from dead workers", added, recovered)
        if args.once:
            return 0
        time.sleep(args.interval)


# -- launch -------------------------------------------------------------------------------------


def count_gpus() -> int:
    """GPUs on this machine (``nvidia-smi -L``), 0 when there is none."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_argv(args) -> list[str]:
    """The ``pipeline`` arguments that start one worker with ``args``'s worker options."""
    argv = [] if args.prefix is None else ["--prefix", args.prefix]
    argv.append("worker")
    for name in _module_names(args):
        argv += ["--module", name]
    if args.tables:
        argv += ["--tables", *args.tables]
    if args.restrict:
        argv += ["--restrict", *args.restrict]
    for option in ("priority", "max_jobs", "batch", "poll", "heartbeat", "heartbeat_timeout", "controller_interval",
                   "refresh_interval", "grace"):
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    if args.exit_when_idle:
        argv.append("--exit-when-idle")
    return argv


def run_worker_task(argv: list[str]) -> int:
    """Entry point of one scheduled worker (submitit pickles this function and its argument)."""
    from .cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"worker exited with status {code}")
    return code


def slurm_parameters(args) -> dict:
    """submitit parameters: one task, one GPU per array element, walltime and partition."""
    params = dict(
        timeout_min=int(args.walltime), slurm_array_parallelism=args.workers, tasks_per_node=1, nodes=1,
        cpus_per_task=args.cpus_per_worker, name="pipeline-worker",
    )
    if args.gpus_per_worker:
        params["gpus_per_node"] = args.gpus_per_worker
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem:
        params["mem_gb"] = args.mem
    return params


def sbatch_script(args, folder: str) -> str:
    """The sbatch script submitit would submit for ``args`` (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(args)
    return _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit '{folder}'", folder=folder,
        job_name=params["name"], partition=params.get("slurm_partition"), time=params["timeout_min"],
        ntasks_per_node=1, cpus_per_task=params["cpus_per_task"], gpus_per_node=params.get("gpus_per_node"),
        mem=f"{params['mem_gb']}GB" if "mem_gb" in params else None, array_parallelism=args.workers,
        map_count=args.workers,
    )


def _launch_submitit(args) -> int:
    try:
        import submitit
    except ImportError:
        print("pipeline launch: --cluster needs submitit: pip install 'v1-pipeline[slurm]'", file=sys.stderr)
        return 1
    folder = os.path.abspath(args.log_dir)
    if args.dry_run:
        print(sbatch_script(args, folder))
        return 0
    # create the jobs tables and fill the queues before the workers race for them
    _connection, modules = _activate(args)
    control(select_tables(args.tables, modules), args.heartbeat_timeout)
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    params = slurm_parameters(args)
    if args.cluster == "slurm":
        executor.update_parameters(**params)
    else:
        executor.update_parameters(timeout_min=params["timeout_min"], name=params["name"])
    argv = worker_argv(args)
    jobs = executor.map_array(run_worker_task, [argv] * args.workers)
    for job in jobs:
        print(f"submitted {job.job_id}")
    if args.wait:
        failed = 0
        for job in jobs:
            try:
                job.result()
            except Exception as error:  # noqa: BLE001 - reported, counted
                print(f"worker {job.job_id} failed: {error}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    return 0


def _launch_local(args) -> int:
    gpus = [g for g in args.gpus.split(",")] if args.gpus else [str(i) for i in range(count_gpus())]
    n = args.workers or (len(gpus) or os.cpu_count() or 1)
    env = dict(os.environ)
    if not gpus:
        # CPU workers: one core each, no thread oversubscription
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # create the jobs tables and fill the queues before the workers race for them
    connection, modules = _activate(args)
    control(select_tables(args.tables, modules), args.heartbeat_timeout)
    base = worker_argv(args)
    children = []
    for i in range(n):
        gpu = gpus[i % len(gpus)] if gpus else "none"
        argv = [sys.executable, "-m", "schemas.cli", *base, "--gpu", gpu]
        children.append(subprocess.Popen(argv, env=env))
    print(f"launched {n} worker(s): pids {' '.join(str(c.pid) for c in children)}", flush=True)

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes) if codes else 0


def _cmd_launch(args) -> int:
    if args.cluster:
        return _launch_submitit(args)
    return _launch_local(args)


# -- status -------------------------------------------------------------------------------------


def _bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * fraction:5.1f}%"


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_status(tables: Sequence[type]) -> list[dict]:
    """Per table: rows, keys to do, and job counts (pending, reserved, error)."""
    import schemas

    prefix = schemas.active_prefix() or ""
    out = []
    for cls in tables:
        table = cls()
        stage = table.database[len(prefix):] if table.database.startswith(prefix) else table.database
        remaining, total = table.progress()
        counts = table.jobs.progress()
        out.append(dict(table=f"{stage}.{cls.__name__}", rows=len(table),
                        total=total, remaining=remaining, pending=counts["pending"], reserved=counts["reserved"],
                        error=counts["error"]))
    return out


def live_workers(heartbeat_timeout: float) -> list[dict]:
    """Workers whose heartbeat is younger than ``heartbeat_timeout``, with seconds since it."""
    connection = Worker.connection
    fresh = f"last_seen >= {_now(connection)} - {_interval(connection, heartbeat_timeout)}"
    rows = (Worker & f"status in ('idle', 'busy', 'stopping')" & fresh).to_dicts(order_by="host, pid")
    # PostgreSQL returns an aware time; the column holds it as a naive time in the session zone
    now = connection.query(f"SELECT {_now(connection)}").fetchone()[0].replace(tzinfo=None)
    for row in rows:
        row["seconds_since"] = (now - row["last_seen"]).total_seconds()
    return rows


def latest_errors(tables: Sequence[type], limit: int = 10) -> list[dict]:
    """The most recent error jobs over ``tables``, newest first."""
    rows = []
    for cls in tables:
        jobs = cls().jobs
        for job in jobs.errors.to_dicts(order_by="completed_time DESC", limit=limit):
            key = {k: job[k] for k in jobs.primary_key}
            rows.append(dict(table=cls.__name__, key=key, time=job["completed_time"], host=job["host"],
                             pid=job["pid"], message=job["error_message"], stack=job["error_stack"]))
    rows.sort(key=lambda r: r["time"] or datetime.datetime.min, reverse=True)
    return rows[:limit]


def _cmd_status(args) -> int:
    connection, modules = _activate(args)
    tables = select_tables(args.tables, modules)
    stats = table_status(tables)
    if args.json:
        workers = live_workers(args.heartbeat_timeout)
        print(json.dumps({"tables": stats, "workers": workers, "errors": latest_errors(tables, args.errors)},
                         default=_jsonable, indent=1))
        return 0
    print(_format_table(
        ["TABLE", "ROWS", "PENDING", "RESERVED", "ERRORS", "PROGRESS"],
        [(s["table"], s["rows"], s["pending"], s["reserved"], s["error"],
          _bar((s["total"] - s["remaining"]) / s["total"] if s["total"] else 1.0)) for s in stats],
    ))
    workers = live_workers(args.heartbeat_timeout)
    lost = len(Worker & "status='lost'")
    print(f"\nWORKERS: {len(workers)} live" + (f", {lost} lost" if lost else ""))
    if workers:
        print(_format_table(
            ["HOST", "PID", "GPU", "STATUS", "SEEN", "DONE", "FAILED", "CURRENT JOB"],
            [(w["host"], w["pid"], w["gpu"] or "cpu", w["status"], f"{w['seconds_since']:.0f}s ago", w["jobs_done"],
              w["jobs_failed"], f"{w['current_table']} {w['current_key']}".strip()) for w in workers],
        ))
    errors = latest_errors(tables, args.errors)
    if errors:
        print("\nLATEST ERRORS")
        print(_format_table(
            ["TABLE", "KEY", "WHEN", "MESSAGE"],
            [(e["table"], key_json(e["key"]), e["time"], (e["message"] or "")[:100]) for e in errors],
        ))
    return 0


# -- jobs ---------------------------------------------------------------------------------------


def retry_errors(tables: Sequence[type], restriction: dict | None = None) -> dict[str, int]:
    """Put errored jobs back to pending (optionally only those matching ``restriction``)."""
    out = {}
    for cls in tables:
        jobs = cls().jobs
        errors = jobs.errors & restriction if restriction else jobs.errors
        keys = errors.keys()
        if not keys:
            continue
        errors.delete_quick()
        refresh_queue(cls, [restriction] if restriction else [])
        out[cls.__name__] = len(keys)
    return out


def _cmd_jobs(args) -> int:
    from .cli import parse_restrictions

    connection, modules = _activate(args)
    words = list(args.args)
    action = words.pop(0) if words and words[0] in ("list", "retry") else "list"
    names, pairs = [], []
    for word in words:
        (pairs if "=" in word else names).append(word)
    tables = select_tables(names or None, modules)
    restriction = parse_restrictions(pairs) if pairs else None
    if action == "retry":
        counts = retry_errors(tables, restriction)
        for name, n in counts.items():
            print(f"{name}: {n} errored job(s) put back to pending")
        if not counts:
            print("no errored jobs to retry")
        return 0
    errors = []
    for cls in tables:
        jobs = cls().jobs
        selected = jobs.errors & restriction if restriction else jobs.errors
        for job in selected.to_dicts(order_by="completed_time DESC"):
            errors.append((cls.__name__, job, [k for k in jobs.primary_key]))
    if not errors:
        print("no errored jobs")
        return 0
    for name, job, pk in errors:
        key = {k: job[k] for k in pk}
        print(f"{name} {key_json(key)}  {job['completed_time']}  {job['host']}:{job['pid']}")
        print(f"    {job['error_message']}")
        if args.traceback and job["error_stack"]:
            stack = job["error_stack"]
            print("    " + str(stack).rstrip().replace("\n", "\n    "))
    print(f"{len(errors)} errored job(s); `pipeline jobs retry [TABLE] [attr=value ...]` puts them back")
    return 0


def add_commands(subparsers) -> None:
    """The ``worker``, ``controller``, ``launch``, ``status`` and ``jobs`` commands."""
    worker = subparsers.add_parser(
        "worker", help="compute jobs of the auto-populated tables until stopped",
        description="Walk the auto-populated tables in dependency order and populate them with reserved jobs, "
        "again and again. SIGTERM/SIGINT: finish or put back the current job within --grace seconds, then exit.",
    )
    _worker_options(worker)
    worker.set_defaults(func=_cmd_worker)

    controller = subparsers.add_parser(
        "controller", help="create jobs tables, refresh queues, recover dead workers' jobs",
        description="Create missing jobs tables, add ready keys to the queues and put back to pending the jobs "
        "of workers whose heartbeat is older than --heartbeat-timeout.",
    )
    _modules_option(controller)
    controller.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables")
    controller.add_argument("--restrict", nargs="+", default=[], metavar="ATTR=VALUE", help="only keys matching these")
    controller.add_argument("--heartbeat-timeout", type=float, default=60.0, help="seconds (default 60)")
    controller.add_argument("--interval", type=float, default=30.0, help="seconds between passes (default 30)")
    controller.add_argument("--once", action="store_true", help="one pass, then exit")
    controller.set_defaults(func=_cmd_controller)

    launch = subparsers.add_parser(
        "launch", help="start N local workers, or a SLURM job array of workers",
        description="Local: one worker per GPU (or per CPU core when there is none), waiting for them all. "
        "--cluster slurm: a job array through submitit, one GPU per worker.",
    )
    launch.add_argument("-n", "--workers", type=int, help="how many workers (default: GPUs, else CPU cores)")
    launch.add_argument("--gpus", help="local GPU indices to use, comma-separated (default: all)")
    launch.add_argument("--cluster", choices=["slurm", "local", "debug"],
                        help="submit through submitit instead of starting subprocesses")
    launch.add_argument("--partition", help="SLURM partition")
    launch.add_argument("--walltime", type=float, default=240, help="minutes per worker job (default 240)")
    launch.add_argument("--gpus-per-worker", type=int, default=1, help="GPUs per array element (default 1; 0 = CPU)")
    launch.add_argument("--cpus-per-worker", type=int, default=4, help="CPUs per array element (default 4)")
    launch.add_argument("--mem", type=int, help="GB of memory per array element")
    launch.add_argument("--log-dir", default="worker-logs", help="submitit's folder (default ./worker-logs)")
    launch.add_argument("--dry-run", action="store_true", help="print the sbatch script and submit nothing")
    launch.add_argument("--wait", action="store_true", help="with --cluster: wait for the workers to end")
    _worker_options(launch)
    launch.set_defaults(func=_cmd_launch)

    status = subparsers.add_parser("status", help="per table rows and jobs, live workers, latest errors")
    _modules_option(status)
    status.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables")
    status.add_argument("--heartbeat-timeout", type=float, default=60.0, help="a live worker beat within (s)")
    status.add_argument("--errors", type=int, default=5, help="how many latest errors to show (default 5)")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=_cmd_status)

    jobs = subparsers.add_parser(
        "jobs", help="list errored jobs with their messages; `jobs retry` puts them back",
        description="`pipeline jobs [TABLE ...] [attr=value ...]` lists errors; `pipeline jobs retry [TABLE ...] "
        "[attr=value ...]` puts them back to pending.",
    )
    _modules_option(jobs)
    jobs.add_argument("args", nargs="*", metavar="[retry] TABLE|ATTR=VALUE",
                      help="'retry' to put errors back, then tables and attr=value restrictions")
    jobs.add_argument("--traceback", action="store_true", help="show each error's traceback")
    jobs.set_defaults(func=_cmd_jobs)
