"""Stimulus sets for image classifiers: scikit-learn's bundled digits fitted to a model's input size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import identity


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 handwritten digits bundled with scikit-learn (no download).

    Returns
    -------
    images : (1797, 8, 8) float32 in [0, 1] (ink is 1)
    labels : (1797,) int64 in 0..9
    """
    from sklearn.datasets import load_digits as _load

    digits = _load()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def fit_to_frame(images: np.ndarray, height: int, width: int, *, fill: float = 0.0) -> np.ndarray:
    """Resize square images to ``height`` x ``height`` (bilinear) and centre them in a ``width`` frame.

    The part of the stimulus-set definition that makes a classifier's images fit a model of
    visual cortex: the digit fills the frame's height; extra width is padded with ``fill``
    (a wider frame) or cropped symmetrically (a narrower one).

    Parameters
    ----------
    images : (n, h, w) float array
    height, width : size of the frame (pixels)
    fill : value of the padding

    Returns
    -------
    (n, height, width) float32
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images have shape {images.shape} (expected (n, height, width))")
    if height < 1 or width < 1:
        raise ValueError(f"frame {height}x{width} (expected at least 1x1 pixels)")
    resized = F.interpolate(
        torch.from_numpy(images)[:, None], size=(height, height), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    out = np.full((len(images), height, width), fill, dtype=np.float32)
    if width >= height:
        left = (width - height) // 2
        out[:, :, left : left + height] = resized
    else:
        left = (height - width) // 2
        out[:] = resized[:, :, left : left + width]
    return out


@identity.register("stimulus_set", "digits")
def digits_stimuli(*, height: int = 16, width: int = 16, n_images: int = 0) -> dict[str, np.ndarray]:
    """The digits stimulus set: scikit-learn's digits fitted to ``height`` x ``width``.

    Parameters
    ----------
    height, width : input size of the model of visual cortex that will see the images
    n_images : the first ``n_images`` digits (0: all 1797)

    Returns
    -------
    dict with ``images`` (n, 1, height, width) float32 in [0, 1] and ``labels`` (n,) int64
    """
    images, labels = load_digits()
    if n_images < 0 or n_images > len(images):
        raise ValueError(f"n_images = {n_images} (expected 0 for all, or 1..{len(images)})")
    if n_images:
        images, labels = images[:n_images], labels[:n_images]
    return {"images": fit_to_frame(images, height, width)[:, None], "labels": labels}
