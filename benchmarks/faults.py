"""Faults under running workers: nothing lost, nothing duplicated, nothing stuck, workers alive after.

Each fault hits ``pipeline worker`` subprocesses computing ``tests/work_tables.py``'s ``Square``
(``--workers`` workers x ``--keys`` keys of ``--job-seconds`` each) on PRIVATE servers: a
``mariadbd`` of its own and an embedded PostgreSQL in a pipeline home of its own (see
``tests/fault_harness.py``), so no shared server is touched. Faults:

- ``server restart 5 s``: the server stopped (SIGTERM / fast shutdown), started 5 s later;
- ``postmaster SIGKILL``: PostgreSQL's postmaster killed, started again 5 s later;
- ``terminate idle backend``: the connections of idle workers ended by the server
  (PostgreSQL: each worker's main connection, ``pg_terminate_backend``; MariaDB: every worker
  connection, heartbeats too, ``KILL``), then more keys arrive;
- ``worker SIGKILL mid-job``: one worker killed while it computes (its job comes back after the
  heartbeat timeout);
- ``worker SIGTERM``: one worker asked to stop while it computes;
- ``lost reserve reply``: a pending job set to reserved under a live worker that does not
  compute it, as DataJoint leaves it when the reply to its reserve UPDATE is lost.

Per fault and backend: keys expected, rows found, duplicates (keys computed twice, not counting
a make() that finished while the server was down and could not commit), partial rows (rows no
finished make() accounts for), jobs left reserved or in error, seconds to recovery (from the end
of the fault until every job held at the fault is computed, and one more) and the workers alive
after (of those not killed or stopped on purpose).

    python benchmarks/faults.py --json faults.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="No datajoint.json found")
warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")

from benchmarks import input_faults  # noqa: E402
from tests import fault_harness as fh  # noqa: E402

# one "connected" line per run would break up the table
logging.getLogger("datajoint").setLevel(logging.WARNING)

OUTAGE_S = 5.0


# ---------------------------------------------------------------------------------------------
# the faults: each runs on a started FaultRun; returns (end of the fault, keys held, workers ended)
# ---------------------------------------------------------------------------------------------


def server_restart(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    run.wait_until_started()
    run.wait_until_done(args.keys // 6)
    held = fh.reserved_keys(run)
    return fh.restart_server(run, OUTAGE_S), held, 0


def postmaster_sigkill(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    run.wait_until_started()
    run.wait_until_done(args.keys // 6)
    held = fh.reserved_keys(run)
    return fh.restart_server(run, OUTAGE_S, crash=True), held, 0


def _busy_job(run: fh.FaultRun) -> tuple[int, int]:
    """(item_id, pid) of a job a worker of this run computes now."""
    pids = {p.pid for p in run.procs if p.poll() is None}

    def found():
        rows = run.wt.Square.jobs.reserved.to_dicts()
        return [(int(r["item_id"]), int(r["pid"])) for r in rows if int(r["pid"]) in pids]

    fh._wait_for(lambda: found(), 60, "a busy worker")
    return found()[0]


def _signal_worker(run: fh.FaultRun, args, sig: int) -> tuple[float, list[int], int]:
    run.wait_until_done(args.keys // 6)
    item, pid = _busy_job(run)
    proc = next(p for p in run.procs if p.pid == pid)
    proc.send_signal(sig)
    return time.time(), [item], 1


def worker_sigkill(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    return _signal_worker(run, args, signal.SIGKILL)


def worker_sigterm(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    return _signal_worker(run, args, signal.SIGTERM)


def terminate_idle_backends(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    """Once the first keys are done and the workers idle, end their main connections, then add keys."""
    run.wait_for_rows()
    time.sleep(1.0)  # a few idle passes: every worker's last query is its own
    if run.server.backend == "postgresql":
        for pid in fh.worker_backends(run.connection):
            run.connection.query("SELECT pg_terminate_backend(%s)", args=(pid,))
    else:
        for connection_id in _mysql_worker_connections(run):
            run.connection.query(f"KILL {connection_id:d}")
    ended = time.time()
    run.add_items(range(args.keys, 2 * args.keys), args.job_seconds)
    return ended, [], 0


def _mysql_worker_connections(run: fh.FaultRun) -> list[int]:
    """The connections of the run's workers to the private server, but the heartbeats' (busy updating)."""
    own = run.connection.query("SELECT CONNECTION_ID()").fetchone()[0]
    rows = run.connection.query(
        "SELECT id, info FROM information_schema.processlist WHERE user = 'root' AND command <> 'Daemon'"
    ).fetchall()
    return [int(i) for i, info in rows if int(i) != own and "last_seen" not in (info or "")]


def lost_reserve_reply(run: fh.FaultRun, args) -> tuple[float, list[int], int]:
    """The last pending key reserved under a live worker, which goes on with other keys."""
    run.wait_until_done(args.keys // 6)
    jobs = run.wt.Square.jobs
    item = int(max(jobs.pending.to_arrays("item_id")))
    worker = run.procs[0]
    cursor = run.connection.query(
        f"UPDATE {jobs.full_table_name} SET status='reserved', host=%s, pid=%s, reserved_time=CURRENT_TIMESTAMP(3) "
        "WHERE item_id=%s AND status='pending'",
        args=(platform.node(), worker.pid, item),
    )
    assert cursor.rowcount == 1, f"item {item} was taken meanwhile"
    return time.time(), [item], 0


FAULTS = {
    "server restart 5 s": (server_restart, ("mysql", "postgresql")),
    "postmaster SIGKILL": (postmaster_sigkill, ("postgresql",)),
    "terminate idle backend": (terminate_idle_backends, ("postgresql", "mysql")),
    "worker SIGKILL mid-job": (worker_sigkill, ("mysql", "postgresql")),
    "worker SIGTERM": (worker_sigterm, ("mysql", "postgresql")),
    "lost reserve reply": (lost_reserve_reply, ("mysql", "postgresql")),
}


def run_fault(name: str, server, folder: Path, args) -> dict:
    fault = FAULTS[name][0]
    run = fh.FaultRun(server, folder, n_items=args.keys, sleep=args.job_seconds)
    try:
        run.start_workers(args.workers, "--give-up-after", "300", "--grace", "3")
        ended, held, stopped = fault(run, args)
        run.wait_for_rows(timeout=300)
        outcome = run.outcome()
        outcome.recovery_s = run.recovery_after(ended, held)
    except Exception as error:  # noqa: BLE001 - reported as a failed row, the other faults still run
        print(f"{name} on {server.backend}: {error}\n{run.output(2000)}", file=sys.stderr)
        return dict(fault=name, backend=server.backend, failed=str(error).splitlines()[0][:300])
    finally:
        run.close()
    return dict(fault=name, backend=server.backend, **asdict(outcome), workers_expected=args.workers - stopped)


def _row(r: dict) -> str:
    if "failed" in r:
        return f"{r['fault']:24s} {r['backend']:10s} FAILED: {r['failed']}"
    recovery = f"{r['recovery_s']:8.1f}" if r["recovery_s"] is not None else f"{'-':>8s}"
    return (
        f"{r['fault']:24s} {r['backend']:10s} {r['keys_expected']:5d} {r['rows_found']:5d} {r['duplicates']:5d} "
        f"{r['redone']:6d} {r['partial_rows']:7d} {r['jobs_reserved']:8d} {r['jobs_error']:6d} {recovery} "
        f"{r['workers_alive']:>3d}/{r['workers_expected']:<3d}"
    )


def print_table(rows: list[dict]) -> None:
    print(
        f"{'fault':24s} {'backend':10s} {'keys':>5s} {'rows':>5s} {'dupl':>5s} {'redone':>6s} {'partial':>7s} "
        f"{'reserved':>8s} {'error':>6s} {'recovery':>8s} alive"
    )
    for r in rows:
        print(_row(r))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["mysql", "postgresql"], choices=["mysql", "postgresql"])
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS), metavar="FAULT")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--job-seconds", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--no-inputs", action="store_true", help="skip the input faults (benchmarks/input_faults.py)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    rows, input_rows = [], []
    started = time.monotonic()
    for backend in args.backends:
        missing = (fh.PrivateMariaDB if backend == "mysql" else fh.PrivatePostgres).missing()
        if missing:
            print(f"{backend}: skipped ({missing})", file=sys.stderr)
            continue
        server = fh.make_server(backend, folder)
        server.install()
        server.start()
        try:
            for name in args.faults:
                if backend in FAULTS[name][1]:
                    rows.append(run_fault(name, server, folder / f"{backend}-{len(rows)}", args))
                    print(_row(rows[-1]), file=sys.stderr, flush=True)
            if not args.no_inputs:
                input_rows += input_faults.run(server, folder / f"inputs-{backend}", backend)
        finally:
            server.close()
    print(
        f"\n{args.workers} workers x {args.keys} keys of {args.job_seconds} s per fault; "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    print_table(rows)
    if input_rows:
        print("\nInput faults: one bad scan beside a good one, populated by the worker loop")
        input_faults.print_table(input_rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                dict(workers=args.workers, keys=args.keys, job_seconds=args.job_seconds, rows=rows, inputs=input_rows),
                indent=1,
            )
        )
    if any(_damaged(r) for r in rows) or any(input_faults.damaged(r) for r in input_rows):
        print(f"worker logs kept in {folder}", file=sys.stderr)
        return 1
    shutil.rmtree(folder, ignore_errors=True)
    return 0


def _damaged(r: dict) -> bool:
    """A row where something was lost, duplicated, stuck or killed."""
    if "failed" in r:
        return True
    return bool(
        r["duplicates"]
        or r["partial_rows"]
        or r["jobs_reserved"]
        or r["jobs_error"]
        or r["rows_found"] != r["keys_expected"]
        or r["workers_alive"] != r["workers_expected"]
    )


if __name__ == "__main__":
    sys.exit(main())
