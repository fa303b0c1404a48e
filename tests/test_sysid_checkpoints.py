"""Training checkpoints without a database: a preempted training resumes and ends as if never stopped."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.sysid import checkpoints, training
from pipeline.sysid.models import builders
from tests.models_helpers import synthetic_loaders

torch.set_num_threads(1)

CONFIG = dict(max_epochs=6, patience=2, lr_decay_steps=3, lr=5e-3)
MODEL = dict(hidden_channels=4, layers=1, input_kernel=5)


class Preempted(RuntimeError):
    """The machine went away in the middle of an epoch."""


class FailingTrials(torch.utils.data.Dataset):
    """A tier's trials whose reads fail after ``reads`` items, as storage lost mid-epoch would."""

    def __init__(self, dataset, reads: int):
        self.dataset, self.left = dataset, reads

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise Preempted("storage lost")
        return self.dataset[i]


def _loaders(failing: bool = False) -> dict:
    loaders = synthetic_loaders(n_neurons=(5,), n_train=48, n_validation=16, batch_size=16, seed=3)
    if failing:
        train = loaders["train"]["d0"]
        loaders["train"]["d0"] = DataLoader(
            FailingTrials(train.dataset, reads=10**9),
            batch_size=16,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
        )
    return loaders


def _train(loaders: dict, checkpoint=None, fail_after: int | None = None) -> training.TrainingResult:
    """Build and train; with ``fail_after``, the train reads fail after that many trials of training."""
    training.set_seed(0)
    model = builders.cnn_factorized(loaders, 0, **MODEL)
    if fail_after is not None:
        loaders["train"]["d0"].dataset.left = fail_after  # counted from the first epoch on
    return training.standard_trainer(model, loaders, 0, progress=False, checkpoint=checkpoint, **CONFIG)


def _curve(result: training.TrainingResult) -> list[tuple]:
    return [(h["epoch"], h["loss"], h["validation_correlation"], h["lr"]) for h in result.output["history"]]


def test_preempted_training_resumes_after_its_last_checkpoint_and_ends_as_never_stopped(tmp_path):
    uninterrupted = _train(_loaders())
    # 48 trials per epoch: the reads fail during epoch 4, after the checkpoint of epoch 3
    checkpoint = checkpoints.FolderCheckpoint(tmp_path / "run", every=1, fingerprint="run")
    with pytest.raises(Preempted):
        _train(_loaders(failing=True), checkpoint, fail_after=48 * 3 + 20)
    assert checkpoint.epochs() == [3]
    resumed = _train(_loaders(), checkpoint)
    assert resumed.output["resumed_from"] == [3]
    assert [h["epoch"] for h in resumed.output["history"]] == [1, 2, 3, 4, 5, 6]
    assert _curve(resumed) == _curve(uninterrupted)
    assert resumed.score == uninterrupted.score
    assert resumed.output["best_epoch"] == uninterrupted.output["best_epoch"]
    assert all(torch.equal(resumed.state_dict[k], uninterrupted.state_dict[k]) for k in uninterrupted.state_dict)
    assert checkpoint.epochs() == [5]  # the trainer keeps only the latest; the caller removes it


def test_epochs_before_the_checkpoint_are_not_trained_again(tmp_path):
    checkpoint = checkpoints.FolderCheckpoint(tmp_path / "run", every=2, fingerprint="run")
    with pytest.raises(Preempted):
        _train(_loaders(failing=True), checkpoint, fail_after=48 * 5 + 1)
    assert checkpoint.epochs() == [4]  # every 2 epochs: the state after epoch 4
    before = {h["epoch"]: h["finished_at"] for h in checkpoint.load()[1]["progress"]["history"]}
    resumed = _train(_loaders(), checkpoint)
    after = {h["epoch"]: h["finished_at"] for h in resumed.output["history"]}
    assert {e: after[e] for e in (1, 2, 3, 4)} == before  # the records of the first run, kept
    assert min(after[5], after[6]) > max(before.values())


def test_checkpoint_of_another_run_is_refused(tmp_path):
    checkpoints.FolderCheckpoint(tmp_path, fingerprint="model A").save(2, {"x": 1})
    with pytest.raises(checkpoints.CheckpointError, match=r"written for run 'model A' \(expected 'model B'\)"):
        checkpoints.FolderCheckpoint(tmp_path, fingerprint="model B").load()


def test_saving_keeps_only_the_latest_checkpoint_and_remove_clears_it(tmp_path):
    checkpoint = checkpoints.FolderCheckpoint(tmp_path, every=1)
    for epoch in (1, 2, 3):
        checkpoint.save(epoch, {"epoch": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000003.pt"]
    assert checkpoint.load() == (3, {"epoch": 3})
    assert checkpoint.remove() == 1 and checkpoint.load() is None


def _draws(loaders: dict) -> tuple:
    order = [batch["image_id"].tolist() for batch in loaders["train"]["d0"]]
    return random.random(), np.random.rand(), torch.rand(1).item(), order


def test_restored_generators_draw_the_same_numbers_again():
    loaders = _loaders()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = checkpoints.rng_states(loaders)
    first = _draws(loaders)
    checkpoints.restore_rng_states(states, loaders)
    again = _draws(loaders)
    assert again == first


def test_checkpoint_every_must_be_a_positive_number_of_epochs(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint every = 0 \(expected an int >= 1 epochs\)"):
        checkpoints.FolderCheckpoint(tmp_path, every=0)
