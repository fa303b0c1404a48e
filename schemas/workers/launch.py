"""Launching workers: N local processes, or a SLURM job array through submitit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from .controller import control
from .selection import activate_with_modules, select_tables, table_scopes
from .worker import WorkerOptions, run_worker, scheduled_gpu


def count_gpus() -> int:
    """GPUs on this machine (``nvidia-smi -L``), 0 when there is none."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_argv(prefix: str | None, options: WorkerOptions) -> list[str]:
    """The ``pipeline`` arguments that start one worker with ``options``."""
    argv = [] if prefix is None else ["--prefix", prefix]
    argv.append("worker")
    for name in options.modules:
        argv += ["--module", name]
    if options.tables:
        argv += ["--tables", *options.tables]
    if options.restrict:
        argv += ["--restrict", *options.restrict]
    for name in (
        "priority",
        "max_jobs",
        "batch",
        "poll",
        "heartbeat",
        "heartbeat_timeout",
        "controller_interval",
        "refresh_interval",
        "grace",
        "give_up_after",
        "gpu_fraction",
    ):
        value = getattr(options, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    if options.exit_when_idle:
        argv.append("--exit-when-idle")
    return argv


def run_worker_task(prefix: str | None, options: WorkerOptions, per_gpu: int = 1) -> int:
    """Entry point of one scheduled array element (submitit pickles this function and its arguments).

    One worker in this process; with ``per_gpu`` > 1, that many worker processes sharing the
    element's GPU, each limited to its share of the GPU's memory.
    """
    if per_gpu > 1:
        gpu = options.gpu if options.gpu is not None else (scheduled_gpu() or "none")
        commands = [_worker_command(prefix, options, gpu, per_gpu) for _ in range(per_gpu)]
        code = _run_children(commands, dict(os.environ))
    else:
        code = run_worker(prefix, options)
    if code:
        raise RuntimeError(f"worker exited with status {code}")
    return code


@dataclass
class ClusterOptions:
    """Where and how workers are launched (``pipeline launch``)."""

    workers: int | None = None  # how many; default one per GPU, else one per CPU core
    gpus: str | None = None  # local GPU indices, comma-separated
    cluster: str | None = None  # submitit's cluster: slurm, local or debug; None: local subprocesses
    partition: str | None = None
    walltime: float = 240  # minutes per worker job
    gpus_per_worker: int = 1
    cpus_per_worker: int = 4
    mem: int | None = None  # GB per array element
    log_dir: str = "worker-logs"
    wait: bool = False
    per_gpu: int = 1  # workers sharing each GPU (small models), each with 1/per_gpu of its memory


def slurm_parameters(cluster: ClusterOptions) -> dict:
    """submitit parameters: one task, one GPU per array element, walltime and partition."""
    params = dict(
        timeout_min=int(cluster.walltime),
        slurm_array_parallelism=cluster.workers,
        tasks_per_node=1,
        nodes=1,
        cpus_per_task=cluster.cpus_per_worker,
        name="pipeline-worker",
    )
    if cluster.gpus_per_worker:
        params["gpus_per_node"] = cluster.gpus_per_worker
    if cluster.partition:
        params["slurm_partition"] = cluster.partition
    if cluster.mem:
        params["mem_gb"] = cluster.mem
    return params


def sbatch_script(cluster: ClusterOptions) -> str:
    """The sbatch script submitit would submit (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = os.path.abspath(cluster.log_dir)
    params = slurm_parameters(cluster)
    return _make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit '{folder}'",
        folder=folder,
        job_name=params["name"],
        partition=params.get("slurm_partition"),
        time=params["timeout_min"],
        ntasks_per_node=1,
        cpus_per_task=params["cpus_per_task"],
        gpus_per_node=params.get("gpus_per_node"),
        mem=f"{params['mem_gb']}GB" if "mem_gb" in params else None,
        array_parallelism=cluster.workers,
        map_count=cluster.workers,
    )


def _prepare_queues(prefix: str | None, options: WorkerOptions) -> None:
    """Create the jobs tables and fill the queues before the workers race for them."""
    _prefix, modules = activate_with_modules(prefix, options.modules)
    tables = select_tables(options.tables, modules)
    control(table_scopes(tables, options.restrictions, options.restrict), options.heartbeat_timeout)


def launch_submitit(prefix: str | None, options: WorkerOptions, cluster: ClusterOptions) -> int:
    """Submit ``cluster.workers`` workers as a submitit job array; wait for them with ``cluster.wait``."""
    import submitit

    _prepare_queues(prefix, options)
    executor = submitit.AutoExecutor(folder=os.path.abspath(cluster.log_dir), cluster=cluster.cluster)
    params = slurm_parameters(cluster)
    if cluster.cluster == "slurm":
        executor.update_parameters(**params)
    else:
        executor.update_parameters(timeout_min=params["timeout_min"], name=params["name"])
    n = cluster.workers
    jobs = executor.map_array(run_worker_task, [prefix] * n, [options] * n, [cluster.per_gpu] * n)
    for job in jobs:
        print(f"submitted {job.job_id}")
    if not cluster.wait:
        return 0
    failed = 0
    for job in jobs:
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - reported, counted
            print(f"worker {job.job_id} failed: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _worker_command(prefix: str | None, options: WorkerOptions, gpu: str, per_gpu: int) -> list[str]:
    argv = [sys.executable, "-m", "schemas.cli", *worker_argv(prefix, options), "--gpu", gpu]
    if per_gpu > 1 and options.gpu_fraction is None and gpu != "none":
        argv += ["--gpu-fraction", f"{1 / per_gpu:.6g}"]
    return argv


def local_worker_commands(prefix: str | None, options: WorkerOptions, cluster: ClusterOptions) -> list[list[str]]:
    """The command line of every worker ``launch_local`` starts.

    GPUs: ``cluster.gpus`` or every GPU here; ``cluster.per_gpu`` workers per GPU by default,
    each with ``--gpu-fraction 1/per_gpu``. Without GPUs: one CPU worker per core.
    """
    if cluster.per_gpu < 1:
        raise ValueError(f"per_gpu = {cluster.per_gpu} (expected >= 1 workers per GPU)")
    gpus = cluster.gpus.split(",") if cluster.gpus else [str(i) for i in range(count_gpus())]
    if cluster.per_gpu > 1 and not gpus:
        raise ValueError(f"per_gpu = {cluster.per_gpu} but this machine has no GPU (expected GPUs to share; use -n)")
    n = cluster.workers or (len(gpus) * cluster.per_gpu or os.cpu_count() or 1)
    # worker i on GPU i // per_gpu: the first per_gpu workers share the first GPU, and so on
    return [
        _worker_command(prefix, options, gpus[(i // cluster.per_gpu) % len(gpus)] if gpus else "none", cluster.per_gpu)
        for i in range(n)
    ]


def _run_children(commands: list[list[str]], env: dict) -> int:
    """Start every command, forward SIGTERM/SIGINT to them, wait for all; the largest exit status."""
    children = [subprocess.Popen(argv, env=env) for argv in commands]
    print(f"launched {len(children)} worker(s): pids {' '.join(str(c.pid) for c in children)}", flush=True)

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes) if codes else 0


def launch_local(prefix: str | None, options: WorkerOptions, cluster: ClusterOptions) -> int:
    """Start the workers of :func:`local_worker_commands` as processes here; wait for all."""
    commands = local_worker_commands(prefix, options, cluster)
    env = dict(os.environ)
    if all(argv[argv.index("--gpu") + 1] == "none" for argv in commands):
        # CPU workers: one core each, no thread oversubscription
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    _prepare_queues(prefix, options)
    # the command line, run as a program: workers are independent processes
    return _run_children(commands, env)
