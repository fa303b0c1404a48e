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
