"""Rigid motion correction: phase correlation of every frame against a template (scikit-image)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from pipeline.imaging.frames import FrameSource, as_source


def _iter(movie: np.ndarray | FrameSource | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    if isinstance(movie, FrameSource):
        return movie.frames()
    return (movie[t] for t in range(len(movie))) if isinstance(movie, np.ndarray) else movie


def make_template(
    movie: np.ndarray | FrameSource, *, n_frames: int = 200, upsample_factor: int = 2, iterations: int = 2
) -> np.ndarray:
    """A motion-free reference image, ``(height, width)`` float32.

    The mean of ``n_frames`` frames taken evenly through the movie, refined ``iterations``
    times by registering those frames to the current mean and averaging again.

    Parameters
    ----------
    movie
        (frames, height, width) array or :class:`~pipeline.imaging.frames.FrameSource`:
        only the chosen frames are read (in one pass over a file).
    """
    nframes = len(movie)
    if nframes == 0:
        raise ValueError("movie has 0 frames (expected at least 1)")
    index = np.unique(np.linspace(0, nframes - 1, min(n_frames, nframes)).round().astype(int))
    frames = as_source(movie).take(index)
    template = frames.mean(0)
    for _ in range(iterations):
        shifts = [
            phase_cross_correlation(template, f, upsample_factor=upsample_factor, normalization=None)[0] for f in frames
        ]
        template = np.mean([apply_shift(f, s) for f, s in zip(frames, shifts)], axis=0)
    return template.astype(np.float32)


def estimate_shifts(
    movie: np.ndarray | FrameSource | Iterable[np.ndarray],
    template: np.ndarray,
    *,
    max_shift: float = 10.0,
    upsample_factor: int = 2,
) -> np.ndarray:
    """Rigid shift of each frame that registers it to ``template``.

    Parameters
    ----------
    movie
        (frames, height, width) array, a :class:`~pipeline.imaging.frames.FrameSource` or an
        iterable of (height, width) frames (the last two are streamed).
    template
        (height, width) reference image.
    max_shift
        Largest believable shift (pixels); larger estimates are clipped to it.
    upsample_factor
        Sub-pixel precision: 1 / upsample_factor pixels.

    Returns
    -------
    numpy.ndarray
        (frames, 2) float32 (y, x) shifts in pixels, to be applied with :func:`apply_shift`.
    """
    out = []
    for frame in _iter(movie):
        shift = phase_cross_correlation(
            template, np.asarray(frame, dtype=np.float32), upsample_factor=upsample_factor, normalization=None
        )[0]
        out.append(np.clip(shift, -max_shift, max_shift))
    if not out:
        raise ValueError("movie has 0 frames (expected at least 1)")
    return np.asarray(out, dtype=np.float32)


def apply_shift(frame: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``frame`` (height, width) moved by ``shift`` (y, x) pixels; border pixels repeat the edge."""
    shift = np.asarray(shift, dtype=np.float64)
    if np.all(shift == np.round(shift)):  # integer shifts: exact, no interpolation
        return ndimage.shift(np.asarray(frame, dtype=np.float32), shift, order=0, mode="nearest")
    return ndimage.shift(np.asarray(frame, dtype=np.float32), shift, order=1, mode="nearest")


def correct(movie: np.ndarray | Iterable[np.ndarray], shifts: np.ndarray) -> np.ndarray:
    """The motion-corrected movie, (frames, height, width) float32."""
    frames = [apply_shift(f, s) for f, s in zip(_iter(movie), shifts)]
    if len(frames) != len(shifts):
        raise ValueError(f"movie has {len(frames)} frames but {len(shifts)} shifts were given (expected equal)")
    return np.stack(frames)


def motion_correction(
    movie: np.ndarray | FrameSource,
    *,
    template_frames: int = 200,
    max_shift: float = 10.0,
    upsample_factor: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Template and per-frame shifts of a movie: ``(template (H, W), shifts (frames, 2))``.

    The shifts are taken relative to their median, so that the reference is the position the
    field of view holds most of the time and most frames need no interpolation (integer
    shifts are applied exactly); the template is moved to match.

    A :class:`~pipeline.imaging.frames.FrameSource` is read twice, frame by frame: once for
    the ``template_frames`` frames of the template, once for the shifts; memory holds the
    template's frames, never the movie.
    """
    template = make_template(movie, n_frames=template_frames, upsample_factor=upsample_factor)
    shifts = estimate_shifts(movie, template, max_shift=max_shift, upsample_factor=upsample_factor)
    centre = np.median(shifts, axis=0)
    shifts = (np.round((shifts - centre) * upsample_factor) / upsample_factor).astype(np.float32)
    return apply_shift(template, -centre), shifts
