"""Cell traces: weighted mask fluorescence, neuropil subtraction from a surrounding annulus, dF/F."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def neuropil_masks(masks: np.ndarray, *, inner: int = 2, outer: int = 7) -> np.ndarray:
    """Annuli around each mask that avoid every cell, (cells, height, width) bool.

    An annulus is the mask dilated by ``outer`` pixels minus the mask dilated by ``inner``,
    less every cell's mask dilated by one pixel.
    """
    masks = np.asarray(masks, dtype=bool)
    cells = ndimage.binary_dilation(masks.any(0), iterations=1)
    out = np.zeros_like(masks)
    for i, m in enumerate(masks):
        ring = ndimage.binary_dilation(m, iterations=outer) & ~ndimage.binary_dilation(m, iterations=inner)
        out[i] = ring & ~cells
    return out


def baseline(traces: np.ndarray, fps: float, *, window: float = 60.0, smoothing: float = 0.5) -> np.ndarray:
    """Slow baseline of each trace: smoothed, then a running minimum and maximum (``window`` s).

    Parameters
    ----------
    traces
        (cells, frames) fluorescence.
    fps
        Frame rate (Hz).
    window
        Window of the running minimum / maximum (seconds).
    smoothing
        Gaussian smoothing before the minimum (seconds), so that noise does not pull it down.

    Returns
    -------
    numpy.ndarray
        (cells, frames) baseline, same unit as ``traces``.
    """
    size = max(1, int(round(window * fps)))
    smooth = ndimage.gaussian_filter1d(traces.astype(np.float64), max(smoothing * fps, 1e-3), axis=1, mode="nearest")
    low = ndimage.minimum_filter1d(smooth, size, axis=1, mode="nearest")
    return ndimage.maximum_filter1d(low, size, axis=1, mode="nearest")


def delta_f_over_f(fluorescence: np.ndarray, fps: float, *, window: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """``(dff, baseline)``, both (cells, frames), of fluorescence traces (cells, frames).

    dF/F is taken against the running ``baseline``; a baseline near zero is floored at 1e-3 of
    the largest fluorescence, so that a trace hovering around 0 does not divide by ~0.
    """
    base = baseline(fluorescence, fps, window=window)
    floor = np.maximum(np.abs(base), 1e-3 * max(float(np.abs(fluorescence).max(initial=0.0)), 1e-6))
    return (fluorescence - base) / floor, base


def extract_traces(
    source,
    weights: np.ndarray,
    fps: float,
    *,
    neuropil_ratio: float = 0.7,
    neuropil_inner: int = 2,
    neuropil_outer: int = 7,
    baseline_window: float = 60.0,
) -> dict[str, np.ndarray]:
    """Fluorescence and dF/F of every cell.

    Parameters
    ----------
    source
        The movie, (frames, height, width), or a denoised movie as an object with
        ``project(weights) -> (n, frames)`` (``pipeline.imaging.pmd.PMDResult``), which is
        then never reconstructed.
    weights
        (cells, height, width) non-negative spatial weights (0 outside each mask).
    fps
        Frame rate (Hz).
    neuropil_ratio
        Fraction of the neuropil trace subtracted from each cell's trace.
    neuropil_inner, neuropil_outer
        The neuropil annulus, in pixels from the mask (see ``neuropil_masks``).
    baseline_window
        Window of the running baseline (seconds) for dF/F.

    Returns
    -------
    dict
        ``raw`` (cells, frames) weighted mean in the mask, ``neuropil`` (cells, frames),
        ``fluorescence`` (cells, frames) = raw - ratio * neuropil, ``baseline`` and ``dff``
        = (fluorescence - baseline) / baseline, all float32.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3:
        raise ValueError(f"weights have shape {weights.shape} (expected (cells, height, width))")
    n = weights.shape[0]
    norm = weights.sum(axis=(1, 2))
    if n and (norm <= 0).any():
        bad = int(np.argmax(norm <= 0))
        raise ValueError(f"cell {bad} has an empty mask (expected positive weights)")
    rings = neuropil_masks(weights > 0, inner=neuropil_inner, outer=neuropil_outer).astype(np.float32)
    ring_norm = rings.sum(axis=(1, 2))
    empty = ring_norm == 0
    rings[empty] = 0.0  # a cell with no free surround gets no neuropil correction
    stacked = np.concatenate(
        [weights / np.maximum(norm, 1e-12)[:, None, None], rings / np.maximum(ring_norm, 1)[:, None, None]]
    )
    if hasattr(source, "project"):
        both = source.project(stacked)
    else:
        movie = source
        if movie.ndim != 3 or movie.shape[1:] != weights.shape[1:]:
            raise ValueError(
                f"movie has shape {movie.shape} (expected (frames, {weights.shape[1]}, {weights.shape[2]}))"
            )
        flat = stacked.reshape(2 * n, -1)
        both = np.empty((2 * n, movie.shape[0]), dtype=np.float32)
        for start in range(0, movie.shape[0], 256):
            chunk = np.asarray(movie[start : start + 256], dtype=np.float32).reshape(-1, flat.shape[1])
            both[:, start : start + 256] = flat @ chunk.T
    raw, neuropil = both[:n], both[n:]
    fluorescence = raw - neuropil_ratio * neuropil
    dff, base = delta_f_over_f(fluorescence, fps, window=baseline_window)
    return {
        "raw": raw.astype(np.float32),
        "neuropil": neuropil.astype(np.float32),
        "fluorescence": fluorescence.astype(np.float32),
        "baseline": base.astype(np.float32),
        "dff": dff.astype(np.float32),
    }
