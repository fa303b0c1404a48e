"""Receptive-field maps of model units by reverse correlation with white noise."""

from __future__ import annotations

import numpy as np
import torch

from .model import ResponseFn


@torch.no_grad()
def noise_receptive_fields(
    response_fn: ResponseFn,
    image_shape: tuple[int, int, int],
    *,
    n_images: int = 2000,
    contrast: float = 1.0,
    batch: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Response-weighted average of Gaussian white noise (the spike-triggered average).

    For a unit ``g(w . x)`` driven by white noise the average is proportional to ``w``
    (Bussgang's theorem), whatever the monotone output nonlinearity ``g``. Units with
    phase-invariant (complex) responses average to about zero.

    Parameters
    ----------
    response_fn : ``f(images (B, C, H, W)) -> (B, N)`` rates.
    image_shape : (C, H, W).
    n_images : noise images shown.
    contrast : standard deviation of every pixel, in the model's input units.
    batch : images per forward pass.
    seed : seed of the noise.

    Returns
    -------
    (N, C, H, W) float32: ``mean_i (r_i - mean r) x_i / contrast**2``.
    """
    if n_images < 2:
        raise ValueError(f"noise_receptive_fields: n_images = {n_images} (expected at least 2)")
    generator = torch.Generator().manual_seed(int(seed))
    total, sum_r, sum_x = None, None, None
    for start in range(0, n_images, batch):
        x = torch.randn(min(batch, n_images - start), *image_shape, generator=generator) * contrast
        r = response_fn(x).detach().cpu().double()
        flat = x.flatten(1).double()
        weighted = r.t() @ flat  # (N, C*H*W)
        total = weighted if total is None else total + weighted
        sum_r = r.sum(0) if sum_r is None else sum_r + r.sum(0)
        sum_x = flat.sum(0) if sum_x is None else sum_x + flat.sum(0)
    sta = (total - sum_r[:, None] * sum_x[None, :] / n_images) / n_images / contrast**2
    return sta.reshape(-1, *image_shape).numpy().astype(np.float32)
