"""Launching workers without a database: GPU pinning, the forwarded options, the SLURM script."""

from __future__ import annotations

import pytest

from schemas import cli, workers


def test_gpu_option_pins_that_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert workers.pin_gpu("2") == "2"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_gpu_none_hides_every_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert workers.pin_gpu("none") == ""


def test_slurm_local_rank_picks_one_of_the_allocated_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert workers.pin_gpu(None) == "5"


def test_scheduler_single_gpu_is_kept(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert workers.pin_gpu(None) == "3"


def test_launch_forwards_worker_options_unchanged():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "--prefix",
            "lab_",
            "launch",
            "-n",
            "2",
            "--module",
            "tests.work_tables",
            "--tables",
            "Square",
            "--restrict",
            "item_id=3",
            "--grace",
            "5",
            "--max-jobs",
            "7",
            "--exit-when-idle",
            "--give-up-after",
            "90",
        ]
    )
    argv = workers.worker_argv(args.prefix, cli.worker_options(args))
    again = parser.parse_args(argv)
    assert again.command == "worker" and again.prefix == "lab_"
    options = cli.worker_options(again)
    assert (options.tables, options.modules, options.restrict) == (["Square"], ["tests.work_tables"], ["item_id=3"])
    assert (options.grace, options.max_jobs, options.exit_when_idle, options.give_up_after) == (5.0, 7, True, 90.0)


def test_slurm_dry_run_prints_a_job_array_with_one_gpu_per_worker(capsys, tmp_path):
    pytest.importorskip("submitit")
    code = cli.main(
        [
            "launch",
            "--cluster",
            "slurm",
            "--dry-run",
            "-n",
            "4",
            "--partition",
            "gpu",
            "--walltime",
            "90",
            "--log-dir",
            str(tmp_path),
        ]
    )
    script = capsys.readouterr().out
    assert code == 0
    lines = set(script.splitlines())
    assert {
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --array=0-3%4",
        "#SBATCH --ntasks-per-node=1",
    } <= lines, script


def test_unknown_table_names_the_choices():
    with pytest.raises(workers.SelectionError, match="no auto-populated table 'Nope'"):
        workers.select_tables(["Nope"])


def test_per_gpu_shares_each_gpu_among_workers_with_a_memory_fraction():
    options = workers.WorkerOptions(tables=["Square"], exit_when_idle=True)
    commands = workers.local_worker_commands("lab_", options, workers.ClusterOptions(gpus="0,1", per_gpu=3))
    assert [argv[argv.index("--gpu") + 1] for argv in commands] == ["0", "0", "0", "1", "1", "1"]
    assert {argv[argv.index("--gpu-fraction") + 1] for argv in commands} == {"0.333333"}
    parsed = cli.build_parser().parse_args(commands[0][3:])
    assert cli.worker_options(parsed).gpu_fraction == pytest.approx(0.333333)
    # one worker per GPU by default: no fraction
    single = workers.local_worker_commands(None, options, workers.ClusterOptions(gpus="0,1"))
    assert [argv[argv.index("--gpu") + 1] for argv in single] == ["0", "1"]
    assert not any("--gpu-fraction" in argv for argv in single)


def test_per_gpu_without_gpus_and_a_bad_fraction_are_errors(monkeypatch):
    from schemas.workers import launch

    monkeypatch.setattr(launch, "count_gpus", lambda: 0)  # a machine without GPUs, as CI's
    options = workers.WorkerOptions()
    with pytest.raises(ValueError, match=r"per_gpu = 2 but this machine has no GPU"):
        workers.local_worker_commands(None, options, workers.ClusterOptions(gpus="", per_gpu=2))
    with pytest.raises(ValueError, match=r"per_gpu = 0 \(expected >= 1 workers per GPU\)"):
        workers.local_worker_commands(None, options, workers.ClusterOptions(gpus="0", per_gpu=0))
    from schemas.workers.worker import limit_gpu_memory

    with pytest.raises(ValueError, match=r"gpu_fraction = 1.5 \(expected a fraction of the GPU's memory in \(0, 1\]\)"):
        limit_gpu_memory(1.5)
