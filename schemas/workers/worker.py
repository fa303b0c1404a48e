"""The worker loop: one process that populates the auto-populated tables with reserved jobs."""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import datajoint as dj

from ..database import DatabaseGone, ensure_connected, is_connection_error, is_connection_message, wait_for_connection
from .controller import _now, recover_orphans, refresh_queue, release_reserved
from .registry import Worker, key_json
from .selection import activate_with_modules, ensure_jobs_tables, select_tables, table_scopes

log = logging.getLogger("pipeline.worker")

RETRIES_AFTER_LOST_CONNECTION = 2
BATCH_SECONDS = 2.0
MAX_BATCH = 50


def scheduled_gpu() -> str:
    """The GPU(s) the scheduler gave this process, as CUDA_VISIBLE_DEVICES ('' = none).

    SLURM (or docker) sets CUDA_VISIBLE_DEVICES; if it lists several devices and SLURM_LOCALID
    is set, this task's is the one at its local rank.
    """
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    local = os.environ.get("SLURM_LOCALID")
    if len(visible) > 1 and local is not None and int(local) < len(visible):
        return visible[int(local)]
    return ",".join(visible)


def pin_gpu(gpu: str | None) -> str:
    """Choose this worker's GPU before CUDA initializes; return CUDA_VISIBLE_DEVICES ('' = CPU).

    ``gpu`` given: that device ("none" hides every GPU). Otherwise the scheduler's choice
    (:func:`scheduled_gpu`).
    """
    if gpu is not None:
        value = "" if gpu.lower() in ("none", "cpu", "") else gpu
    else:
        value = scheduled_gpu()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if getattr(torch.cuda, "is_initialized", lambda: False)():
            raise RuntimeError("CUDA was initialized before the worker pinned its GPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    return value


def limit_gpu_memory(fraction: float | None) -> None:
    """Let this process take at most ``fraction`` of its GPU's memory (workers sharing one GPU).

    Nothing happens without CUDA (a CPU worker); a fraction outside (0, 1] is an error.
    """
    if fraction is None:
        return
    if not 0 < fraction <= 1:
        raise ValueError(f"gpu_fraction = {fraction} (expected a fraction of the GPU's memory in (0, 1])")
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))


class Interrupted(SystemExit):
    """Raised in the main thread when the grace period of a stopping worker runs out."""


@dataclass
class WorkerOptions:
    tables: list[str] | None = None
    modules: list[str] = field(default_factory=list)
    restrictions: list = field(default_factory=list)  # DataJoint restrictions (Python API), on every table
    restrict: list[str] = field(default_factory=list)  # attr=value texts, typed by each table's heading
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
    gpu_fraction: float | None = None  # most of the GPU's memory this worker may take (several workers per GPU)
    give_up_after: float | None = 3600.0  # seconds without a database before the worker exits; None: never
    progress: bool = False  # tqdm bars per populate call (an interactive run, e.g. the demo)


class WorkerProcess:
    """The worker loop of this process (one per process: it owns the signal handlers).

    Every database call of the loop survives a dropped connection: the worker waits for the
    server with a capped backoff (``wait_for_connection``), puts back to pending any job it
    held, and goes on; only ``options.give_up_after`` seconds without a server end it.
    """

    def __init__(self, connection: dj.Connection, tables: Sequence[type], options: WorkerOptions, gpu: str = ""):
        self.connection = connection
        self.options = options
        self.gpu = gpu
        self.host = platform.node()
        self.pid = os.getpid()
        self.worker_id = f"{self.host[:40]}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.scopes = table_scopes(tables, options.restrictions, options.restrict)
        self.tables = [cls() for cls in self.scopes]
        self.status = "idle"
        self.current: tuple[str, str] = ("", "")
        self.done = 0
        self.failed = 0
        self.reconnects = 0
        self.stopping = False
        self.signalled = False
        self.interrupting = False
        self.in_job = False
        self.lost_connection_retries: dict[tuple[str, str], int] = {}
        self._last_refresh: dict[str, float] = {}
        self._durations: dict[str, float] = {}  # running mean of job durations per table
        self._last_control = 0.0
        self._beat_stop = threading.Event()
        self._server_back = threading.Event()  # set by the heartbeat when it reaches the server again
        self._beat_thread: threading.Thread | None = None
        self._job_started = 0.0
        for table in self.tables:
            self._instrument(table)

    def _restrictions(self, table) -> list:
        return self.scopes[table.__class__]

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
                self._put_back(jobs, key)
                log.warning("%s %s: interrupted by the stop request, put back to pending", name, job[1])
                self._finish_job(name, key, ok=None)
                return
            if error_message.startswith("DuplicateError") and table & jobs._get_pk(key):
                # another process inserted this key's row while make() computed it (its worker
                # was presumed dead, or a populate() without reservation): the key is done
                complete(key)
                log.warning("%s %s: computed meanwhile by another process; its row is kept, job done", *job)
                self._finish_job(name, key, ok=None)
                return
            if is_connection_message(error_message):
                retries = self.lost_connection_retries.get(job, 0)
                if retries < RETRIES_AFTER_LOST_CONNECTION:
                    self.lost_connection_retries[job] = retries + 1
                    log.warning("%s %s: database connection lost during the job; reconnecting", *job)
                    self._reconnect()
                    self._put_back(jobs, key)
                    log.warning("%s %s: job put back to pending", *job)
                    self._finish_job(name, key, ok=None)
                    return
            error(key, error_message, error_stack)
            log.error("%s %s: %s", name, job[1], error_message.splitlines()[0][:300])
            self._finish_job(name, key, ok=False)

        jobs.reserve, jobs.complete, jobs.error = on_reserve, on_complete, on_error

    def _put_back(self, jobs, key: dict) -> None:
        release_reserved(jobs, {**jobs._get_pk(key), "host": self.host, "pid": self.pid})

    def _finish_job(self, name: str, key: dict | None, ok: bool | None) -> None:
        elapsed = time.monotonic() - self._job_started
        if key is not None:
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

    # -- the database going away --------------------------------------------------------------

    def _reconnect(self) -> None:
        """Wait for the server (capped backoff, one log line per attempt) and reconnect.

        Raises ``DatabaseGone`` after ``options.give_up_after`` seconds without a server.
        """
        attempts = wait_for_connection(
            self.connection, give_up_after=self.options.give_up_after, log=log, wake=self._server_back
        )
        if attempts:
            self.reconnects += 1
        if self.connection.in_transaction:  # left open by a make() that broke off
            self.connection.cancel_transaction()

    def _release_mine(self) -> int:
        """Put back every job reserved under this process (none is being computed when this runs)."""
        return sum(release_reserved(table.jobs, {"host": self.host, "pid": self.pid}) for table in self.tables)

    def _guarded(self, what: str, action):
        """Run one database step of the loop; on a dropped connection, reconnect and put back what was held.

        Returns the action's result, or None when the connection dropped (the step is skipped;
        the loop comes back to it).
        """
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - only connection errors are handled here
            if not is_connection_error(error):
                raise
            log.warning(
                "%s: database connection lost (%s); reconnecting",
                what,
                (str(error).splitlines() or [type(error).__name__])[0][:200],
            )
            self._reconnect()
            if self.in_job:
                self._finish_job(self.current[0], None, ok=None)
            released = self._release_mine()
            if released:
                log.warning("%d job(s) held by this worker put back to pending", released)
            return None

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

    def _register(self) -> bool:
        # a new process: any job still reserved under this host and pid is an orphan of an
        # earlier process that had the same pid
        self._release_mine()
        now = self.connection.query(f"SELECT {_now(self.connection)}").fetchone()[0]
        # skip_duplicates: run again after a lost reply, the insert may have been committed
        Worker.insert1(
            dict(
                worker_id=self.worker_id,
                host=self.host,
                pid=self.pid,
                gpu=self.gpu,
                started=now,
                last_seen=now,
                status="idle",
            ),
            skip_duplicates=True,
        )
        return True

    def _beat_sql(self) -> str:
        return (
            f"UPDATE {Worker.full_table_name} SET last_seen={_now(self.connection)}, status=%s, current_table=%s, "
            "current_key=%s, jobs_done=%s, jobs_failed=%s WHERE worker_id=%s"
        )

    def _beat(self, connection: dj.Connection) -> None:
        table, key = self.current
        connection.query(
            self._beat_sql(), args=(self.status, table, key, self.done, self.failed, self.worker_id), reconnect=False
        )

    def _heartbeat_loop(self) -> None:
        """Runs in its own thread, on its own connection, for as long as the worker lives.

        A failed beat (server restarting, connection terminated) drops that connection; the
        next beat opens a new one, so the thread outlives any outage.
        """
        info = self.connection.conn_info
        beat_connection = None
        failures = 0
        while not self._beat_stop.is_set():
            try:
                if beat_connection is None:
                    beat_connection = dj.Connection(
                        info["host"],
                        info["user"],
                        info["passwd"],
                        info["port"],
                        use_tls=info.get("ssl_input"),
                        backend=self.connection.adapter.backend,
                    )
                self._beat(beat_connection)
                if failures:
                    log.warning("worker %s: heartbeat back after %d failed beat(s)", self.worker_id, failures)
                    self._server_back.set()  # a main loop waiting for the server need not wait longer
                failures = 0
            except Exception as error:  # noqa: BLE001 - the next beat reconnects
                failures += 1
                log.warning(
                    "worker %s: heartbeat failed (%s), reconnecting at the next beat",
                    self.worker_id,
                    (str(error).splitlines() or [type(error).__name__])[0][:200],
                )
                if beat_connection is not None:
                    try:
                        beat_connection.close()
                    except Exception:  # noqa: BLE001 - it is already broken
                        pass
                beat_connection = None
            self._beat_stop.wait(self.options.heartbeat)
        if beat_connection is not None:
            beat_connection.close()

    # -- the loop -----------------------------------------------------------------------------

    def _refresh_due(self, table) -> bool:
        name = table.__class__.__name__
        return time.monotonic() - self._last_refresh.get(name, -1e9) >= self.options.refresh_interval

    def _refresh(self, table) -> None:
        refresh_queue(table.__class__, self._restrictions(table))
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
            self._guarded(
                f"{table.__class__.__name__}.populate",
                lambda: table.populate(
                    *self._restrictions(table),
                    reserve_jobs=True,
                    suppress_errors=True,
                    max_calls=calls,
                    priority=self.options.priority,
                    refresh=False,
                    display_progress=self.options.progress,
                ),
            )
        except SystemExit:
            # a stop request, or DataJoint's own SIGTERM handler between two jobs
            self.stopping = True
            self.signalled = True
            self.status = "stopping"
        finally:
            self._install_signal_handlers()
        if time.monotonic() - started > 1.0:
            # a long computation: the server may have dropped the idle connection meanwhile
            self._guarded("connection probe", lambda: ensure_connected(self.connection))
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
            restrictions = self._restrictions(table)
            scope = jobs & dj.AndList(restrictions) if restrictions else jobs
            if len(scope & "status in ('pending', 'reserved')"):
                return False
        return True

    def _pass(self) -> int:
        """One walk over the tables; return how many jobs ran."""
        self._guarded("controller pass", self._control_if_due)
        ran = 0
        for table in self.tables:
            if self.stopping or self._remaining() == 0:
                break
            n = self._populate(table)
            if n == 0 and self._refresh_due(table):
                self._guarded(f"{table.__class__.__name__} queue refresh", lambda table=table: self._refresh(table))
                n = self._populate(table)
            ran += n
        return ran

    def run(self) -> int:
        """Work until stopped, ``max_jobs`` done, or (with ``exit_when_idle``) nothing is left."""
        self._install_signal_handlers()
        while not self._guarded("registration", self._register):
            pass  # the server went away meanwhile: _guarded waited for it
        self._beat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._beat_thread.start()
        log.info(
            "worker %s started (gpu %r) on %s", self.worker_id, self.gpu, [t.__class__.__name__ for t in self.tables]
        )
        try:
            while not self.stopping:
                ran = self._pass()
                if self._remaining() == 0:
                    break
                if ran == 0 and not self.stopping:
                    if self.options.exit_when_idle and self._guarded("idle check", self._idle):
                        break
                    self._sleep(self.options.poll)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._beat_stop.set()
            self._beat_thread.join(timeout=1)
            self.status = "stopped"
            try:
                ensure_connected(self.connection)
                # nothing stays reserved under this process once it is gone (e.g. a stop
                # request that arrived in the middle of a reservation)
                self._release_mine()
                self._beat(self.connection)
            except Exception as error:  # noqa: BLE001 - the controller will mark it lost
                log.warning("worker %s: could not record its exit: %s", self.worker_id, error)
        log.info("worker %s stopped: %d done, %d failed", self.worker_id, self.done, self.failed)
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def setup_logging() -> None:
    """Worker log lines on stderr, with milliseconds (one line per job, reconnect attempt, recovery)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _start_up(prefix: str | None, options: WorkerOptions, first_wait: float = 0.5, longest_wait: float = 30.0):
    """Activate the schemas and choose the tables; return the tables.

    A worker that starts while the server restarts (a scheduler launched it a moment before)
    waits for it like a running worker, with the same capped backoff and ``give_up_after``.
    Each new try binds every schema to a fresh connection, so that no schema is left half
    activated on the connection that broke.
    """
    from ..database import connect

    started = time.monotonic()
    wait = first_wait
    attempt = 0
    while True:
        try:
            if attempt:
                connect(reset=True)
            _prefix, modules = activate_with_modules(prefix, options.modules)
            tables = select_tables(options.tables, modules)
            ensure_jobs_tables(tables)
            return tables
        except Exception as error:  # noqa: BLE001 - only connection errors are waited out
            if not is_connection_error(error):
                raise
            attempt += 1
            waited = time.monotonic() - started
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            if options.give_up_after is not None and waited + wait > options.give_up_after:
                raise DatabaseGone(
                    f"database unreachable for {waited:.0f} s while starting ({attempt} attempts; "
                    f"gave up after {options.give_up_after} s): {reason}"
                ) from error
            log.warning(
                "database unreachable while starting (attempt %d, %.0f s): %s; next try in %.1f s",
                attempt,
                waited,
                reason,
                wait,
            )
            time.sleep(wait)
            wait = min(longest_wait, wait * 2)


def run_worker(prefix: str | None, options: WorkerOptions) -> int:
    """Run one worker in this process until it stops; return its exit status.

    0: stopped as asked or done; 3: the database stayed unreachable for ``give_up_after``.
    """
    setup_logging()
    gpu = pin_gpu(options.gpu)  # before anything can initialize CUDA
    limit_gpu_memory(options.gpu_fraction)
    try:
        tables = _start_up(prefix, options)
    except DatabaseGone as error:
        log.error("worker %s:%d: %s; exiting", platform.node(), os.getpid(), error)
        return 3
    worker = WorkerProcess(Worker.connection, tables, options, gpu=gpu)
    try:
        code = worker.run()
    except DatabaseGone as error:
        log.error("worker %s: %s; exiting", worker.worker_id, error)
        code = 3
    if worker.signalled:
        # everything is recorded; tearing down the interpreter (torch and friends) can take
        # seconds on a busy machine, which the grace period does not have
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
