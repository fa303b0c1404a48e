"""Experiment builders (kind ``"insilico"``): ``fn(response_fn, image_shape, n_units, seed, *, ...config) -> arrays``.

Each returns a dict of numpy arrays with units on the first axis where there is one; the
in-silico tables store them as they are. Stimulus strengths are in the model's input units
(standard deviations of the normalized images).
"""

from __future__ import annotations

import numpy as np

from pipeline import identity

from .mei import most_exciting_inputs
from .model import ResponseFn
from .receptive_field import noise_receptive_fields
from .tuning import preferred_orientation, tuning_curves


@identity.register("insilico", "mei")
def mei_experiment(
    response_fn: ResponseFn,
    image_shape: tuple,
    n_units: int,
    seed: int,
    *,
    contrast: float = 0.5,
    steps: int = 200,
    step_size: float = 0.1,
    blur_sigma: float = 0.5,
    batch: int = 32,
) -> dict[str, np.ndarray]:
    """Most exciting inputs of every unit at RMS ``contrast`` (``most_exciting_inputs``).

    Returns ``{"meis": (N, C, H, W), "activations": (N,)}``.
    """
    c, h, w = image_shape
    norm = contrast * float(np.sqrt(c * h * w))
    meis, activations = most_exciting_inputs(
        response_fn,
        tuple(image_shape),
        np.arange(n_units),
        norm=norm,
        steps=steps,
        step_size=step_size,
        blur_sigma=blur_sigma,
        batch=batch,
        seed=seed,
    )
    return {"meis": meis, "activations": activations}


@identity.register("insilico", "noise_rf")
def receptive_field_experiment(
    response_fn: ResponseFn,
    image_shape: tuple,
    n_units: int,
    seed: int,
    *,
    n_images: int = 2000,
    contrast: float = 1.0,
    batch: int = 256,
) -> dict[str, np.ndarray]:
    """White-noise receptive fields of every unit (``noise_receptive_fields``).

    Returns ``{"maps": (N, C, H, W)}``.
    """
    maps = noise_receptive_fields(
        response_fn, tuple(image_shape), n_images=n_images, contrast=contrast, batch=batch, seed=seed
    )
    if maps.shape[0] != n_units:
        raise ValueError(f"noise_rf: the model gave {maps.shape[0]} units (expected {n_units})")
    return {"maps": maps}


@identity.register("insilico", "gratings")
def grating_tuning_experiment(
    response_fn: ResponseFn,
    image_shape: tuple,
    n_units: int,
    seed: int,
    *,
    n_orientations: int = 16,
    frequencies: list[float] = (0.04, 0.06, 0.09, 0.13, 0.19, 0.27, 0.38),  # type: ignore[assignment]
    n_phases: int = 8,
    amplitude: float = 1.0,
) -> dict[str, np.ndarray]:
    """Orientation x spatial-frequency tuning from full-field gratings (``tuning_curves``).

    The preferred orientation is read at each unit's preferred frequency (the one whose best
    orientation gives the largest response).

    Returns ``{"curves": (N, O, S), "orientations": (O,) radians, "frequencies": (S,) cycles
    per pixel, "preferred_orientation": (N,) radians, "preferred_frequency": (N,),
    "selectivity": (N,)}``.
    """
    if n_orientations < 2 or not frequencies:
        raise ValueError(
            f"gratings: n_orientations={n_orientations}, frequencies={frequencies} "
            "(expected at least 2 orientations and one frequency)"
        )
    orientations = np.arange(n_orientations) * np.pi / n_orientations
    frequencies = np.asarray(frequencies, np.float64)
    curves = tuning_curves(response_fn, tuple(image_shape), orientations, frequencies, n_phases, amplitude)
    if curves.shape[0] != n_units:
        raise ValueError(f"gratings: the model gave {curves.shape[0]} units (expected {n_units})")
    best = curves.max(axis=1).argmax(axis=1)  # (N,) preferred frequency index
    at_best = curves[np.arange(len(best)), :, best]  # (N, O)
    preferred, selectivity = preferred_orientation(at_best, orientations)
    return {
        "curves": curves,
        "orientations": orientations,
        "frequencies": frequencies,
        "preferred_orientation": preferred,
        "preferred_frequency": frequencies[best],
        "selectivity": selectivity,
    }
