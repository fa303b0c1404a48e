"""Throughput of `pipeline worker`: jobs per second of short jobs, speed-up of compute-bound jobs.

For each backend (the embedded PostgreSQL, and MariaDB/MySQL at ``--mysql`` if reachable) and
1, 2 and 4 worker processes, on the test tables of ``tests/work_tables.py``:

- short jobs (make() does nothing but insert one row): jobs/s and the scheduling overhead per
  job (the worker loop + reserve + transaction + complete), measured from the first make()
  start to the last make() end, so process start-up is not counted;
- compute-bound jobs (a CPU loop of about ``--job-seconds`` each): the speed-up over one worker,
  compared with the number of cores the workers can use, min(workers, cores).

The peer is DataJoint's own ``populate(reserve_jobs=True)`` in as many plain processes (what a
lab runs without this worker): the table gives the ratio of our jobs/s to its jobs/s.

    python benchmarks/workers.py --json workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message="No datajoint.json found")
warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")

WORKER_OPTIONS = [
    "--poll",
    "0.05",
    "--heartbeat",
    "1",
    "--refresh-interval",
    "0.5",
    "--controller-interval",
    "5",
    "--exit-when-idle",
]

PLAIN_POPULATE = """
import warnings; warnings.filterwarnings("ignore")
import schemas
from schemas import workers
from tests import work_tables as wt
prefix = schemas.activate()
workers.activate_modules(["tests.work_tables"], prefix, workers.Worker.connection)
wt.Square.populate(reserve_jobs=True, suppress_errors=True, refresh=False)
"""


def _env(backend: str, home: Path, prefix: str, logs: Path, mysql: str) -> dict:
    env = {
        **os.environ,
        "PIPELINE_HOME": str(home),
        "PIPELINE_PREFIX": prefix,
        "WORK_LOG_DIR": str(logs),
        "PYTHONPATH": str(ROOT),
        "PIPELINE_MODULES": "tests.work_tables",
        "DJ_IGNORE_CONFIG_FILE": "true",
        "OMP_NUM_THREADS": "1",
    }
    for var in ("DJ_HOST", "DJ_USER", "DJ_PASS", "DJ_BACKEND", "DJ_PORT"):
        env.pop(var, None)
    if backend == "mysql":
        credentials, _, address = mysql.rpartition("@")
        user, _, password = credentials.partition(":")
        host, _, port = address.partition(":")
        env.update(DJ_HOST=host, DJ_PORT=port or "3306", DJ_USER=user or "root", DJ_PASS=password, DJ_BACKEND="mysql")
    return env


def _configure(env: dict):
    """Point this process's DataJoint at the backend of ``env`` and activate the tables."""
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DJ_", "PIPELINE_"))})
    import datajoint as dj

    import schemas
    from schemas import workers
    from tests import work_tables as wt

    if "DJ_HOST" in env:
        dj.config["database.host"] = env["DJ_HOST"]
        dj.config["database.port"] = int(env["DJ_PORT"])
        dj.config["database.user"] = env["DJ_USER"]
        dj.config["database.password"] = env["DJ_PASS"]
        dj.config["database.backend"] = "mysql"
        dj.config["database.use_tls"] = False
    from schemas import database

    connection = database.connect(reset=True)
    prefix = schemas.activate(env["PIPELINE_PREFIX"], connection=connection)
    workers.activate_modules(["tests.work_tables"], prefix, connection)
    workers.ensure_jobs_tables([wt.Square])
    return connection, wt, workers


def _reset(wt, workers, logs: Path) -> None:
    wt.Square.jobs.delete()
    wt.Square().delete_quick()
    wt.Item().delete_quick()
    workers.Worker().delete_quick()
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()


def _span(logs: Path) -> tuple[float, int]:
    """Seconds from the first make() start to the last make() end, and the number of 'done'."""
    starts, ends = [], []
    for path in logs.glob("*.log"):
        for line in path.read_text().splitlines():
            _item, event, t = line.split()
            (starts if event == "start" else ends).append(float(t))
    return max(ends) - min(starts), len(ends)


def _run(env: dict, n_workers: int, plain: bool) -> None:
    if plain:
        argv = [sys.executable, "-c", PLAIN_POPULATE]
    else:
        argv = [sys.executable, "-m", "schemas.cli", "worker", *WORKER_OPTIONS, "--tables", "Square"]
    procs = [
        subprocess.Popen(
            ["nice", "-n", "5", *argv], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n_workers)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=600)
        if proc.returncode:
            raise RuntimeError(f"worker failed ({proc.returncode}): {err[-2000:]}")


def _spin_for(seconds: float) -> int:
    from tests.work_tables import spin

    n = 200_000
    while True:
        t = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - t
        if elapsed > 0.05:
            return int(n * seconds / elapsed)
        n *= 4


def bench_backend(backend: str, args, home: Path) -> list[dict]:
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    logs = home / f"logs-{backend}"
    env = _env(backend, home, prefix, logs, args.mysql)
    connection, wt, workers = _configure(env)
    import schemas

    cores = os.cpu_count() or 1
    spin = _spin_for(args.job_seconds)
    results = []
    try:
        for kind in ("short", "compute"):
            for n_workers in args.workers:
                for tool in ("pipeline worker", "datajoint populate") if kind == "short" else ("pipeline worker",):
                    _reset(wt, workers, logs)
                    n_jobs = args.short_jobs if kind == "short" else args.compute_jobs
                    wt.Item.insert(
                        [
                            dict(item_id=i, sleep=0.0, spin=spin if kind == "compute" else 0, fail=0)
                            for i in range(n_jobs)
                        ]
                    )
                    wt.Square.jobs.refresh(delay=-1)
                    _run(env, n_workers, plain=tool != "pipeline worker")
                    span, done = _span(logs)
                    assert done == n_jobs == len(wt.Square()), (done, n_jobs, len(wt.Square()))
                    results.append(
                        dict(
                            backend=backend,
                            kind=kind,
                            tool=tool,
                            workers=n_workers,
                            jobs=n_jobs,
                            seconds=span,
                            jobs_per_s=n_jobs / span,
                            ms_per_job=1000 * span * n_workers / n_jobs,
                            cores_used=min(n_workers, cores),
                        )
                    )
                    print(
                        f"  {backend:10s} {kind:7s} {tool:18s} {n_workers} worker(s): {n_jobs / span:7.1f} jobs/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        import datajoint as dj

        with dj.config.override(safemode=False):
            for module in (wt,):
                module.schema.drop(prompt=False)
            schemas.drop_all(prefix, connection)
    for row in results:
        if row["kind"] == "compute":
            one = next(r for r in results if r["kind"] == "compute" and r["workers"] == 1 and r["backend"] == backend)
            row["speedup"] = one["seconds"] / row["seconds"]
            row["speedup_vs_cores"] = row["speedup"] / row["cores_used"]
        else:
            peer = next(
                r
                for r in results
                if r["kind"] == "short"
                and r["workers"] == row["workers"]
                and r["tool"] == "datajoint populate"
                and r["backend"] == backend
            )
            row["ratio_to_populate"] = row["jobs_per_s"] / peer["jobs_per_s"]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["postgresql", "mysql"], choices=["postgresql", "mysql"])
    parser.add_argument("--mysql", default="root@127.0.0.1:3306", help="user[:password]@host:port")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--short-jobs", type=int, default=300)
    parser.add_argument("--compute-jobs", type=int, default=16)
    parser.add_argument("--job-seconds", type=float, default=0.4, help="CPU seconds of one compute-bound job")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    results = []
    load_before = os.getloadavg()[0]
    try:
        for backend in args.backends:
            # one backend per process: DataJoint's configuration is process-wide
            out = home / f"{backend}.json"
            code = subprocess.run(
                [sys.executable, __file__, "--_one", backend, str(out), json.dumps(vars(args), default=str)], cwd=ROOT
            ).returncode
            if code:
                print(f"{backend}: benchmark failed (exit {code})", file=sys.stderr)
                continue
            results += json.loads(out.read_text())
    finally:
        if "postgresql" in args.backends:
            os.environ["PIPELINE_HOME"] = str(home)
            from schemas import database

            database.delete_embedded()
        shutil.rmtree(home, ignore_errors=True)

    print(f"\ncores: {os.cpu_count()}, load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(
        f"{'backend':10s} {'jobs':8s} {'tool':18s} {'workers':>7s} {'n':>4s} {'s':>7s} {'jobs/s':>8s} "
        f"{'ms/job':>7s} {'vs peer':>8s} {'speed-up':>8s} {'/cores':>7s}"
    )
    for r in results:
        print(
            f"{r['backend']:10s} {r['kind']:8s} {r['tool']:18s} {r['workers']:7d} {r['jobs']:4d} {r['seconds']:7.2f} "
            f"{r['jobs_per_s']:8.1f} {r['ms_per_job']:7.1f} "
            + (f"{r['ratio_to_populate']:8.2f}" if "ratio_to_populate" in r else f"{'':8s}")
            + (f" {r['speedup']:8.2f} {r['speedup_vs_cores']:7.2f}" if "speedup" in r else "")
        )
    if args.json:
        args.json.write_text(json.dumps(dict(cores=os.cpu_count(), load_before=load_before, results=results), indent=1))
    return 0


def _one(backend: str, out: str, options: str) -> int:
    args = argparse.Namespace(**json.loads(options))
    home = Path(out).parent
    results = bench_backend(backend, args, home)
    Path(out).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        sys.exit(_one(*sys.argv[2:5]))
    sys.exit(main())
