"""Workers that outlive the database: server restarts, terminated backends, lost replies (issue 11, items 1-4).

Restarts happen on PRIVATE servers (``tests/fault_harness.py``): a ``mariadbd`` on its own data
directory and port, and an embedded PostgreSQL in a pipeline home of its own, so no shared
server is ever stopped. The other faults use the session's ``db`` fixture. The work is
``tests/work_tables.py``'s ``Square``; every make() logs ``<item_id> start|done`` per process.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas import workers  # noqa: E402
from schemas.workers.controller import STALE_MARGIN_S, server_uptime_s  # noqa: E402
from tests import fault_harness as fh  # noqa: E402
from tests import work_tables as wt  # noqa: E402

pytestmark = pytest.mark.slow

WORKERS = 3
ITEMS = 30
SLEEP = 0.5  # seconds per make(): 30 keys x 0.5 s / 3 workers = 5 s of work, the fault lands in it


# ---------------------------------------------------------------------------------------------
# item 1: a server restart under running workers (private servers)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory):
    missing = fh.PrivateMariaDB.missing()
    if missing:
        pytest.skip(f"no private MariaDB server can run here: {missing}")
    server = fh.PrivateMariaDB(tmp_path_factory.mktemp("private") / "mariadb")
    server.install()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def private_postgres(tmp_path_factory):
    missing = fh.PrivatePostgres.missing()
    if missing:
        pytest.skip(f"no private embedded PostgreSQL can run here: {missing}")
    server = fh.PrivatePostgres(tmp_path_factory.mktemp("private") / "pghome")
    server.install()
    server.start()
    yield server
    server.close()


def _restart_under_workers(server, folder: Path, crash: bool = False) -> tuple[fh.Outcome, fh.FaultRun]:
    """Workers on ``ITEMS`` keys; the server goes down for 5 s after 3 keys; the run until every row is in."""
    run = fh.FaultRun(server, folder, n_items=ITEMS, sleep=SLEEP)
    try:
        run.start_workers(WORKERS, "--give-up-after", "120")
        run.wait_until_started()
        run.wait_until_done(3)
        held = fh.reserved_keys(run)
        back = fh.restart_server(run, pause=5.0, crash=crash)
        run._ensure_connected()
        # the server's uptime restarted with it: no heartbeat is judged before the workers can send one
        assert server_uptime_s(run.connection) < time.time() - back + 5.0
        run.wait_for_rows()
        outcome = run.outcome()
        outcome.recovery_s = run.recovery_after(back, held)
        return outcome, run
    finally:
        run.close()


def _assert_nothing_lost(outcome: fh.Outcome, run: fh.FaultRun) -> None:
    output = run.output()
    assert outcome.workers_alive == WORKERS, output  # every worker outlived the outage
    assert outcome.exit_codes == [0] * WORKERS, output  # and stopped cleanly when asked
    assert (outcome.rows_found, outcome.duplicates, outcome.partial_rows) == (ITEMS, 0, 0), output
    assert (outcome.jobs_reserved, outcome.jobs_error) == (0, 0), output
    # each worker waited for the server (one line per attempt) rather than dying
    assert output.count("database reachable again") == WORKERS, output
    # the heartbeat wakes a worker waiting out its backoff: work resumes within seconds, not
    # after a wait as long as the outage (the jobs held at the fault are done by then too)
    assert outcome.recovery_s is not None and outcome.recovery_s < 8.0, (outcome, output)


def test_workers_survive_a_5s_mariadb_restart_and_compute_every_key_once(private_mariadb, tmp_path):
    outcome, run = _restart_under_workers(private_mariadb, tmp_path)
    _assert_nothing_lost(outcome, run)


def test_workers_survive_a_5s_embedded_postgres_restart_and_compute_every_key_once(private_postgres, tmp_path):
    outcome, run = _restart_under_workers(private_postgres, tmp_path)
    _assert_nothing_lost(outcome, run)


def test_workers_survive_a_sigkilled_postmaster_and_compute_every_key_once(private_postgres, tmp_path):
    outcome, run = _restart_under_workers(private_postgres, tmp_path, crash=True)
    _assert_nothing_lost(outcome, run)


def test_worker_started_while_the_server_is_down_waits_and_then_works(private_mariadb, tmp_path):
    run = fh.FaultRun(private_mariadb, tmp_path, n_items=3, sleep=0.0)
    try:
        started = time.time()
        private_mariadb.stop()
        run.start_workers(1, "--give-up-after", "120")
        fh._wait_for(lambda: "database unreachable while starting" in run.output(), 60, "the worker waiting")
        private_mariadb.start()
        run.outages.append((started, time.time()))
        run.wait_for_rows()
        outcome = run.outcome()
    finally:
        run.close()
    assert (outcome.workers_alive, outcome.exit_codes) == (1, [0]), run.output()
    assert (outcome.rows_found, outcome.duplicates, outcome.jobs_reserved, outcome.jobs_error) == (3, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# items 2-4: the session's own servers (the embedded PostgreSQL is private to the session)
# ---------------------------------------------------------------------------------------------


class Work:
    """Items, one or more worker subprocesses on the ``db`` fixture's server, and their logs."""

    def __init__(self, db, folder: Path):
        self.db = db
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            **db.env,
            "WORK_LOG_DIR": str(folder / "logs"),
            "PYTHONPATH": str(ROOT),
            "PIPELINE_MODULES": "tests.work_tables",
        }

    def items(self, ids, sleep: float = 0.0) -> None:
        wt.Item.insert([dict(item_id=i, sleep=float(sleep), spin=0, fail=0) for i in ids])

    def worker(self, *args: str) -> subprocess.Popen:
        out = open(self.folder / f"worker{len(self.procs)}.out", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "schemas.cli", "worker", *fh.FAST, "--tables", "Square", *args],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.folder.glob("worker*.out")))

    def done(self) -> dict[int, collections.Counter]:
        """item_id -> Counter of 'start'/'done' over every process."""
        out: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for path in (self.folder / "logs").glob("*.log"):
            for line in path.read_text().splitlines():
                item, event, _t = line.split()
                out[int(item)][event] += 1
        return out

    def wait(self, condition, timeout: float, what: str) -> float:
        try:
            return fh._wait_for(condition, timeout, what)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{self.output()}") from None

    def worker_row(self, proc: subprocess.Popen, status: str, timeout: float = 60) -> dict:
        """Wait until ``proc``'s Worker row has ``status``; return it."""
        rows = workers.Worker & {"pid": proc.pid, "status": status}
        self.wait(lambda: len(rows) == 1, timeout, f"worker {proc.pid} {status}")
        return rows.fetch1()

    def rows(self) -> list[tuple[int, int]]:
        return sorted((r["item_id"], r["worker_pid"]) for r in wt.Square().to_dicts())


def _clear() -> None:
    wt.Square.jobs.delete()
    wt.Square().delete_quick()
    wt.Item().delete_quick()
    workers.Worker().delete_quick()


@pytest.fixture
def work(db, tmp_path):
    workers.activate_modules(["tests.work_tables"], db.prefix, db.connection)
    workers.ensure_jobs_tables([wt.Square])
    _clear()
    (tmp_path / "logs").mkdir()
    w = Work(db, tmp_path)
    yield w
    for proc in w.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _clear()


def test_idle_worker_survives_pg_terminate_backend_and_goes_on_working(work):
    if work.db.backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    work.items(range(3))
    proc = work.worker()
    work.wait(lambda: len(wt.Square()) == 3, 60, "3 rows")
    work.worker_row(proc, "idle")
    backends = fh.worker_backends(work.db.connection)
    assert len(backends) == 1, backends  # the worker's main connection (the heartbeat's is left out)
    [terminated] = backends
    assert work.db.connection.query("SELECT pg_terminate_backend(%s)", args=(terminated,)).fetchone()[0] is True
    # its next controller passes (every 0.5 s) and queue refreshes run on the dropped connection
    time.sleep(2.0)
    assert proc.poll() is None, work.output()
    work.items(range(3, 6))
    work.wait(lambda: len(wt.Square()) == 6, 60, "6 rows")
    assert proc.poll() is None, work.output()
    assert work.rows() == [(i, proc.pid) for i in range(6)]
    assert {k: dict(c) for k, c in work.done().items()} == {i: {"start": 1, "done": 1} for i in range(6)}
    new = fh.worker_backends(work.db.connection)
    assert len(new) == 1 and terminated not in new, new  # it reconnected
    assert len(wt.Square.jobs) == 0


def _reserve_as_lost_reply(key: dict, worker: dict) -> None:
    """Insert ``key``'s Item and its job reserved under ``worker``: a reservation whose reply was lost.

    DataJoint leaves such a job reserved under the worker's host and pid. One transaction, so
    no worker ever sees the job pending.
    """
    connection = wt.Item.connection
    connection.start_transaction()
    wt.Item.insert1(dict(key, sleep=0.0, spin=0, fail=0))
    now = connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0]
    wt.Square.jobs.insert1(
        dict(
            key,
            status="reserved",
            priority=5,
            scheduled_time=now,
            reserved_time=now,
            host=worker["host"],
            pid=worker["pid"],
            connection_id=0,
        ),
        ignore_extra_fields=True,
    )
    connection.commit_transaction()


def test_lost_reserve_reply_of_an_idle_worker_is_put_back_and_computed_once(work):
    proc = work.worker()
    idle = work.worker_row(proc, "idle")
    assert idle["host"] == platform.node()
    _reserve_as_lost_reply({"item_id": 0}, idle)
    assert wt.Square.jobs.reserved.to_arrays("item_id", "pid")[1].tolist() == [proc.pid]
    reserved_at = time.monotonic()
    # the worker's own controller pass, once its heartbeats outdate the reservation
    work.wait(lambda: len(wt.Square()) == 1, 30, "the reserved key computed")
    waited = time.monotonic() - reserved_at
    assert STALE_MARGIN_S <= waited < STALE_MARGIN_S + 10, waited
    assert work.rows() == [(0, proc.pid)]
    assert dict(work.done()[0]) == {"start": 1, "done": 1}
    assert len(wt.Square.jobs) == 0
    assert proc.poll() is None


def test_lost_reserve_reply_of_a_busy_worker_is_put_back_by_a_controller_pass(work):
    work.items([1], sleep=STALE_MARGIN_S + 4)
    proc = work.worker("--batch", "1")
    busy = work.worker_row(proc, "busy")
    assert json.loads(busy["current_key"]) == {"item_id": 1}
    _reserve_as_lost_reply({"item_id": 0}, busy)
    time.sleep(STALE_MARGIN_S + 1)  # heartbeats past the margin: the worker is still on item 1
    assert (workers.Worker & {"pid": proc.pid}).fetch1("current_key") == '{"item_id": 1}'
    # a controller pass of another process (the busy worker runs none until its job ends)
    assert workers.recover_orphans([wt.Square], heartbeat_timeout=3) == {"Square": 1}
    assert wt.Square.jobs.pending.to_arrays("item_id").tolist() == [0]
    assert wt.Square.jobs.reserved.to_arrays("item_id").tolist() == [1]
    work.wait(lambda: len(wt.Square()) == 2, 60, "both keys computed")
    assert work.rows() == [(0, proc.pid), (1, proc.pid)]
    assert {k: dict(c) for k, c in work.done().items()} == {0: {"start": 1, "done": 1}, 1: {"start": 1, "done": 1}}
    assert len(wt.Square.jobs) == 0


def _remote_worker(seconds_since_beat: float) -> dict:
    """A Worker row of a process on another machine whose last heartbeat is ``seconds_since_beat`` old."""
    connection = workers.Worker.connection
    now = connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0]
    beat = now - datetime.timedelta(seconds=seconds_since_beat)
    row = dict(worker_id="node-b:4242:0", host="node-b", pid=4242, started=beat, last_seen=beat, status="busy")
    workers.Worker.insert1(row)
    return row


def test_a_job_reserved_after_an_outage_waits_for_its_worker_to_beat_again(work):
    # after an outage a worker may reserve a job before its heartbeat thread reconnects: the
    # controller pass of another worker saw an old beat and put the job back (two workers then
    # computed the same key); a reservation younger than the heartbeat timeout is a sign of life
    worker = _remote_worker(seconds_since_beat=10.0)
    _reserve_as_lost_reply({"item_id": 7}, worker)
    assert workers.recover_orphans([wt.Square], heartbeat_timeout=3) == {}
    assert (workers.Worker & {"pid": 4242}).fetch1("status") == "lost"
    assert wt.Square.jobs.reserved.to_arrays("item_id").tolist() == [7]
    # no beat and no new reservation for longer than the timeout: the job is put back
    connection = workers.Worker.connection
    connection.query(
        f"UPDATE {wt.Square.jobs.full_table_name} SET reserved_time = reserved_time - "
        f"{connection.adapter.interval_expr(4, 'second')}"
    )
    assert workers.recover_orphans([wt.Square], heartbeat_timeout=3) == {"Square": 1}
    assert wt.Square.jobs.pending.to_arrays("item_id").tolist() == [7]


def test_no_worker_is_judged_lost_within_a_heartbeat_timeout_of_the_server_start(work):
    connection = workers.Worker.connection
    uptime = server_uptime_s(connection)
    assert uptime > 1.0
    # a beat older than the server: under the old rule lost at any timeout shorter than its age
    _remote_worker(seconds_since_beat=uptime + 7200)
    assert workers.mark_lost_workers(connection, heartbeat_timeout=uptime + 3600) == 0
    assert (workers.Worker & {"pid": 4242}).fetch1("status") == "busy"
    assert workers.mark_lost_workers(connection, heartbeat_timeout=1.0) == 1
    assert (workers.Worker & {"pid": 4242}).fetch1("status") == "lost"


def test_a_job_put_back_is_the_next_one_handed_out(work):
    work.items(range(6))
    workers.refresh_queue(wt.Square)
    jobs = wt.Square.jobs
    queue = jobs.pending.keys(order_by="priority ASC, scheduled_time ASC")
    taken = queue[2]
    assert jobs.reserve(queue[0]) is True  # another worker computes the first job meanwhile
    assert jobs.reserve(taken) is True
    # put back (e.g. its worker lost the database): on PostgreSQL the UPDATE moves the row to
    # the end of the table, where ties of (priority, scheduled_time) fell before the fix
    assert workers.release_reserved(jobs, taken) == 1
    order = jobs.pending.keys(order_by="priority ASC, scheduled_time ASC")
    assert order[0] == taken
    assert sorted(k["item_id"] for k in order) == [1, 2, 3, 4, 5]
    # what DataJoint's populate takes first
    result = wt.Square.populate(reserve_jobs=True, max_calls=1, refresh=False)
    assert result["success_count"] == 1
    assert wt.Square().to_arrays("item_id").tolist() == [taken["item_id"]]
