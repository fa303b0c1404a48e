"""Orientation and spatial-frequency tuning of model units from full-field gratings."""

from __future__ import annotations

import numpy as np
import torch

from .model import ResponseFn


def gratings(
    height: int,
    width: int,
    orientations: np.ndarray,
    frequencies: np.ndarray,
    phases: np.ndarray,
    amplitude: float = 1.0,
) -> np.ndarray:
    """Sinusoidal gratings ``amplitude * cos(2 pi f (cos(t) x + sin(t) y) + p)``.

    The orientation ``t`` is that of the wave vector in pixel coordinates (x along the width,
    y down the height), the convention of ``pipeline.simulation.neurons``.

    Parameters
    ----------
    height, width : image size (pixels).
    orientations : (O,) radians.
    frequencies : (S,) cycles per pixel.
    phases : (P,) radians.
    amplitude : peak value (the RMS contrast is amplitude / sqrt(2)).

    Returns
    -------
    (O, S, P, height, width) float32
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    t = np.asarray(orientations, np.float64)[:, None, None, None, None]
    f = np.asarray(frequencies, np.float64)[None, :, None, None, None]
    p = np.asarray(phases, np.float64)[None, None, :, None, None]
    across = np.cos(t) * xx + np.sin(t) * yy
    return (amplitude * np.cos(2 * np.pi * f * across + p)).astype(np.float32)


@torch.no_grad()
def tuning_curves(
    response_fn: ResponseFn,
    image_shape: tuple[int, int, int],
    orientations: np.ndarray,
    frequencies: np.ndarray,
    n_phases: int = 8,
    amplitude: float = 1.0,
    batch: int = 256,
) -> np.ndarray:
    """Mean response over ``n_phases`` grating phases, per unit, orientation and frequency.

    Parameters
    ----------
    response_fn : ``f(images (B, C, H, W)) -> (B, N)`` rates.
    image_shape : (C, H, W); every channel gets the same grating.
    orientations : (O,) radians; frequencies : (S,) cycles per pixel.
    n_phases : equally spaced phases averaged over (the F0 response).
    amplitude : grating amplitude in the model's input units.
    batch : images per forward pass.

    Returns
    -------
    (N, O, S) float32
    """
    c, h, w = image_shape
    phases = np.arange(n_phases) * 2 * np.pi / n_phases
    stimuli = gratings(h, w, orientations, frequencies, phases, amplitude)
    o, s, p = stimuli.shape[:3]
    flat = torch.from_numpy(stimuli.reshape(-1, 1, h, w)).expand(-1, c, -1, -1)
    out = torch.cat([response_fn(flat[i : i + batch]).detach().cpu() for i in range(0, len(flat), batch)])
    return out.reshape(o, s, p, -1).mean(dim=2).permute(2, 0, 1).numpy().astype(np.float32)


def preferred_orientation(curves: np.ndarray, orientations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Preferred orientation and orientation selectivity of (N, O) tuning curves.

    The vector average of the doubled angles, weighted by the response above its minimum:
    ``0.5 * angle(sum_o (R_o - min R) exp(2 i t_o))``, which interpolates between the sampled
    orientations.

    Returns
    -------
    preferred : (N,) radians in [0, pi)
    selectivity : (N,) in [0, 1], the length of that vector over the summed weights.
    """
    curves = np.asarray(curves, np.float64)
    weights = curves - curves.min(axis=1, keepdims=True)
    vector = (weights * np.exp(2j * np.asarray(orientations, np.float64))[None]).sum(axis=1)
    total = weights.sum(axis=1)
    preferred = np.mod(0.5 * np.angle(vector), np.pi)
    selectivity = np.where(total > 0, np.abs(vector) / np.maximum(total, 1e-300), 0.0)
    return preferred, selectivity
