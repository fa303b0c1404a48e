"""Resampling of traces and spike counts between frame rates, and filling of missing samples."""

from __future__ import annotations

import numpy as np


def rebin(values: np.ndarray, fps: float, rate: float, n_out: int, how: str) -> np.ndarray:
    """Resample a series of frames at ``fps`` Hz into ``n_out`` bins of ``1/rate`` s.

    Sample i covers ``[i/fps, (i+1)/fps)``; the integral of the piecewise-constant series
    is interpolated at the new bin edges, so ``how="mean"`` keeps averages (a trace) and
    ``how="sum"`` keeps totals (spike counts), for up- and down-sampling alike. Time past the
    end of ``values`` repeats its last frame.

    Returns ``(n_out,)`` float64.
    """
    values = np.asarray(values, dtype=np.float64)
    n_needed = int(np.ceil(n_out * fps / rate)) + 1
    if values.size < n_needed:
        values = np.concatenate([values, np.repeat(values[-1:], n_needed - values.size)])
    edges_in = np.arange(values.size + 1) / fps
    integral = np.concatenate([[0.0], np.cumsum(values)])  # sum up to each input edge
    edges_out = np.arange(n_out + 1) / rate
    totals = np.diff(np.interp(edges_out, edges_in, integral))
    return totals * (rate / fps) if how == "mean" else totals


def fill_gaps(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``trace`` with NaN samples linearly interpolated (edges: nearest), and the NaN mask."""
    trace = np.asarray(trace, dtype=np.float64)
    missing = np.isnan(trace)
    if missing.all():
        return np.zeros_like(trace), missing
    if missing.any():
        index = np.arange(trace.size)
        trace = trace.copy()
        trace[missing] = np.interp(index[missing], index[~missing], trace[~missing])
    return trace, missing


def to_100hz(series: np.ndarray, fps: float) -> np.ndarray:
    """Counts per frame at ``fps`` as counts per 10 ms bin (the spikefinder rate); NaN stays missing.

    A 100 Hz bin overlapping any missing frame is NaN.
    """
    if fps == 100.0:
        return series
    missing = np.isnan(series)
    n_out = int(series.size * 100.0 / fps)
    out = rebin(np.nan_to_num(series), fps, 100.0, n_out, "sum")
    out[rebin(missing.astype(float), fps, 100.0, n_out, "mean") > 0] = np.nan
    return out
