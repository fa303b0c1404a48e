"""Real worker processes (`pipeline worker` subprocesses) on a real server, on every backend.

The work is `tests/work_tables.py`: `Square` computes one row per `Item`; an item says how long
make() sleeps and whether it raises. Every make() logs `<item_id> start|done` per process, so a
test can count how often a key was computed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas import workers  # noqa: E402
from tests import work_tables as wt  # noqa: E402

pytestmark = pytest.mark.slow

# short timings so that recovery happens within seconds; only the test's table, because the
# session's prefix also holds the stages' tables with keys that other test modules left pending
FAST = [
    "--tables",
    "Square",
    "--poll",
    "0.2",
    "--heartbeat",
    "0.3",
    "--heartbeat-timeout",
    "2",
    "--controller-interval",
    "0.5",
    "--refresh-interval",
    "0.5",
]


class Work:
    """Items to compute, worker subprocesses, and what they logged."""

    def __init__(self, db, env: dict, folder: Path):
        self.db = db
        self.env = env
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def items(self, n: int, sleep: float = 0.0, fail: tuple = (), start: int = 0) -> None:
        wt.Item.insert(
            [dict(item_id=i, sleep=float(sleep), spin=0, fail=int(i in fail)) for i in range(start, start + n)]
        )

    def pipeline(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "schemas.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker(self, *args: str) -> subprocess.Popen:
        out = open(self.folder / f"worker{len(self.procs)}.out", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "schemas.cli", "worker", *FAST, *args],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float = 90) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"worker {proc.pid} still running after {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.folder.glob("worker*.out")))

    def events(self) -> dict[int, collections.Counter]:
        """item_id -> Counter of 'start'/'done' over every process."""
        out: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for path in (self.folder / "logs").glob("*.log"):
            for line in path.read_text().splitlines():
                item, event, _time = line.split()
                out[int(item)][event] += 1
        return out

    def busy_worker(self, timeout: float = 30) -> dict:
        """Wait until a worker reports a current job; return its Worker row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = (workers.Worker & "status='busy'").to_dicts()
            if rows and rows[0]["current_key"]:
                return rows[0]
            time.sleep(0.1)
        raise AssertionError(f"no worker became busy within {timeout} s:\n{self.output()}")


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
    env = {
        **os.environ,
        **db.env,
        "WORK_LOG_DIR": str(tmp_path / "logs"),
        "PYTHONPATH": str(ROOT),
        "PIPELINE_MODULES": "tests.work_tables",
    }
    w = Work(db, env, tmp_path)
    yield w
    for proc in w.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _clear()


def test_four_workers_compute_200_keys_exactly_once(work):
    work.items(200, sleep=0.01)
    procs = [work.worker("--exit-when-idle", "--tables", "Square") for _ in range(4)]
    assert [work.wait(p) for p in procs] == [0, 0, 0, 0], work.output()
    rows = wt.Square().to_dicts()
    assert sorted(r["item_id"] for r in rows) == list(range(200))
    assert all(r["value"] == r["item_id"] ** 2 for r in rows)
    events = work.events()
    assert sorted(events) == list(range(200))
    assert {k: c["done"] for k, c in events.items() if c != collections.Counter(start=1, done=1)} == {}
    assert len({r["worker_pid"] for r in rows}) >= 2  # the work was shared
    assert len(wt.Square.jobs) == 0
    assert sorted(workers.Worker().to_arrays("status")) == ["stopped"] * 4


def test_sigkilled_workers_job_is_completed_by_another_after_heartbeat_timeout(work):
    work.items(1, sleep=1.5)
    first = work.worker("--tables", "Square")
    busy = work.busy_worker()
    assert busy["pid"] == first.pid and json.loads(busy["current_key"]) == {"item_id": 0}
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(wt.Square.jobs.reserved) == 1  # DataJoint alone would leave it reserved forever
    second = work.worker("--exit-when-idle", "--tables", "Square")
    assert work.wait(second) == 0, work.output()
    rows = wt.Square().to_dicts()
    assert [(r["item_id"], r["worker_pid"]) for r in rows] == [(0, second.pid)]
    assert work.events()[0] == collections.Counter(start=2, done=1)
    assert len(wt.Square.jobs) == 0
    assert (workers.Worker & {"pid": first.pid}).fetch1("status") == "lost"


def test_failing_job_records_message_and_traceback_and_others_complete(work):
    work.items(20, sleep=0.0, fail=(7,))
    procs = [work.worker("--exit-when-idle") for _ in range(2)]
    assert [work.wait(p) for p in procs] == [0, 0], work.output()
    assert sorted(wt.Square().to_arrays("item_id")) == [i for i in range(20) if i != 7]
    error = wt.Square.jobs.errors.fetch1()
    assert error["item_id"] == 7
    assert error["error_message"] == "ValueError: item 7: fail flag is set (expected fail=0)"
    assert "work_tables.py" in error["error_stack"] and "raise ValueError" in error["error_stack"]
    listing = work.pipeline("jobs", "--traceback")
    assert listing.returncode == 0, listing.stderr
    assert 'Square {"item_id": 7}' in listing.stdout
    assert "ValueError: item 7: fail flag is set (expected fail=0)" in listing.stdout
    assert "raise ValueError" in listing.stdout


def test_jobs_retry_puts_errored_jobs_back_and_they_complete(work):
    work.items(3, fail=(1, 2))
    wt.Square.populate(reserve_jobs=True, suppress_errors=True)
    assert sorted(wt.Square.jobs.errors.to_arrays("item_id")) == [1, 2]
    wt.Item.update1(dict(item_id=1, fail=0))
    retry = work.pipeline("jobs", "retry", "Square", "item_id=1")
    assert retry.returncode == 0, retry.stderr
    assert "Square: 1 errored job(s) put back to pending" in retry.stdout
    assert wt.Square.jobs.pending.to_arrays("item_id").tolist() == [1]
    assert wt.Square.jobs.errors.to_arrays("item_id").tolist() == [2]
    assert work.wait(work.worker("--exit-when-idle")) == 0, work.output()
    assert sorted(wt.Square().to_arrays("item_id")) == [0, 1]


def test_dropped_connection_during_job_reconnects_and_completes(work):
    work.items(1, sleep=1.5)
    proc = work.worker("--exit-when-idle")
    work.busy_worker()
    connection_id = int(wt.Square.jobs.reserved.fetch1("connection_id"))
    if work.db.backend == "postgresql":
        work.db.connection.query("SELECT pg_terminate_backend(%s)", args=(connection_id,))
    else:
        work.db.connection.query(f"KILL {connection_id:d}")
    assert work.wait(proc) == 0, work.output()
    assert [(r["item_id"], r["worker_pid"]) for r in wt.Square().to_dicts()] == [(0, proc.pid)]
    assert len(wt.Square.jobs) == 0  # no error left behind
    assert "reconnect" in work.output()


def test_a_key_inserted_by_another_process_during_make_is_done_not_an_error(work):
    # two processes computed one key (e.g. a worker presumed dead that was only cut off): the
    # second insert fails; its key is done, not an error in the jobs table, and the worker goes on
    work.items(2, sleep=2.0)
    proc = work.worker("--exit-when-idle", "--batch", "1")
    busy = work.busy_worker()
    first = json.loads(busy["current_key"])["item_id"]
    wt.Square.insert1(dict(item_id=first, value=first**2, checksum=0, worker_pid=0), allow_direct_insert=True)
    assert work.wait(proc) == 0, work.output()
    assert sorted((r["item_id"], r["worker_pid"]) for r in wt.Square().to_dicts()) == sorted(
        [(first, 0), (1 - first, proc.pid)]
    )
    assert len(wt.Square.jobs) == 0, wt.Square.jobs.to_dicts()  # no error left behind
    assert f'Square {{"item_id": {first}}}: computed meanwhile by another process' in work.output()


def test_sigterm_exits_within_grace_and_puts_the_job_back(work):
    work.items(1, sleep=60)
    proc = work.worker("--grace", "4")
    work.busy_worker()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = work.wait(proc, timeout=10)
    elapsed = time.monotonic() - sent
    assert code == 0, work.output()
    assert elapsed < 4.0, f"exited {elapsed:.2f} s after SIGTERM (grace 4 s)"
    job = wt.Square.jobs.fetch1()
    assert (job["item_id"], job["status"], job["error_message"]) == (0, "pending", "")
    assert (workers.Worker & {"pid": proc.pid}).fetch1("status") == "stopped"
    # not lost: the next worker computes it
    wt.Item.update1(dict(item_id=0, sleep=0.0))
    assert work.wait(work.worker("--exit-when-idle")) == 0
    assert wt.Square().to_arrays("item_id").tolist() == [0]


def test_sigterm_lets_a_short_job_finish_within_grace(work):
    work.items(2, sleep=1.0)
    proc = work.worker("--grace", "6", "--batch", "1")
    busy = work.busy_worker()
    proc.send_signal(signal.SIGTERM)
    assert work.wait(proc, timeout=10) == 0, work.output()
    # the current job finished, the other one was not started
    assert wt.Square().to_dicts() == [
        dict(
            item_id=json.loads(busy["current_key"])["item_id"],
            value=json.loads(busy["current_key"])["item_id"] ** 2,
            checksum=0,
            worker_pid=proc.pid,
        )
    ]
    assert wt.Square.jobs.to_arrays("status").tolist() == ["pending"]


def test_status_shows_tables_live_workers_and_current_jobs(work):
    work.items(3, sleep=30, fail=(2,))
    wt.Square.populate({"item_id": 2}, reserve_jobs=True, suppress_errors=True)
    proc = work.worker("--tables", "Square", "--batch", "1")
    work.busy_worker()
    status = work.pipeline("status", "--tables", "Square")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    row = next((line for line in lines if line.startswith("work.Square")), status.stdout)
    assert row.split()[:5] == ["work.Square", "0", "1", "1", "1"]  # rows, pending, reserved, errors
    assert "WORKERS: 1 live" in status.stdout
    worker_line = next((line for line in lines if f" {proc.pid} " in line), status.stdout)
    assert "busy" in worker_line and worker_line.endswith("Square item_id=0")
    assert "ValueError: item 2: fail flag is set" in status.stdout
    proc.kill()


def test_launch_starts_local_workers_that_share_the_work(work):
    work.items(30, sleep=0.02)
    launched = work.pipeline("launch", "-n", "2", "--exit-when-idle", *FAST, timeout=120)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert sorted(wt.Square().to_arrays("item_id")) == list(range(30))
    assert sorted((workers.Worker()).to_arrays("gpu")) == ["", ""]
    assert len(workers.Worker()) == 2


def test_launch_through_submitit_runs_workers_as_scheduled_jobs(work):
    pytest.importorskip("submitit")
    work.items(10)
    launched = work.pipeline(
        "launch",
        "--cluster",
        "local",
        "-n",
        "2",
        "--wait",
        "--exit-when-idle",
        "--log-dir",
        str(work.folder / "submitit"),
        *FAST,
        timeout=180,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert launched.stdout.count("submitted ") == 2
    assert sorted(wt.Square().to_arrays("item_id")) == list(range(10))
    assert sorted(workers.Worker().to_arrays("status")) == ["stopped", "stopped"]


def test_controller_puts_back_the_job_of_a_worker_whose_heartbeat_stopped(work):
    work.items(1, sleep=30)
    proc = work.worker("--tables", "Square")
    work.busy_worker()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)  # older than the heartbeat timeout below
    controller = work.pipeline("controller", "--once", "--heartbeat-timeout", "2", "--tables", "Square")
    assert controller.returncode == 0, controller.stderr
    assert "1 recovered from dead workers" in controller.stderr
    assert wt.Square.jobs.to_arrays("status").tolist() == ["pending"]
    assert (workers.Worker & {"pid": proc.pid}).fetch1("status") == "lost"
