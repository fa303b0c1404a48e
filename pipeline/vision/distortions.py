"""Image distortions at a strength (0 is the identity) and out-of-domain spatial transforms.

All functions take and return (n, channels, height, width) float32 arrays with values in
[0, 1]; random ones are deterministic given ``seed``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def gaussian_noise(images: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Add Gaussian noise of standard deviation ``strength``, clipped to [0, 1]."""
    noise = np.random.default_rng(seed).standard_normal(images.shape).astype(np.float32)
    return np.clip(images + strength * noise, 0.0, 1.0).astype(np.float32)


def gaussian_blur(images: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Blur each image with a Gaussian of standard deviation ``strength`` pixels."""
    if strength == 0:
        return images.astype(np.float32, copy=True)
    return ndimage.gaussian_filter(images, sigma=(0, 0, strength, strength), mode="nearest").astype(np.float32)


def contrast(images: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Reduce contrast by ``strength`` in [0, 1]: x -> m + (1 - strength) (x - m), m each image's mean."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"contrast strength = {strength} (expected 0..1)")
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return (mean + (1.0 - strength) * (images - mean)).astype(np.float32)


def salt_and_pepper(images: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """Set a fraction ``strength`` of pixels to 0 or 1 (half each, at random)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"salt-and-pepper strength = {strength} (expected a fraction 0..1)")
    rng = np.random.default_rng(seed)
    out = images.astype(np.float32, copy=True)
    hit = rng.random(images.shape) < strength
    out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)
    return out


DISTORTIONS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "blur": gaussian_blur,
    "contrast": contrast,
    "salt_and_pepper": salt_and_pepper,
}

# the strengths every robustness score and the benchmark use (three per distortion)
STRENGTHS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.1, 0.2, 0.4),
    "blur": (0.5, 1.0, 1.5),
    "contrast": (0.5, 0.7, 0.9),
    "salt_and_pepper": (0.05, 0.1, 0.2),
}


def distort(images: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """Apply the distortion ``kind`` (a key of ``DISTORTIONS``) at ``strength``.

    Parameters
    ----------
    images : (n, channels, height, width) float in [0, 1]
    kind : "gaussian_noise", "blur", "contrast" or "salt_and_pepper"
    strength : noise std, blur sigma (pixels), contrast reduction or pixel fraction; 0 is the identity
    seed : seeds the random distortions

    Examples
    --------
    >>> x = np.full((1, 1, 4, 4), 0.5, np.float32)
    >>> bool(np.array_equal(distort(x, "gaussian_noise", 0.0), x))
    True
    """
    if kind not in DISTORTIONS:
        raise ValueError(f"distortion {kind!r} (expected one of {sorted(DISTORTIONS)})")
    if strength < 0:
        raise ValueError(f"{kind} strength = {strength} (expected >= 0)")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images have shape {images.shape} (expected (n, channels, height, width))")
    if strength == 0:  # exactly: contrast's m + (x - m) would round
        return images.copy()
    return DISTORTIONS[kind](images, float(strength), seed)


def affine_transform(
    images: np.ndarray, *, rotation: float = 0.0, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
) -> np.ndarray:
    """Rotate (degrees), shift (fractions of the half-width, half-height) and scale images about their centre.

    Used for the out-of-domain test sets of distillation; pixels from outside the frame are 0.

    Returns
    -------
    (n, channels, height, width) float32
    """
    angle = np.deg2rad(rotation)
    # affine_grid maps output to input coordinates: the inverse of the wanted transform
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.tensor([[cos, sin, -shift[0]], [-sin, cos, -shift[1]]], dtype=torch.float32)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros").numpy()


# the out-of-domain test sets of distillation: name -> affine_transform keywords
OUT_OF_DOMAIN: dict[str, dict] = {
    "rotated_30": {"rotation": 30.0},
    "shifted_25": {"shift": (0.25, 0.15)},
    "scaled_70": {"scale": 0.7},
}
