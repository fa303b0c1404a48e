"""What the workers are doing: rows and jobs per table, live workers, latest errors."""

from __future__ import annotations

import datetime
import json
from typing import Any, Sequence

from .controller import _interval, _now, refresh_queue
from .registry import Worker


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
    """Per table: rows, keys ready and to do, job counts, and the upstream tables it waits on.

    A table whose parents are not populated yet has no key ready, which ``progress()`` reports
    as nothing left to do; ``waiting_on`` names the upstream tables (of ``tables``) that still
    have work, so that such a table is not shown as complete.
    """
    import schemas

    prefix = schemas.active_prefix() or ""
    out = []
    unfinished: dict[str, str] = {}  # full name -> class name of tables with work left, in dependency order
    for cls in tables:
        table = cls()
        stage = table.database[len(prefix) :] if table.database.startswith(prefix) else table.database
        remaining, total = table.progress()
        jobs = table.jobs
        counts = jobs.progress() if jobs.is_declared else {"pending": 0, "reserved": 0, "error": 0}
        ancestors = set(table.ancestors())
        waiting = [name for full_name, name in unfinished.items() if full_name in ancestors]
        if remaining or counts["pending"] or counts["reserved"] or waiting:
            unfinished[table.full_table_name] = cls.__name__
        out.append(
            dict(
                table=f"{stage}.{cls.__name__}",
                rows=len(table),
                total=total,
                remaining=remaining,
                pending=counts["pending"],
                reserved=counts["reserved"],
                error=counts["error"],
                waiting_on=waiting,
            )
        )
    return out


def _progress(row: dict) -> str:
    done = row["total"] - row["remaining"]
    bar = _bar(done / row["total"] if row["total"] else (0.0 if row["waiting_on"] else 1.0))
    text = f"{bar} {done}/{row['total']}"
    if row["waiting_on"]:
        text += f" (waiting on {', '.join(row['waiting_on'])})"
    return text


_PARAMETER_NAMES: dict[tuple[str, str], str] = {}


def describe_key(key: dict) -> str:
    """A job's key as people read it: parameter-set hashes become ``builder#abc123``.

    Every parameter table is keyed by ``<name>_hash`` with a ``builder`` column
    (``schemas.params``); a key of a trained model is five of them, 160 hex characters that say
    nothing. The builder's short name and the first six hex digits say which set it is.
    """
    import schemas

    parts = []
    for name, value in key.items():
        if name.endswith("_hash") and isinstance(value, str):
            label = _PARAMETER_NAMES.get((name, value))
            if label is None:
                label = f"#{value[:6]}"
                for cls in schemas.tables():
                    if cls.primary_key == [name] and "builder" in cls.heading.names:
                        rows = (cls & {name: value}).to_dicts()
                        if rows:
                            label = f"{rows[0]['builder'].rsplit('.', 1)[-1]}#{value[:6]}"
                        break
                _PARAMETER_NAMES[(name, value)] = label
            parts.append(f"{name[: -len('_hash')]}={label}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def live_workers(heartbeat_timeout: float) -> list[dict]:
    """Workers whose heartbeat is younger than ``heartbeat_timeout``, with seconds since it."""
    connection = Worker.connection
    fresh = f"last_seen >= {_now(connection)} - {_interval(connection, heartbeat_timeout)}"
    rows = (Worker & "status in ('idle', 'busy', 'stopping')" & fresh).to_dicts(order_by="host, pid")
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
            rows.append(
                dict(
                    table=cls.__name__,
                    key=key,
                    time=job["completed_time"],
                    host=job["host"],
                    pid=job["pid"],
                    message=job["error_message"],
                    stack=job["error_stack"],
                )
            )
    rows.sort(key=lambda r: r["time"] or datetime.datetime.min, reverse=True)
    return rows[:limit]


def status_report(tables: Sequence[type], heartbeat_timeout: float = 60.0, n_errors: int = 5) -> str:
    """``pipeline status`` as text: per table rows, jobs and progress; live workers; latest errors."""
    stats = table_status(tables)
    parts = [
        _format_table(
            ["TABLE", "ROWS", "PENDING", "RESERVED", "ERRORS", "PROGRESS"],
            [(s["table"], s["rows"], s["pending"], s["reserved"], s["error"], _progress(s)) for s in stats],
        )
    ]
    workers = live_workers(heartbeat_timeout)
    lost = len(Worker & "status='lost'")
    parts.append(f"\nWORKERS: {len(workers)} live" + (f", {lost} lost" if lost else ""))
    if workers:
        parts.append(
            _format_table(
                ["HOST", "PID", "GPU", "STATUS", "SEEN", "DONE", "FAILED", "CURRENT JOB"],
                [
                    (
                        w["host"],
                        w["pid"],
                        w["gpu"] or "cpu",
                        w["status"],
                        f"{w['seconds_since']:.0f}s ago",
                        w["jobs_done"],
                        w["jobs_failed"],
                        _current_job(w),
                    )
                    for w in workers
                ],
            )
        )
    errors = latest_errors(tables, n_errors)
    if errors:
        parts.append("\nLATEST ERRORS")
        parts.append(
            _format_table(
                ["TABLE", "KEY", "WHEN", "MESSAGE"],
                [(e["table"], describe_key(e["key"]), e["time"], (e["message"] or "")[:100]) for e in errors],
            )
        )
    return "\n".join(parts)


def _current_job(worker: dict) -> str:
    if not worker["current_key"]:
        return ""
    try:
        key = json.loads(worker["current_key"])
    except ValueError:  # cut at the column's width
        return f"{worker['current_table']} {worker['current_key'][:80]}"
    return f"{worker['current_table']} {describe_key(key)}"


def status_data(tables: Sequence[type], heartbeat_timeout: float = 60.0, n_errors: int = 5) -> dict:
    """``pipeline status --json``: the same figures as ``status_report``, as plain data."""
    return {
        "tables": table_status(tables),
        "workers": live_workers(heartbeat_timeout),
        "errors": latest_errors(tables, n_errors),
    }


# -- jobs ---------------------------------------------------------------------------------------


def retry_errors(scopes: dict[type, dict]) -> dict[str, int]:
    """Put errored jobs of each table matching its restriction (``{}``: all) back to pending."""
    out = {}
    for cls, restriction in scopes.items():
        jobs = cls().jobs
        errors = jobs.errors & restriction if restriction else jobs.errors
        keys = errors.keys()
        if not keys:
            continue
        errors.delete_quick()
        refresh_queue(cls, [restriction] if restriction else [])
        out[cls.__name__] = len(keys)
    return out


def error_jobs(scopes: dict[type, dict]) -> list[tuple[str, dict, list[str]]]:
    """Errored jobs of each table matching its restriction, newest first: (table name, job row, key names)."""
    out = []
    for cls, restriction in scopes.items():
        jobs = cls().jobs
        selected = jobs.errors & restriction if restriction else jobs.errors
        for job in selected.to_dicts(order_by="completed_time DESC"):
            out.append((cls.__name__, job, list(jobs.primary_key)))
    return out
