"""The spikefinder score: correlation of inferred and true spikes in 40 ms bins."""

from __future__ import annotations

import numpy as np


def spikefinder_correlation(prediction: np.ndarray, truth: np.ndarray) -> float | np.ndarray:
    """Pearson correlation of predicted and true spikes in 40 ms bins, as in spikefinder.

    Both series are sampled at 100 Hz (10 ms bins). Samples where either is NaN are dropped,
    then adjacent groups of 4 bins are summed (``np.convolve(x, np.ones(4), 'valid')[::4]``)
    and the Pearson correlation of the two binned series is returned.

    Parameters
    ----------
    prediction, truth
        ``(samples,)`` for one cell, or ``(cells, samples)``; equal shapes.

    Returns
    -------
    float or ndarray
        The correlation (one cell) or ``(cells,)`` correlations. A cell whose binned
        prediction or truth is constant, or that has fewer than two bins, scores NaN
        (undefined), so that averages can decide what to do with it.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction has shape {prediction.shape} but truth has shape {truth.shape} (expected equal)")
    if prediction.ndim == 2:
        return np.array([_one_cell(p, t) for p, t in zip(prediction, truth)])
    if prediction.ndim != 1:
        raise ValueError(f"expected (samples,) or (cells, samples) arrays, got shape {prediction.shape}")
    return _one_cell(prediction, truth)


def _one_cell(prediction: np.ndarray, truth: np.ndarray) -> float:
    keep = ~(np.isnan(prediction) | np.isnan(truth))
    p, t = prediction[keep], truth[keep]
    if p.size < 8:
        return float("nan")
    p = np.convolve(p, np.ones(4), "valid")[::4]
    t = np.convolve(t, np.ones(4), "valid")[::4]
    p = p - p.mean()
    t = t - t.mean()
    denominator = np.sqrt((p * p).sum() * (t * t).sum())
    if denominator == 0:
        return float("nan")
    return float((p * t).sum() / denominator)
