"""A TrainedModel job whose worker is SIGKILLed resumes from its checkpoint in the models store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import identity
from pipeline.sysid import fitting
from schemas import checkpoints, params, sysid, values
from tests.modelling_helpers import TINY_DATA, TINY_MODEL, fresh_prefix, tiny_filetree

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--poll",
    "0.2",
    "--heartbeat",
    "0.3",
    "--heartbeat-timeout",
    "2",
    "--controller-interval",
    "0.5",
    "--refresh-interval",
    "0.5",
]
EPOCHS = 40


@pytest.fixture
def own_prefix(db):
    yield from fresh_prefix(db)


@pytest.fixture
def model_key(own_prefix, tmp_path) -> dict:
    sysid.import_filetree(tiny_filetree(tmp_path / "tiny"), "tiny")
    sysid.Seed.insert1({"seed": 0})
    return {
        "dataset_id": "tiny",
        **params.insert_config(sysid.DatasetConfig, "filetree", TINY_DATA),
        **params.insert_config(sysid.ModelConfig, "cnn_factorized", TINY_MODEL),
        # no early stopping: every one of the EPOCHS epochs is trained
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": EPOCHS, "patience": 1000}),
        "seed": 0,
    }


def _worker(env: dict, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "schemas.cli", "worker", *FAST, "--tables", "TrainedModel", *args],
        env=env,
        cwd=ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def _wait_for_checkpoint(checkpoint, epoch: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.epochs() and checkpoint.epochs()[-1] >= epoch:
            return
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_checkpoint_and_repeats_no_epoch(own_prefix, model_key, tmp_path):
    env = {**os.environ, **own_prefix.env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    checkpoint = checkpoints.for_job(sysid.TrainedModel, model_key)
    first = _worker(env, tmp_path / "first.out")
    try:
        _wait_for_checkpoint(checkpoint, 3, first, tmp_path / "first.out")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = time.time()
    # a kill between writing a checkpoint and dropping the older one leaves both: the latest counts
    killed_after = checkpoint.epochs()[-1]
    assert 3 <= killed_after < EPOCHS and not sysid.TrainedModel & model_key

    second = _worker(env, tmp_path / "second.out", "--exit-when-idle")
    assert second.wait(timeout=240) == 0, (tmp_path / "second.out").read_text()[-3000:]

    output = values.json_value((sysid.TrainedModel & model_key).fetch1("output"))
    history = output["history"]
    assert output["resumed_from"] == [killed_after]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    # epochs 1..k are the killed worker's (finished before the kill), the rest the second's
    assert all(h["finished_at"] < killed_at for h in history[:killed_after])
    assert all(h["finished_at"] > killed_at for h in history[killed_after:])
    assert checkpoint.epochs() == []  # removed once the model was inserted

    # and the result is the one an uninterrupted training gives, bit for bit
    fit = _train_uninterrupted(model_key)
    stored = fitting.load_state_dict((sysid.TrainedModel & model_key).fetch1("weights").read())
    assert sorted(stored) == sorted(fit.state_dict)
    assert all(torch.equal(stored[name], fit.state_dict[name]) for name in stored)
    assert (sysid.TrainedModel & model_key).fetch1("score") == fit.score
    assert [h["loss"] for h in history] == [h["loss"] for h in fit.output["history"]]


def _train_uninterrupted(key: dict) -> fitting.Fit:
    dataset_config, model_config, seed = sysid._configs(key)
    dataset_fn, _ = params.load_config(sysid.DatasetConfig, key)
    model_fn, _ = params.load_config(sysid.ModelConfig, key)
    trainer_fn, trainer_config = params.load_config(sysid.TrainerConfig, key)
    assert trainer_fn is identity.resolve("trainer", "standard_trainer")
    return fitting.fit(dataset_fn, dataset_config, model_fn, model_config, trainer_fn, trainer_config, seed)


def test_a_checkpoint_left_beside_a_trained_model_is_stale_and_removed(db, tmp_path):
    if not sysid.Dataset & {"dataset_id": "stale_tiny"}:
        sysid.import_filetree(tiny_filetree(tmp_path / "tiny", seed=2), "stale_tiny")
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    key = {
        "dataset_id": "stale_tiny",
        **params.insert_config(sysid.DatasetConfig, "filetree", TINY_DATA),
        **params.insert_config(sysid.ModelConfig, "linear_nonlinear", {}),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1}),
        "seed": 0,
    }
    sysid.TrainedModel.populate(key)
    checkpoint = checkpoints.for_job(sysid.TrainedModel, key)
    assert checkpoint.epochs() == []  # removed by the insert
    checkpoint.save(1, {"left": "by a crash between the insert and the removal"})
    assert checkpoints.stale(sysid.TrainedModel) == [checkpoints.folder(sysid.TrainedModel, key)]
    assert checkpoints.remove_stale(sysid.TrainedModel) == 1
    assert checkpoints.stale(sysid.TrainedModel) == [] and checkpoint.epochs() == []
