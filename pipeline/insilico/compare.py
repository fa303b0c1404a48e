"""Agreement of in-silico results with a known ground truth (simulated neurons, known filters)."""

from __future__ import annotations

import numpy as np


def filter_correlation(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Correlation of each image with the span of its unit's filters.

    For one filter this is the Pearson correlation of the two images (over pixels). For a
    quadrature pair (an energy unit, whose best input is the pair's filter at any phase) it is
    the correlation with the best combination ``cos(p) f0 + sin(p) f1``, i.e. the norm of the
    image's correlations with the (orthonormalized) pair.

    Parameters
    ----------
    images : (N, ...) e.g. MEIs (N, 1, H, W) or (N, H, W).
    filters : (N, ...) one filter per unit, or (N, K, ...) K filters spanning each unit's
        preferred inputs; the trailing size must equal that of ``images``.

    Returns
    -------
    (N,) float64 in [-1, 1] (in [0, 1] when K > 1).
    """
    images = np.asarray(images, np.float64)
    n = images.shape[0]
    x = images.reshape(n, -1)
    f = np.asarray(filters, np.float64)
    if f.shape[0] != n:
        raise ValueError(f"filters have {f.shape[0]} units, images {n} (expected one set of filters per image)")
    size = x.shape[1]
    single = f.size // n == size
    f = f.reshape(n, 1 if single else -1, size)
    if f.shape[2] != size:
        raise ValueError(f"filters of shape {filters.shape} do not match images of shape {images.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    f = f - f.mean(axis=2, keepdims=True)
    out = np.empty(n)
    for i in range(n):
        basis, _ = np.linalg.qr(f[i].T)  # (size, K) orthonormal span
        projection = basis.T @ x[i]
        out[i] = projection[0] * np.sign(basis[:, 0] @ f[i, 0]) if single else np.linalg.norm(projection)
    return out


def orientation_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of orientations (radians, period pi), in degrees in [0, 90]."""
    d = np.mod(np.asarray(a, np.float64) - np.asarray(b, np.float64), np.pi)
    return np.degrees(np.minimum(d, np.pi - d))
