"""In-silico experiments as plain functions: MEIs, white-noise receptive fields, grating tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.insilico import (
    filter_correlation,
    grating_tuning_experiment,
    most_exciting_inputs,
    noise_receptive_fields,
    orientation_error,
    preferred_orientation,
)
from pipeline.simulation.neurons import make_neurons, receptive_fields

torch.set_num_threads(1)

SHAPE = (1, 18, 32)


@pytest.fixture(scope="module")
def gabors():
    """Six ground-truth Gabor quadrature pairs (6, 2, 18, 32) and their neurons."""
    neurons = make_neurons(6, 18, 32, seed=3)
    return neurons, receptive_fields(neurons)


def _linear(filters: np.ndarray):
    w = torch.tensor(filters.reshape(len(filters), -1), dtype=torch.float32)
    return lambda x: torch.nn.functional.elu(3.0 * x.flatten(1) @ w.T - 1.0) + 1.0


def _energy(pairs: np.ndarray):
    even = torch.tensor(pairs[:, 0].reshape(len(pairs), -1), dtype=torch.float32)
    odd = torch.tensor(pairs[:, 1].reshape(len(pairs), -1), dtype=torch.float32)
    return lambda x: torch.sqrt((x.flatten(1) @ even.T) ** 2 + (x.flatten(1) @ odd.T) ** 2 + 1e-6)


def test_mei_of_a_linear_filter_is_that_filter(gabors):
    _, rf = gabors
    meis, activations = most_exciting_inputs(_linear(rf[:, 0]), SHAPE, np.arange(6), norm=10.0, steps=100)
    assert meis.shape == (6, 1, 18, 32)
    assert filter_correlation(meis, rf[:, 0]).min() > 0.95
    norms = np.linalg.norm(meis.reshape(6, -1), axis=1)
    assert np.allclose(norms, 10.0, atol=1e-3)
    assert activations.min() > 20.0  # elu(3 * 10 * ~0.99 - 1) + 1


def test_mei_of_an_energy_unit_lies_in_its_quadrature_pair(gabors):
    _, rf = gabors
    meis, _ = most_exciting_inputs(_energy(rf), SHAPE, np.arange(6), norm=10.0, steps=100, blur_sigma=0.0)
    assert filter_correlation(meis, rf).min() > 0.99


def test_grating_tuning_of_a_gabor_peaks_at_its_orientation(gabors):
    neurons, rf = gabors
    result = grating_tuning_experiment(_linear(rf[:, 0]), SHAPE, 6, 0, n_orientations=16)
    errors = orientation_error(result["preferred_orientation"], neurons.orientation)
    assert errors.max() < 3.0  # degrees, with 11.25-degree sampling
    assert result["curves"].shape == (6, 16, 7)
    # the preferred frequency is the sampled one nearest the filter's on a log scale
    nearest = result["frequencies"][np.abs(np.log(result["frequencies"][None] / neurons.frequency[:, None])).argmin(1)]
    assert np.array_equal(result["preferred_frequency"], nearest)


def test_white_noise_receptive_field_of_a_linear_unit_is_its_filter(gabors):
    _, rf = gabors
    maps = noise_receptive_fields(_linear(rf[:, 0]), SHAPE, n_images=3000, seed=1)
    assert maps.shape == (6, 1, 18, 32)
    assert filter_correlation(maps, rf[:, 0]).min() > 0.85


def test_preferred_orientation_interpolates_between_samples():
    orientations = np.arange(8) * np.pi / 8
    true = np.radians(100.0)
    curves = np.exp(2.0 * np.cos(2 * (orientations - true)))[None]
    preferred, selectivity = preferred_orientation(curves, orientations)
    assert orientation_error(preferred, true)[0] < 0.5
    assert 0.5 < selectivity[0] < 1.0


def test_orientation_error_wraps_at_180_degrees():
    assert orientation_error(np.radians([179.0, 10.0]), np.radians([1.0, 100.0])).tolist() == pytest.approx([2.0, 90.0])


def test_filter_correlation_names_mismatched_units():
    with pytest.raises(ValueError, match=r"filters have 3 units, images 2"):
        filter_correlation(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


def test_experiment_builders_are_registered_with_typed_configs():
    assert {"gratings", "mei", "noise_rf"} <= set(identity.registered("insilico"))
    config = identity.normalize(identity.resolve("insilico", "mei"), {"steps": 10})
    assert config == {"batch": 32, "blur_sigma": 0.5, "contrast": 0.5, "step_size": 0.1, "steps": 10}
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['norm'\]"):
        identity.normalize(identity.resolve("insilico", "mei"), {"norm": 3.0})
