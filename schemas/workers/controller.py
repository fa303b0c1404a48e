"""The controller: queues, and recovery of the jobs of dead workers.

DataJoint never puts back a job whose worker was SIGKILLed; a controller pass (``pipeline
controller``, and every worker now and then) does.
"""

from __future__ import annotations

import logging
import platform
from typing import Sequence

import datajoint as dj

from .registry import LIVE_STATUSES, WORKER_MEMORY_S, Worker, key_json
from .selection import _retry_race, ensure_jobs_tables

log = logging.getLogger("pipeline.worker")

# a heartbeat this long after a reservation tells whether the worker computes that job
STALE_MARGIN_S = 5.0


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
    The priority is kept and the job keeps its place in the queue: DataJoint hands out pending
    jobs by (priority, scheduled_time), and the jobs of one refresh share a scheduled time, so
    ties fall to the row order, which PostgreSQL changes on every UPDATE (a put-back job went to
    the end of the queue). Moving its scheduled time 1 ms earlier puts it first among its equals,
    where it was when it was taken.
    """
    expr = jobs.reserved
    if restriction is not None:
        expr = expr & restriction
    condition = _sql_condition(expr)
    millisecond = _interval(jobs.connection, 1e-3)
    cursor = jobs.connection.query(
        f"UPDATE {jobs.full_table_name} SET status='pending', reserved_time=NULL, host='', pid=0, "
        f"connection_id=0, scheduled_time=scheduled_time - {millisecond} WHERE {condition}"
    )
    return cursor.rowcount


def server_uptime_s(connection: dj.Connection) -> float:
    """Seconds since the database server started (a restart resets it)."""
    if connection.adapter.backend == "postgresql":
        sql = "SELECT EXTRACT(EPOCH FROM (clock_timestamp() - pg_postmaster_start_time()))"
        return float(connection.query(sql).fetchone()[0])
    return float(connection.query("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])


def mark_lost_workers(connection: dj.Connection, heartbeat_timeout: float) -> int:
    """Mark live-looking workers whose heartbeat is older than ``heartbeat_timeout`` as lost.

    No heartbeat can arrive while the server is down, so none is judged within
    ``heartbeat_timeout`` of the server's start: after a restart every worker's last beat is
    as old as the outage, and the workers need that long to reach the server again.
    """
    if server_uptime_s(connection) < heartbeat_timeout:
        return 0
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


def _stale_reservations(cls: type, jobs, worker_rows: Sequence[dict]) -> list[dict]:
    """Reserved jobs of ``cls`` held by a live worker that, by its later heartbeats, works on something else.

    This happens when the reply to the reserve UPDATE is lost: DataJoint reconnects and runs
    the UPDATE again, which then matches no row, so the worker believes it did not get the
    job while the job is reserved under its host and pid. A heartbeat taken more than
    ``STALE_MARGIN_S`` after the reservation tells what the worker is really computing.
    """
    by_holder = {(r["host"], int(r["pid"])): r for r in worker_rows if r["status"] in LIVE_STATUSES}
    stale = []
    for job in (jobs.reserved).to_dicts():
        worker = by_holder.get((job["host"], int(job["pid"])))
        if worker is None or job["reserved_time"] is None:
            continue
        beat_after = (worker["last_seen"] - job["reserved_time"]).total_seconds()
        key = {k: job[k] for k in jobs.primary_key}
        computing_it = worker["current_table"] == cls.__name__ and worker["current_key"] == key_json(key)
        if beat_after > STALE_MARGIN_S and not computing_it:
            stale.append({**key, "host": job["host"], "pid": job["pid"]})
    return stale


def recover_orphans(tables: Sequence[type], heartbeat_timeout: float) -> dict[str, int]:
    """Put back to pending the jobs no live worker is computing; return counts per table.

    A reserved job is put back when its (host, pid) belongs to no live worker and either a
    worker row with that host and pid has stopped heartbeating (any machine) and the job was
    reserved more than ``heartbeat_timeout`` ago (a reservation is a sign of life as good as a
    heartbeat: a worker back from an outage may reserve before its heartbeat thread reconnects),
    or the host is this machine and no process has that pid (a ``populate()`` killed in a
    notebook); or when its worker is alive but its heartbeats say it is computing another job
    (a lost reply).
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
    reserved_long_ago = f"reserved_time < {_now(connection)} - {_interval(connection, heartbeat_timeout)}"
    counts = {}
    for cls in tables:
        jobs = cls().jobs
        holders = (
            {(h, int(p)) for h, p in zip(*jobs.reserved.to_arrays("host", "pid"))} if len(jobs.reserved) else set()
        )
        gone_here = {(h, p) for (h, p) in holders - live if h == here and not _pid_alive(p)}
        orphans = [(h, p) for (h, p) in holders - live if (h, p) in dead or (h, p) in gone_here]
        n = sum(
            release_reserved(
                jobs,
                {"host": h, "pid": p}
                if (h, p) in gone_here  # no such process: put back at once
                else dj.AndList([{"host": h, "pid": p}, reserved_long_ago]),
            )
            for h, p in orphans
        )
        stale = _stale_reservations(cls, jobs, rows) if holders - set(orphans) else []
        m = sum(release_reserved(jobs, job) for job in stale)
        if n:
            log.warning("%s: %d job(s) of dead workers put back to pending", cls.__name__, n)
        if m:
            log.warning(
                "%s: %d job(s) reserved but not computed by their live worker put back to pending", cls.__name__, m
            )
        if n + m:
            counts[cls.__name__] = n + m
    return counts


def refresh_queue(cls: type, restrictions: Sequence = ()) -> int:
    """Add the keys that are ready to ``cls``'s jobs table; return how many were added."""
    priority = getattr(cls, "job_priority", None)
    return _retry_race(lambda: cls().jobs.refresh(*restrictions, delay=-1, priority=priority)["added"])


def control(scopes: dict[type, list] | Sequence[type], heartbeat_timeout: float) -> dict:
    """One controller pass: jobs tables, queues, recovery of jobs no live worker computes.

    ``scopes`` maps each table to the restrictions of its queue (see ``table_scopes``); a
    plain list of tables refreshes their whole queues.
    """
    scopes = scopes if isinstance(scopes, dict) else {cls: [] for cls in scopes}
    ensure_jobs_tables(list(scopes))
    added = {cls.__name__: refresh_queue(cls, restrictions) for cls, restrictions in scopes.items()}
    recovered = recover_orphans(list(scopes), heartbeat_timeout)
    return {"added": {k: v for k, v in added.items() if v}, "recovered": recovered}
