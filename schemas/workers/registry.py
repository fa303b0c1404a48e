"""The ``Worker`` table: one row per worker process, kept alive by its heartbeat."""

from __future__ import annotations

import datetime
import json
from typing import Any

import datajoint as dj

schema = dj.Schema()

LIVE_STATUSES = ("idle", "busy", "stopping")
# rows of workers stopped or lost this long ago are forgotten (their jobs were recovered long ago)
WORKER_MEMORY_S = 7 * 24 * 3600


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


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def key_json(key: dict) -> str:
    """A job's key as ``Worker.current_key`` holds it: sorted JSON, at most 2047 characters."""
    return json.dumps(dict(key), default=_jsonable, sort_keys=True)[:2047]
