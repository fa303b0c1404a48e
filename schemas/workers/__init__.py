"""Workers on many machines: the ``Worker`` table, the worker loop, the controller, launching, status.

A worker (``pipeline worker``) is one process that walks the auto-populated tables in
dependency order and calls ``populate(reserve_jobs=True, suppress_errors=True, ...)`` on each,
again and again. The database is the only thing workers share:

- the jobs tables (DataJoint's ``~~table``) hand out keys atomically;
- the ``Worker`` table holds one row per worker process, kept alive by a heartbeat thread on
  its own connection (so a long computation, or a dropped main connection, does not stop it);
- the controller (``pipeline controller``, and every worker now and then) creates missing jobs
  tables, refreshes the queues and puts back to pending any job reserved by a worker whose
  heartbeat is older than the timeout (DataJoint never recovers a SIGKILLed worker's job),
  unless the server started less than a timeout ago or the job was reserved less than a
  timeout ago (after an outage, a reservation may come before the first new heartbeat).

Policies (what "a job is not lost" means here):

- SIGTERM / SIGINT: the worker takes no new job; the current job may finish within the grace
  period; otherwise it is interrupted and put back to *pending* (never left reserved, never
  marked as an error), and the worker exits with status 0 before the grace period is over.
- A lost database connection (a server restart, a terminated backend) is an infrastructure
  failure, not the job's: every database call of the loop waits for the server with a capped
  backoff, reconnects and puts back to pending the job it held (at most
  ``RETRIES_AFTER_LOST_CONNECTION`` times per key for a job that loses its connection itself,
  e.g. by exceeding the server's packet size; after that the error is recorded). Only
  ``give_up_after`` seconds without a server end a worker (exit status 3).
- A job reserved under a live worker that, by its heartbeats, computes something else (the
  reply to the reserve UPDATE was lost) is put back by the next controller pass.
- A job put back keeps its place in the queue.
- A key whose row another process inserted while this worker computed it (two processes
  computed it: a worker presumed dead that was only cut off) is done, not an error: the row
  that was in first is kept.
- A job that raises: the message and traceback go to the jobs table (``pipeline jobs``), the
  worker goes on with other keys; ``pipeline jobs retry`` puts errors back.

Modules: ``registry`` (the ``Worker`` table), ``selection`` (which tables), ``controller``
(queues and recovery), ``worker`` (the loop), ``launch`` (local processes, SLURM), ``status``
(reports). The command line (``schemas.cli``) is their only caller that parses arguments.
"""

from .controller import control, mark_lost_workers, recover_orphans, refresh_queue, release_reserved
from .launch import (
    ClusterOptions,
    count_gpus,
    launch_local,
    launch_submitit,
    local_worker_commands,
    sbatch_script,
    worker_argv,
)
from .registry import LIVE_STATUSES, Worker, key_json, schema
from .selection import (
    SelectionError,
    activate_modules,
    activate_with_modules,
    ensure_jobs_tables,
    module_auto_tables,
    select_tables,
    table_scopes,
)
from .status import error_jobs, latest_errors, live_workers, retry_errors, status_data, status_report, table_status
from .worker import Interrupted, WorkerOptions, WorkerProcess, pin_gpu, run_worker, setup_logging

__all__ = [
    "ClusterOptions",
    "Interrupted",
    "LIVE_STATUSES",
    "SelectionError",
    "Worker",
    "WorkerOptions",
    "WorkerProcess",
    "activate_modules",
    "activate_with_modules",
    "control",
    "count_gpus",
    "ensure_jobs_tables",
    "error_jobs",
    "key_json",
    "latest_errors",
    "launch_local",
    "local_worker_commands",
    "launch_submitit",
    "live_workers",
    "mark_lost_workers",
    "module_auto_tables",
    "pin_gpu",
    "recover_orphans",
    "refresh_queue",
    "release_reserved",
    "retry_errors",
    "run_worker",
    "sbatch_script",
    "schema",
    "select_tables",
    "setup_logging",
    "status_data",
    "status_report",
    "table_scopes",
    "table_status",
    "worker_argv",
]
