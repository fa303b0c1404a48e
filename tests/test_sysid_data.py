"""Simulated populations, the FileTree format and the data loaders (no database)."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from pipeline.simulation.neurons import make_neurons, neuron_rates
from pipeline.simulation.population import ground_truth, simulate_population
from pipeline.simulation.stimuli import natural_images
from pipeline.sysid import data
from pipeline.sysid.responses import window_mean

torch.set_num_threads(1)

SMALL = dict(n_neurons=20, n_train=40, n_validation=8, n_test_images=6, repeats=4, height=16, width=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return simulate_population(tmp_path_factory.mktemp("sim") / "small", seed=3, **SMALL)


def test_natural_images_are_deterministic_grey_levels():
    a = natural_images(5, 16, 24, seed=1)
    b = natural_images(5, 16, 24, seed=1)
    assert a.shape == (5, 16, 24) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 255.0
    assert not np.array_equal(a, natural_images(5, 16, 24, seed=2))


def test_neurons_share_feature_types_at_different_orientations():
    neurons = make_neurons(40, 16, 16, seed=0, n_types=3)
    for t in range(3):
        members = neurons.feature_type == t
        assert len(np.unique(neurons.frequency[members])) == 1  # one feature ...
        assert len(np.unique(neurons.orientation[members])) == members.sum()  # ... many orientations
    assert 0 < neurons.complex.sum() < 40


def test_running_raises_the_rates_of_modulated_neurons_only():
    neurons = make_neurons(30, 16, 16, seed=0)
    images = natural_images(50, 16, 16, seed=4)
    still = np.tile([20.0, 0.0, 0.0], (50, 1))
    running = np.tile([20.0, 0.0, 30.0], (50, 1))
    ratio = neuron_rates(neurons, images, running).mean(0) / neuron_rates(neurons, images, still).mean(0)
    modulated = neurons.running_gain > 0
    assert np.all(ratio[modulated] > 1.1)
    np.testing.assert_allclose(ratio[~modulated], 1.0)
    assert neuron_rates(neurons, images).min() >= 0.0


def test_population_folder_has_the_sensorium_layout(folder):
    n_trials = 40 + 8 + 6 * 4
    for field in data.FIELDS:
        assert len(list((folder / "data" / field).glob("*.npy"))) == n_trials
    assert np.load(folder / "data" / "images" / "0.npy").shape == (1, 16, 16)
    assert np.load(folder / "data" / "responses" / "0.npy").shape == (20,)
    assert np.load(folder / "meta" / "statistics" / "responses" / "all" / "mean.npy").shape == (20,)
    assert np.load(folder / "meta" / "statistics" / "images" / "stimulus_frame" / "std.npy").shape == ()
    tiers = np.load(folder / "meta" / "trials" / "tiers.npy")
    image_ids = np.load(folder / "meta" / "trials" / "frame_image_id.npy")
    assert sorted(np.unique(tiers, return_counts=True)[1].tolist()) == [8, 24, 40]
    assert np.unique(image_ids[tiers == "test"], return_counts=True)[1].tolist() == [4] * 6
    rates, neurons = ground_truth(folder)
    assert rates.shape == (n_trials, 20) and len(neurons) == 20
    responses = data.read_filetree(folder).responses
    assert np.array_equal(responses, np.round(responses))  # Poisson counts


def test_population_is_deterministic_per_seed(tmp_path):
    a = data.read_filetree(simulate_population(tmp_path / "a", seed=5, **SMALL))
    b = data.read_filetree(simulate_population(tmp_path / "b", seed=5, **SMALL))
    assert np.array_equal(a.responses, b.responses) and np.array_equal(a.images, b.images)


def test_filetree_round_trip_keeps_every_array(folder, tmp_path):
    tree = data.read_filetree(folder)
    copy = data.read_filetree(data.write_filetree(tmp_path / "copy", tree))
    for name in ("images", "responses", "behavior", "pupil_center", "tiers", "image_ids", "trial_idx"):
        assert np.array_equal(getattr(tree, name), getattr(copy, name)), name
    assert tree.neurons.keys() == copy.neurons.keys()
    assert all(np.array_equal(tree.neurons[k], copy.neurons[k]) for k in tree.neurons)
    assert np.array_equal(tree.meta["ground_truth/rates"], copy.meta["ground_truth/rates"])


def test_missing_trial_file_names_the_folder_field_and_file(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    (bad / "data" / "responses" / "7.npy").unlink()
    with pytest.raises(
        data.FileTreeError, match=r"bad: data/responses has 71 files, missing 7.npy \(expected 0.npy .. 71.npy"
    ):
        data.read_filetree(bad)


def test_missing_field_folder_is_an_error(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    shutil.rmtree(bad / "data" / "images")
    with pytest.raises(
        data.FileTreeError, match=r"missing field folder data/images \(expected one .npy per trial, 72 trials\)"
    ):
        data.read_filetree(bad)


def test_response_of_the_wrong_length_is_an_error(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    np.save(bad / "data" / "responses" / "5.npy", np.zeros(19, np.float32))
    with pytest.raises(data.FileTreeError, match=r"data/responses/5.npy has shape \(19,\) \(expected \(20,\)\)"):
        data.read_filetree(bad)


def test_trial_meta_of_the_wrong_length_is_an_error(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    np.save(bad / "meta" / "trials" / "trial_idx.npy", np.arange(70))
    with pytest.raises(data.FileTreeError, match=r"meta/trials/trial_idx.npy has shape \(70,\) \(expected \(72,\)"):
        data.read_filetree(bad)


def test_loaders_normalize_every_tier_with_train_statistics(folder):
    loaders = data.filetree_loaders(0, paths=[str(folder)], data_keys=["small"], batch_size=100)
    tree = data.read_filetree(folder)
    train = tree.tiers == "train"
    test_batch = next(iter(loaders["test"]["small"]))
    expected = (tree.images[tree.tiers == "test"] - tree.images[train].mean()) / tree.images[train].std()
    np.testing.assert_allclose(test_batch["images"].numpy(), expected, rtol=1e-4, atol=1e-4)
    train_responses = next(iter(loaders["train"]["small"]))["responses"].numpy()
    active = tree.responses[train].std(0) > 0.1
    np.testing.assert_allclose(train_responses.std(0)[active], 1.0, rtol=1e-4)
    assert test_batch["images"].shape == (24, 1, 16, 16) and test_batch["behavior"].shape == (24, 3)


def test_batches_pickle_and_load_with_worker_processes(folder):
    datasets = {"small": data.tier_datasets(data.read_filetree(folder), 0, data_key="small", tiers=["test"])}
    pickle.loads(pickle.dumps(datasets["small"]["test"]))
    serial = data.make_loaders(datasets, 0, batch_size=8)["test"]["small"]
    parallel = data.make_loaders(datasets, 0, batch_size=8, num_workers=2)["test"]["small"]
    a, b = list(serial), list(parallel)
    assert len(a) == len(b) == 3
    assert all(
        torch.equal(x["responses"], y["responses"]) and torch.equal(x["trial_idx"], y["trial_idx"])
        for x, y in zip(a, b)
    )
    assert a[0]["images"].device.type == "cpu"


def test_several_datasets_are_keyed_by_data_key_with_a_neuron_selection(folder, tmp_path):
    other = simulate_population(tmp_path / "other", seed=9, **SMALL)
    loaders = data.filetree_loaders(
        1, paths=[str(folder), str(other)], data_keys=["a", "b"], neuron_ids=[3, 1, 2], batch_size=4
    )
    assert sorted(loaders["train"]) == ["a", "b"]
    assert loaders["validation"]["b"].dataset.unit_ids.tolist() == [3, 1, 2]
    assert next(iter(loaders["train"]["a"]))["responses"].shape == (4, 3)


def test_unknown_neuron_is_an_error(folder):
    with pytest.raises(data.FileTreeError, match=r"neuron_ids \[99\] not in meta/neurons/unit_ids"):
        data.filetree_loaders(0, paths=[str(folder)], neuron_ids=[1, 99])


def test_trials_filetree_puts_repeated_images_in_the_test_tier():
    images = {i: np.full((4, 4), i, np.float32) for i in range(12)}
    image_ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 11, 11])
    tree = data.trials_filetree(
        images, np.ones((14, 2)), image_ids, np.arange(14), np.array([5, 6]), seed=0, validation_fraction=0.2
    )
    assert tree.tiers[image_ids >= 10].tolist() == ["test"] * 4
    assert (tree.tiers == "validation").sum() == 2 and (tree.tiers == "train").sum() == 8
    assert tree.images[11, 0, 0, 0] == 10.0


def test_window_mean_averages_activity_and_behaviour_after_onset():
    activity = np.tile(np.arange(100, dtype=np.float32), (2, 1))
    activity[1] *= 2
    behavior = {
        "running": np.arange(100.0),
        "pupil_radius": np.full(100, 3.0),
        "pupil_x": np.arange(100.0),
        "pupil_y": np.zeros(100),
    }
    out = window_mean(activity, np.array([10, 50]), 10.0, behavior, start=0.0, stop=0.5)
    np.testing.assert_allclose(out["responses"], [[12.0, 24.0], [52.0, 104.0]])  # frames 10..14, 50..54
    np.testing.assert_allclose(out["behavior"], [[3.0, 0.0, 12.0], [3.0, 0.0, 52.0]])
    np.testing.assert_allclose(out["pupil_center"], [[-20.0, 0.0], [20.0, 0.0]])


def test_window_outside_the_recording_names_the_trial():
    with pytest.raises(ValueError, match=r"trial 1: response window frames 98..102 outside the recording"):
        window_mean(np.zeros((1, 100)), np.array([0, 98]), 10.0, start=0.0, stop=0.5)


def test_given_tiers_replace_the_assignment():
    images = {i: np.zeros((4, 4), np.float32) for i in range(3)}
    tree = data.trials_filetree(
        images,
        np.ones((3, 2), np.float32),
        np.array([0, 1, 2]),
        np.arange(3),
        np.arange(2),
        tiers=np.array(["test", "train", "validation"]),
    )
    assert tree.tiers.tolist() == ["test", "train", "validation"]
    with pytest.raises(data.FileTreeError, match=r"unknown tier\(s\) \['holdout'\]"):
        data.trials_filetree(
            images,
            np.ones((3, 2), np.float32),
            np.array([0, 1, 2]),
            np.arange(3),
            np.arange(2),
            tiers=np.array(["test", "holdout", "train"]),
        )
