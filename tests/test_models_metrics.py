"""Specification of the Sensorium scores on arrays computed by hand."""

import numpy as np
import pytest
import torch

from pipeline.sysid import metrics

torch.set_num_threads(1)


def test_single_trial_correlation_is_pearson_per_neuron_with_zero_for_constant_predictions():
    responses = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    predictions = np.array([[2.0, 3.0, 5.0], [4.0, 2.0, 5.0], [6.0, 1.0, 5.0]])
    r = metrics.single_trial_correlation(responses, predictions)
    np.testing.assert_allclose(r, [1.0, -1.0, 0.0], atol=1e-12)


def test_correlation_to_average_correlates_repeat_means():
    # image means: responses [2, 3, 7], predictions [1, 2, 3] -> r = 5 / sqrt(28)
    image_ids = np.array([4, 4, 9, 9, 1, 1])
    responses = np.array([[1.0], [3.0], [6.0], [8.0], [2.0], [4.0]])
    predictions = np.array([[1.0], [1.0], [3.0], [3.0], [2.0], [2.0]])
    r = metrics.correlation_to_average(responses, predictions, image_ids)
    np.testing.assert_allclose(r, [5.0 / np.sqrt(28.0)], rtol=1e-12)


def test_fev_is_explainable_fraction_of_total_variance():
    # total variance (ddof 1) 20/3, noise variance 2 -> FEV 0.7
    responses = np.array([[0.0], [2.0], [4.0], [6.0]])
    np.testing.assert_allclose(metrics.fev(responses, np.array([0, 0, 1, 1])), [0.7], rtol=1e-12)


def test_feve_of_constant_prediction_is_one_minus_excess_error_over_explainable_variance():
    # MSE 5, noise 2, total 20/3 -> 1 - 3 / (14/3) = 5/14
    responses = np.array([[0.0], [2.0], [4.0], [6.0]])
    predictions = np.full((4, 1), 3.0)
    np.testing.assert_allclose(metrics.feve(responses, predictions, np.array([0, 0, 1, 1])), [5.0 / 14.0], rtol=1e-12)


def test_feve_summary_averages_only_neurons_with_fev_at_least_015():
    # neuron 1 is pure noise: FEV = (4/3 - 2) / (4/3) = -0.5, left out of the mean
    responses = np.array([[0.0, 0.0], [2.0, 2.0], [4.0, 2.0], [6.0, 0.0]])
    predictions = np.array([[3.0, 1.0], [3.0, 1.0], [3.0, 1.0], [3.0, 1.0]])
    scores = metrics.test_scores(responses, predictions, np.array([0, 0, 1, 1]))
    assert scores["n_units_feve"] == 1
    np.testing.assert_allclose(scores["unit_fev"], [0.7, -0.5], rtol=1e-12)
    assert scores["feve"] == pytest.approx(5.0 / 14.0, rel=1e-12)
    assert scores["single_trial_correlation"] == 0.0  # both predictions constant


def test_fev_rejects_images_shown_once():
    with pytest.raises(ValueError, match=r"image\(s\) \[7\] shown only once"):
        metrics.fev(np.zeros((3, 2)), np.array([0, 0, 7]))


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match=r"responses \(4, 2\) and predictions \(4, 3\)"):
        metrics.single_trial_correlation(np.zeros((4, 2)), np.zeros((4, 3)))


def test_predict_returns_every_trial_in_loader_order():
    from models_helpers import synthetic_loaders

    loaders = synthetic_loaders(n_neurons=(3,), n_validation=8, repeats=3, batch_size=5)

    class MeanImage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

        def forward(self, images, data_key=None, behavior=None, pupil_center=None):
            return images.mean(dim=(1, 2, 3))[:, None] * self.scale

    responses, predictions, image_ids = metrics.predict(MeanImage(), loaders["test"]["d0"], "d0")
    dataset = loaders["test"]["d0"].dataset.arrays
    assert responses.shape == predictions.shape == (6, 3)
    np.testing.assert_array_equal(image_ids, [10000, 10000, 10000, 10001, 10001, 10001])
    np.testing.assert_allclose(predictions[:, 2], dataset["images"].mean(dim=(1, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(responses, dataset["responses"].numpy())
