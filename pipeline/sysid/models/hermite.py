"""A steerable basis of 2-d Hermite-Gaussian functions, sampled at rotated grids."""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import hermite


def hermite_basis(kernel_size: int, order: int, rotations: int = 8, sigma: float | None = None) -> np.ndarray:
    """Hermite-Gaussian functions H_n(x/s) H_m(y/s) exp(-(x^2 + y^2) / 2s^2), n + m < ``order``.

    The span of the functions of each total degree n + m is closed under rotation, so a filter
    written in this basis can be rotated by any angle without leaving it; each rotated copy is
    the same functions evaluated at rotated coordinates. Rotations by multiples of 90 degrees
    map the (odd-sized, centred) grid onto itself, so those copies are exact rotations of the
    sampled filter.

    Parameters
    ----------
    kernel_size : odd filter size in pixels.
    order : number of degrees; ``order * (order + 1) / 2`` functions.
    rotations : number of equally spaced angles 2 pi r / rotations.
    sigma : Gaussian width in pixels (default: kernel_size / 5).

    Returns
    -------
    (rotations, n_functions, kernel_size, kernel_size) float32; each unrotated function has
    unit L2 norm, and its rotated copies share that scale.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size = {kernel_size} (expected an odd positive number of pixels)")
    if order < 1:
        raise ValueError(f"order = {order} (expected at least 1)")
    if rotations < 1:
        raise ValueError(f"rotations = {rotations} (expected at least 1)")
    sigma = float(sigma if sigma is not None else kernel_size / 5.0)
    half = (kernel_size - 1) / 2.0
    y, x = np.meshgrid(np.arange(kernel_size) - half, np.arange(kernel_size) - half, indexing="ij")
    degrees = [(n, d - n) for d in range(order) for n in range(d + 1)]
    out = np.zeros((rotations, len(degrees), kernel_size, kernel_size))
    for r in range(rotations):
        angle = 2.0 * math.pi * r / rotations
        c, s = math.cos(angle), math.sin(angle)
        # the filter rotated by +angle is the function evaluated at coordinates rotated by -angle
        xr = (c * x + s * y) / sigma
        yr = (-s * x + c * y) / sigma
        envelope = np.exp(-(xr**2 + yr**2) / 2.0)
        for k, (n, m) in enumerate(degrees):
            out[r, k] = hermite.hermval(xr, _unit(n)) * hermite.hermval(yr, _unit(m)) * envelope
    # exact zeros where cos/sin of multiples of 90 degrees are 1e-16 away
    out[np.abs(out) < 1e-12] = 0.0
    norms = np.sqrt((out[0] ** 2).sum(axis=(1, 2)))
    return (out / norms[None, :, None, None]).astype(np.float32)


def _unit(n: int) -> np.ndarray:
    coefficients = np.zeros(n + 1)
    coefficients[n] = 1.0
    return coefficients
