"""The ``pipeline`` command: the one owner of the command line (nothing imports this module).

Subcommands: ``db``, ``demo``, ``worker``, ``controller``, ``launch``, ``status``, ``jobs``, ``spikes-pretrained``,
``reproduce``, ``retrain``, ``report``, ``gc``, ``ingest``, ``export-nwb``. Each parses its arguments here and calls a function of a stage or of
``schemas.workers``. Restrictions on the command line are ``attr=value`` pairs, checked against
the table they restrict and typed by its heading (``schemas.restrictions``), handed to
DataJoint as dicts, never pasted into SQL. Errors the user can fix are one line on stderr with
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Sequence

# -- db ------------------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> int:
    from . import database

    action = args.action
    if action == "stop":
        if database.user_gave_host():
            print("pipeline db: a lab server is configured (DJ_HOST/datajoint.json); nothing to stop here")
            return 0
        stopped = database.stop_embedded()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    if action == "start" and not database.user_gave_host():
        before = database.embedded_status()["running"]
        database.start_embedded()
        if before:
            print("embedded PostgreSQL already running")
    where = database.target(start=action == "start")
    if where.embedded and action == "status" and not database.embedded_status()["running"]:
        print(f"embedded PostgreSQL: stopped (data in {database.home() / 'pgdata'}); `pipeline db start` starts it")
        return 1
    connection = database.connect()
    version = connection.query("SELECT version()").fetchone()[0].split(",")[0]
    state = "running" if where.embedded else "reachable"
    print(f"{where.describe()}: {state}")
    print(f"  backend  {where.backend}")
    print(f"  server   {version}")
    print(f"  home     {database.home()}")
    if where.embedded:
        print(f"  pid      {database.embedded_status()['pid']}")
    return 0


# -- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import database, demo

    if database.user_gave_host() and args.prefix is None:
        print(
            "pipeline demo: a lab server is configured (DJ_HOST / datajoint.json); give the demo schemas of "
            "its own there, e.g. `pipeline --prefix demo_ demo`",
            file=sys.stderr,
        )
        return 2
    summary = demo.run_demo(args.prefix, size=args.size, seed=args.seed, workers=args.workers)
    return 1 if summary["errors"] else 0


# -- workers -------------------------------------------------------------------------------------


def _module_names(args: argparse.Namespace) -> list[str]:
    if args.modules:
        return [m for value in args.modules for m in value.split(",") if m]
    return [m for m in os.environ.get("PIPELINE_MODULES", "").split(",") if m.strip()]


def worker_options(args: argparse.Namespace):
    """The ``WorkerOptions`` that a ``worker`` or ``launch`` command line asks for."""
    from .restrictions import split_pairs
    from .workers import WorkerOptions

    split_pairs(args.restrict)  # the syntax now; the attributes once the tables are known
    return WorkerOptions(
        tables=args.tables,
        modules=_module_names(args),
        restrict=list(args.restrict),
        priority=args.priority,
        max_jobs=args.max_jobs,
        exit_when_idle=args.exit_when_idle,
        batch=args.batch,
        poll=args.poll,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        controller_interval=args.controller_interval,
        refresh_interval=args.refresh_interval,
        grace=args.grace,
        gpu=args.gpu,
        gpu_fraction=args.gpu_fraction,
        give_up_after=None if args.give_up_after <= 0 else args.give_up_after,
    )


def _worker(args: argparse.Namespace) -> int:
    from .workers import run_worker

    return run_worker(args.prefix, worker_options(args))


def _controller(args: argparse.Namespace) -> int:
    import time

    from .workers import activate_with_modules, control, select_tables, setup_logging, table_scopes
    from .workers.worker import log

    setup_logging()
    _prefix, modules = activate_with_modules(args.prefix, _module_names(args))
    scopes = table_scopes(select_tables(args.tables, modules), (), args.restrict)
    while True:
        result = control(scopes, args.heartbeat_timeout)
        added = sum(result["added"].values())
        recovered = sum(result["recovered"].values())
        log.info("controller: %d job(s) added, %d recovered from dead workers", added, recovered)
        if args.once:
            return 0
        time.sleep(args.interval)


def _launch(args: argparse.Namespace) -> int:
    from .workers import ClusterOptions, launch_local, launch_submitit, sbatch_script

    options = worker_options(args)
    cluster = ClusterOptions(
        workers=args.workers,
        gpus=args.gpus,
        cluster=args.cluster,
        partition=args.partition,
        walltime=args.walltime,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        mem=args.mem,
        log_dir=args.log_dir,
        wait=args.wait,
        per_gpu=args.per_gpu,
    )
    if not args.cluster:
        return launch_local(args.prefix, options, cluster)
    try:
        import submitit  # noqa: F401 - only to say what is missing
    except ImportError:
        print("pipeline launch: --cluster needs submitit: pip install 'v1-pipeline[slurm]'", file=sys.stderr)
        return 1
    if args.dry_run:
        print(sbatch_script(cluster))
        return 0
    return launch_submitit(args.prefix, options, cluster)


# -- status and jobs (read-only: they create nothing on the server) -------------------------------


def _read_only(args: argparse.Namespace):
    """Activate the prefix without creating anything; return (prefix, tables, a line saying where)."""
    import schemas

    from .workers import activate_modules, select_tables
    from .workers.registry import Worker

    prefix = schemas.activate(args.prefix, create=False)
    connection = Worker.connection
    modules = activate_modules(_module_names(args), prefix, connection)
    info = connection.conn_info
    where = f"{connection.adapter.backend} at {info['host']}" + (
        f":{info['port']}" if not str(info["host"]).startswith("/") else ""
    )
    return prefix, select_tables(args.tables if hasattr(args, "tables") else None, modules), where


def _status(args: argparse.Namespace) -> int:
    from .workers import status_data, status_report
    from .workers.registry import _jsonable

    prefix, tables, where = _read_only(args)
    if args.json:
        data = {"database": where, "prefix": prefix, **status_data(tables, args.heartbeat_timeout, args.errors)}
        print(json.dumps(data, default=_jsonable, indent=1))
        return 0
    print(f"database {where}, prefix {prefix!r}\n")
    print(status_report(tables, args.heartbeat_timeout, args.errors))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from .restrictions import restrictions_per_table
    from .workers import error_jobs, key_json, retry_errors, select_tables
    from .workers.selection import activate_with_modules

    words = list(args.args)
    action = words.pop(0) if words and words[0] in ("list", "retry") else "list"
    names = [w for w in words if "=" not in w]
    pairs = [w for w in words if "=" in w]
    if action == "retry":
        _prefix, modules = activate_with_modules(args.prefix, _module_names(args))
        tables = select_tables(names or None, modules)
    else:
        args.tables = names or None
        _prefix, tables, _where = _read_only(args)
    scopes = restrictions_per_table(tables, pairs, of_jobs=True)
    if action == "retry":
        counts = retry_errors(scopes)
        for name, n in counts.items():
            print(f"{name}: {n} errored job(s) put back to pending")
        if not counts:
            print("no errored jobs to retry")
        return 0
    errors = error_jobs(scopes)
    if not errors:
        print("no errored jobs")
        return 0
    for name, job, pk in errors:
        key = {k: job[k] for k in pk}
        print(f"{name} {key_json(key)}  {job['completed_time']}  {job['host']}:{job['pid']}")
        print(f"    {job['error_message']}")
        if args.traceback and job["error_stack"]:
            print("    " + str(job["error_stack"]).rstrip().replace("\n", "\n    "))
    print(f"{len(errors)} errored job(s); `pipeline jobs retry [TABLE] [attr=value ...]` puts them back")
    return 0


# -- reproduce -----------------------------------------------------------------------------------


def _trained_models(args: argparse.Namespace) -> list[dict]:
    """The TrainedModel keys ``args.key`` names (``attr=value`` typed by the table's heading)."""
    import schemas

    from . import sysid
    from .restrictions import typed_restriction

    schemas.activate(args.prefix)
    restriction = typed_restriction(sysid.TrainedModel, args.key)
    keys = (sysid.TrainedModel & restriction).keys()
    if not keys:
        print(f"pipeline {args.command}: no trained model matches {restriction}")
    return keys


def _compare(key: dict, scores: dict, stored: dict | None, extra: list[str], label: str) -> None:
    """The scores of ``key`` recomputed (``label``) beside the stored ones, one line each."""
    print(" ".join(f"{k}={v}" for k, v in key.items()))
    print(f"  {'score':<26}{label:>12}{'stored':>12}")
    for line in extra:
        print(f"  {line}")
    for name in ("single_trial_correlation", "correlation_to_average", "feve"):
        old = "" if stored is None or stored[name] is None else f"{stored[name]:.6f}"
        print(f"  {name:<26}{scores[name]:>12.6f}{old:>12}")


def _verdict(difference: float | None, tolerance: float, done: str) -> bool:
    """Print whether ``difference`` is within ``tolerance``; True when it is not (a failure)."""
    if difference is None:
        print("  no stored Score to compare with")
        return False
    if difference > tolerance:
        print(f"  DIFFERS: max difference {difference:.3g} > {tolerance:g}")
        return True
    print(f"  {done}: max difference {difference:.3g} <= {tolerance:g}")
    return False


def _reproduce(args: argparse.Namespace) -> int:
    from . import sysid

    keys = _trained_models(args)
    failed = 0
    for key in keys:
        result = sysid.reproduce(key, device=args.device)
        _compare(key, result["scores"], result["stored"], [], "recomputed")
        failed += _verdict(result["max_difference"], args.tolerance, "reproduced")
    return 1 if failed or not keys else 0


# -- ingest --------------------------------------------------------------------------------------


def _ingest(args: argparse.Namespace) -> int:
    import schemas
    from pipeline.imaging.experiment_files import ExperimentFileError

    from .ingest import IngestError, ingest_scan

    schemas.activate(args.prefix)
    try:
        done = ingest_scan(
            args.movie,
            args.animal_id,
            args.session,
            args.scan_idx,
            trials=args.trials,
            images=args.images,
            behavior=args.behavior,
            frame_rate=args.frame_rate,
            channel=args.channel,
            field=args.field,
            axes=args.axes,
            acquisition=args.acquisition,
            note=args.note,
        )
    except (IngestError, ExperimentFileError) as error:
        print(f"pipeline ingest: {error}", file=sys.stderr)
        return 2
    key = done.key
    print(
        f"Scan {key['animal_id']}/{key['session']}/{key['scan_idx']}: raw store file {done.filename!r}, "
        f"{done.nframes} frames"
    )
    timing = f" (onsets in seconds converted with the {done.timing})" if done.timing else ""
    print(
        f"  {done.trials} trial(s){timing}, {done.new_images} new stimulus image(s), "
        f"behaviour {'yes' if done.behavior else 'no'}; default parameter sets in place"
    )
    print("  next: `pipeline worker --exit-when-idle` populates it; `pipeline status` shows progress")
    return 0


# -- export-nwb ----------------------------------------------------------------------------------


def _export_nwb(args: argparse.Namespace) -> int:
    import schemas

    from . import imaging
    from .nwb import ExportError, export_scan
    from .restrictions import typed_restriction

    schemas.activate(args.prefix)
    try:
        path = export_scan(typed_restriction(imaging.Traces, args.key), args.path, overwrite=args.overwrite)
    except ExportError as error:
        print(f"pipeline export-nwb: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


# -- gc ------------------------------------------------------------------------------------------


def _gc(args: argparse.Namespace) -> int:
    import schemas

    from . import stores

    schemas.activate(args.prefix)
    reports = stores.collect_garbage(grace=args.grace, dry_run=args.dry_run, stores=tuple(args.store) or None)
    verb = "would delete" if args.dry_run else "deleted"
    for name, report in reports.items():
        print(
            f"{name}: {len(report['orphaned'])} unreferenced, {verb} {len(report['deleted'])} "
            f"({report['bytes_freed'] / 1e6:.1f} MB), kept {len(report['kept'])} younger than "
            f"{report['min_age']:.0f} s"
        )
    return 0


# -- report --------------------------------------------------------------------------------------


def _spikes_pretrained(args: argparse.Namespace) -> int:
    import schemas

    from . import spikes

    schemas.activate(args.prefix)
    path = spikes.export_pretrained(args.training_set, args.name, args.out)
    print(f"wrote the {args.name!r} spike weights trained on {args.training_set!r} to {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    import schemas

    from . import imaging, report, sysid
    from .restrictions import typed_restriction

    schemas.activate(args.prefix)
    kind = args.kind or (
        "model"
        if any(
            p.split("=")[0] in sysid.TrainedModel.heading.names and p.split("=")[0] not in imaging.Scan.heading.names
            for p in args.key
        )
        else "scan"
    )
    table = sysid.TrainedModel if kind == "model" else imaging.Traces
    path = report.write_report(typed_restriction(table, args.key), args.out, kind=kind, device=args.device)
    print(f"wrote {path}")
    return 0


# -- retrain -------------------------------------------------------------------------------------


def _retrain(args: argparse.Namespace) -> int:
    from . import modelling

    keys = _trained_models(args)
    failed = 0
    for key in keys:
        result = modelling.retrain(key, device=args.device)
        extra = [
            f"{'weights: max difference':<26}{result['max_weight_difference']:>12.3g}",
            f"{'validation (trainer)':<26}{result['score']:>12.6f}{result['stored_score']:>12.6f}",
        ]
        _compare(key, result["scores"], result["stored"], extra, "retrained")
        differences = [result["max_weight_difference"], abs(result["score"] - result["stored_score"])]
        if result["max_score_difference"] is not None:
            differences.append(result["max_score_difference"])
        failed += _verdict(max(differences), args.tolerance, "retrained")
    return 1 if failed or not keys else 0


# -- the parser ----------------------------------------------------------------------------------


def _modules_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=None,
        metavar="MODULE",
        help="an extra schema module whose tables to include (a lab's own tables; repeatable; "
        "default $PIPELINE_MODULES, comma-separated)",
    )


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    _modules_option(parser)
    parser.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables (class names)")
    parser.add_argument(
        "--restrict",
        nargs="+",
        default=[],
        metavar="ATTR=VALUE",
        help="only keys matching these (tables without these attributes are left alone)",
    )
    parser.add_argument("--priority", type=int, help="only jobs of this priority or more urgent (lower number)")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when nothing is pending or reserved")
    parser.add_argument(
        "--gpu",
        help="the GPU this worker uses (an index; 'none' for CPU only); default: "
        "the scheduler's CUDA_VISIBLE_DEVICES / SLURM_LOCALID",
    )
    parser.add_argument(
        "--gpu-fraction",
        type=float,
        help="most of the GPU's memory this worker may take, in (0, 1] (several workers sharing one GPU)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="keys listed per populate call (default: about 2 s of work, from the mean job duration, 1 to 50)",
    )
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks when idle (default 2)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats (default 10)")
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        help="a worker silent this long is dead and its jobs go back to pending (default 60)",
    )
    parser.add_argument(
        "--controller-interval",
        type=float,
        default=30.0,
        help="seconds between this worker's recovery passes (default 30)",
    )
    parser.add_argument(
        "--refresh-interval", type=float, default=5.0, help="seconds between refreshes of a table's queue (default 5)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds a stopping worker gives its job before putting it back (default 30)",
    )
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=3600.0,
        help="seconds without a reachable database before the worker exits with status 3; it "
        "waits and reconnects until then (default 3600; 0 = never give up)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Two-photon scans to trained models of visual cortex, on DataJoint.",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="schema-name prefix (default: $PIPELINE_PREFIX or 'v1_'; lower-case letters, digits, _)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    db = sub.add_parser(
        "db",
        help="the database: status, start, stop",
        description=(
            "Where the pipeline connects: the lab server from DataJoint's settings (DJ_HOST, "
            "datajoint.json, .secrets/) or else the embedded PostgreSQL server in $PIPELINE_HOME."
        ),
    )
    db.add_argument("action", choices=["status", "start", "stop"], help="what to do")
    db.set_defaults(func=_db)

    from .demo import SIZES

    demo = sub.add_parser(
        "demo",
        help="run the main job end to end on a simulated experiment",
        description="Simulate a scan of cells viewing natural images (with behaviour) and a population dataset, "
        "populate every table from ScanInfo to TrainedModel and Score, and print the results against the "
        "simulation's ground truth. Rerunning computes only what is missing.",
    )
    demo.add_argument("--size", choices=sorted(SIZES), default="full", help="data size (default: full)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation (default: 0)")
    demo.add_argument(
        "--workers", type=int, default=1, help="populate through N worker processes (default: 1, in this process)"
    )
    demo.set_defaults(func=_demo)

    ingest = sub.add_parser(
        "ingest",
        help="register your own scan with its stimulus trials, images and behaviour",
        description="Copy MOVIE into the raw store (unless it is there), insert its Session, Scan, stimulus "
        "images, trials (onsets in seconds converted with the file's frame timing) and behaviour, and the default "
        "parameter set of every step. File layouts: README, 'Your own experiment'.",
    )
    ingest.add_argument("movie", help="the scan's movie file (.tif/.tiff/.h5)")
    ingest.add_argument("--animal-id", type=int, required=True, help="the animal's id")
    ingest.add_argument("--session", type=int, required=True, help="the session of the animal")
    ingest.add_argument("--scan-idx", type=int, required=True, help="the scan within the session")
    ingest.add_argument(
        "--trials",
        help="trial file, .csv or .json (trial_idx, image_id, onset_frame|onset_time, "
        "duration_frames|duration_time, optional tier)",
    )
    ingest.add_argument("--images", help="folder of <image_id>.npy / .png stimulus images")
    ingest.add_argument("--behavior", help="behaviour CSV (running, pupil_radius, pupil_x, pupil_y, optional time)")
    ingest.add_argument("--frame-rate", type=float, help="Hz, for a file whose header has none")
    ingest.add_argument("--channel", type=int, default=0, help="channel to process, 0-based (default 0)")
    ingest.add_argument("--field", type=int, default=0, help="field (plane) to process, 0-based (default 0)")
    ingest.add_argument("--axes", help="axes of an unlabelled HDF5 dataset, e.g. yxt")
    ingest.add_argument("--acquisition", default="", help="rig, indicator, depth, ...")
    ingest.add_argument("--note", default="", help="free text")
    ingest.set_defaults(func=_ingest)

    export = sub.add_parser(
        "export-nwb",
        help="write a scan's cells, traces, spikes and trials to an NWB file",
        description="Export the one Traces row matching KEY (attr=value pairs, e.g. animal_id=7 session=1 "
        "scan_idx=1) with its masks, fluorescence, dF/F, inferred spikes and stimulus trials to PATH (pynwb).",
    )
    export.add_argument("key", nargs="+", metavar="KEY", help="attr=value restriction(s) of Traces")
    export.add_argument("path", metavar="PATH", help="the .nwb file to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    export.set_defaults(func=_export_nwb)

    worker = sub.add_parser(
        "worker",
        help="compute jobs of the auto-populated tables until stopped",
        description="Walk the auto-populated tables in dependency order and populate them with reserved jobs, "
        "again and again. SIGTERM/SIGINT: finish or put back the current job within --grace seconds, then exit. "
        "A database that goes away is waited for (one log line per attempt) for up to --give-up-after seconds.",
    )
    _worker_arguments(worker)
    worker.set_defaults(func=_worker)

    controller = sub.add_parser(
        "controller",
        help="create jobs tables, refresh queues, recover dead workers' jobs",
        description="Create missing jobs tables, add ready keys to the queues and put back to pending the jobs "
        "of workers whose heartbeat is older than --heartbeat-timeout.",
    )
    _modules_option(controller)
    controller.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables")
    controller.add_argument("--restrict", nargs="+", default=[], metavar="ATTR=VALUE", help="only keys matching these")
    controller.add_argument("--heartbeat-timeout", type=float, default=60.0, help="seconds (default 60)")
    controller.add_argument("--interval", type=float, default=30.0, help="seconds between passes (default 30)")
    controller.add_argument("--once", action="store_true", help="one pass, then exit")
    controller.set_defaults(func=_controller)

    launch = sub.add_parser(
        "launch",
        help="start N local workers, or a SLURM job array of workers",
        description="Local: one worker per GPU (or per CPU core when there is none), waiting for them all. "
        "--cluster slurm: a job array through submitit, one GPU per worker.",
    )
    launch.add_argument("-n", "--workers", type=int, help="how many workers (default: GPUs, else CPU cores)")
    launch.add_argument("--gpus", help="local GPU indices to use, comma-separated (default: all)")
    launch.add_argument(
        "--cluster",
        choices=["slurm", "local", "debug"],
        help="submit through submitit instead of starting subprocesses",
    )
    launch.add_argument("--partition", help="SLURM partition")
    launch.add_argument("--walltime", type=float, default=240, help="minutes per worker job (default 240)")
    launch.add_argument(
        "--per-gpu",
        type=int,
        default=1,
        help="workers sharing each GPU, each with 1/N of its memory (small models; default 1)",
    )
    launch.add_argument("--gpus-per-worker", type=int, default=1, help="GPUs per array element (default 1; 0 = CPU)")
    launch.add_argument("--cpus-per-worker", type=int, default=4, help="CPUs per array element (default 4)")
    launch.add_argument("--mem", type=int, help="GB of memory per array element")
    launch.add_argument("--log-dir", default="worker-logs", help="submitit's folder (default ./worker-logs)")
    launch.add_argument("--dry-run", action="store_true", help="print the sbatch script and submit nothing")
    launch.add_argument("--wait", action="store_true", help="with --cluster: wait for the workers to end")
    _worker_arguments(launch)
    launch.set_defaults(func=_launch)

    pretrained = sub.add_parser(
        "spikes-pretrained",
        help="write the shipped spike-inference weights from a training set's SpikeModel",
        description="Train (or reuse) the SpikeModel of the supervised method with the default configuration "
        "on TRAINING_SET and save it as pipeline/spikes/weights/NAME.pt, which the 'pretrained' spikes "
        "method loads.",
    )
    pretrained.add_argument("--training-set", required=True, help="a TrainingSet of GroundTruth recordings")
    pretrained.add_argument("--name", default="default", help="the weights' name (default 'default')")
    pretrained.add_argument("--out", help="write here instead of the package's weights folder")
    pretrained.set_defaults(func=_spikes_pretrained)

    status = sub.add_parser("status", help="per table rows and jobs, live workers, latest errors (read-only)")
    _modules_option(status)
    status.add_argument("--tables", nargs="+", metavar="TABLE", help="only these tables")
    status.add_argument("--heartbeat-timeout", type=float, default=60.0, help="a live worker beat within (s)")
    status.add_argument("--errors", type=int, default=5, help="how many latest errors to show (default 5)")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=_status)

    jobs = sub.add_parser(
        "jobs",
        help="list errored jobs with their messages; `jobs retry` puts them back",
        description="`pipeline jobs [TABLE ...] [attr=value ...]` lists errors (read-only); `pipeline jobs retry "
        "[TABLE ...] [attr=value ...]` puts them back to pending. Attributes are those of the jobs' keys.",
    )
    _modules_option(jobs)
    jobs.add_argument(
        "args",
        nargs="*",
        metavar="[retry] TABLE|ATTR=VALUE",
        help="'retry' to put errors back, then tables and attr=value restrictions",
    )
    jobs.add_argument("--traceback", action="store_true", help="show each error's traceback")
    jobs.set_defaults(func=_jobs)

    from .sysid import REPRODUCE_TOLERANCE

    reproduce = sub.add_parser(
        "reproduce",
        help="rebuild trained models from their keys and recompute their scores",
        description="Rebuild the dataset and model of every TrainedModel matching KEY (attr=value pairs, e.g. "
        "dataset_id=sim seed=0), load its stored weights, recompute the test scores and compare them with the "
        "stored Score. Exit code 1 if any differs by more than --tolerance.",
    )
    reproduce.add_argument("key", nargs="+", metavar="KEY", help="attr=value restriction(s) of TrainedModel")
    reproduce.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    reproduce.add_argument("--tolerance", type=float, default=REPRODUCE_TOLERANCE, help="allowed score difference")
    reproduce.set_defaults(func=_reproduce)

    gc = sub.add_parser(
        "gc",
        help="remove stored files that no row references (safe while workers run)",
        description="Remove files of every store (raw, movies, models) that no row references, once older than "
        "--grace seconds and older than the oldest reserved job (an insert in progress writes its files first).",
    )
    gc.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds a file must be old to go (default $PIPELINE_GC_GRACE, else one day)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    gc.add_argument("--store", action="append", default=[], metavar="NAME", help="only this store (repeatable)")
    gc.set_defaults(func=_gc)

    report = sub.add_parser(
        "report",
        help="a one-page summary (PNG or HTML) of a scan or a trained model",
        description="Draw the processing of one scan (cells over the mean image, correlation image, motion, "
        "traces) or one trained model (learning curve, per-unit scores, predicted vs recorded responses, "
        "readout positions) into --out (.png or .html).",
    )
    report.add_argument("key", nargs="+", metavar="KEY", help="attr=value restriction naming one scan or model")
    report.add_argument("--out", default="report.png", help="file to write, .png or .html (default report.png)")
    report.add_argument("--kind", choices=["scan", "model"], help="default: model when KEY names model attributes")
    report.add_argument("--device", default="cpu", help="device for a model's predictions (default cpu)")
    report.set_defaults(func=_report)

    retrain = sub.add_parser(
        "retrain",
        help="train models again from scratch and compare weights and scores with the stored ones",
        description="Train every TrainedModel matching KEY (attr=value pairs) again from its builders, configs and "
        "seed, score it, and compare its weights, validation score and test scores with the stored ones. Exit "
        "code 1 if any differs by more than --tolerance (expect exact equality on the machine and device it was "
        "trained on).",
    )
    retrain.add_argument("key", nargs="+", metavar="KEY", help="attr=value restriction(s) of TrainedModel")
    retrain.add_argument("--device", default=None, help="where to score: cpu or cuda (default: cuda when available)")
    retrain.add_argument(
        "--tolerance", type=float, default=REPRODUCE_TOLERANCE, help="allowed difference of weights and scores"
    )
    retrain.set_defaults(func=_retrain)
    return parser


def _quiet_pipe() -> int:
    """The reader of our output went away (``pipeline status | head -3``): stop quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a tool killed by the signal reports it


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="No datajoint.json found")
    warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import datajoint as dj

    # DataJoint's INFO lines ("connected to ...") would drown the command's own output
    dj.config["loglevel"] = os.environ.get("DJ_LOG_LEVEL", "WARNING")
    import schemas

    from .database import DatabaseUnavailable
    from .report import ReportError
    from .restrictions import RestrictionError
    from .workers.selection import SelectionError

    args = build_parser().parse_args(argv)
    try:
        if args.prefix is not None:
            schemas.validate_prefix(args.prefix)
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except (
        DatabaseUnavailable,
        RestrictionError,
        SelectionError,
        ReportError,
        schemas.PrefixError,
        schemas.LabModuleError,
        schemas.SchemasMissing,
    ) as error:
        print(f"pipeline {args.command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_pipe()
    except KeyboardInterrupt:
        print("pipeline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
