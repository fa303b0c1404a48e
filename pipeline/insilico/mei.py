"""Most exciting inputs: gradient ascent on the input of a model under an L2 norm constraint."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .model import ResponseFn


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) with a separable Gaussian of ``sigma`` pixels (reflect borders)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    pad = (radius, radius, radius, radius)
    x = F.pad(x, pad, mode="reflect" if min(x.shape[-2:]) > radius else "replicate")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _project(x: torch.Tensor, norm: float) -> torch.Tensor:
    """Each image centred (zero mean) and scaled onto the L2 sphere of radius ``norm``."""
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    lengths = x.flatten(1).norm(dim=1).clamp(min=1e-12)
    return x * (norm / lengths)[:, None, None, None]


def most_exciting_inputs(
    response_fn: ResponseFn,
    image_shape: tuple[int, int, int],
    units: list[int] | np.ndarray,
    *,
    norm: float,
    steps: int = 200,
    step_size: float = 0.1,
    blur_sigma: float = 0.5,
    batch: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the zero-mean image of L2 norm ``norm`` that maximizes its response.

    Projected gradient ascent (Walker et al. 2019; Bashivan et al. 2019): starting from seeded
    white noise, each step moves every image along its unit's normalized gradient (blurred
    by a Gaussian of ``blur_sigma`` pixels, which favours smooth images) and projects it back
    onto the zero-mean sphere ``||x|| = norm``. Images of several units are optimized
    together, each for its own unit.

    Parameters
    ----------
    response_fn : ``f(images (B, C, H, W)) -> (B, N)`` rates, differentiable.
    image_shape : (C, H, W) of the model's input.
    units : indices (columns of the rates) of the units to optimize for.
    norm : L2 norm of every MEI, in the model's input units.
    steps : gradient steps.
    step_size : step length as a fraction of ``norm``.
    blur_sigma : Gaussian blur of the gradient (pixels); 0 for none.
    batch : units optimized at once.
    seed : seed of the starting noise.

    Returns
    -------
    meis : (len(units), C, H, W) float32
    activations : (len(units),) float32, each unit's response to its MEI.

    Examples
    --------
    >>> w = torch.zeros(1, 1, 8, 8); w[0, 0, 2:6, 3] = 1.0
    >>> f = lambda x: torch.relu((x * w).flatten(1).sum(1, keepdim=True))
    >>> meis, act = most_exciting_inputs(f, (1, 8, 8), [0], norm=2.0, steps=50, blur_sigma=0)
    >>> float(act[0]) > 1.8
    True
    """
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    if norm <= 0 or steps < 1 or batch < 1:
        raise ValueError(f"most_exciting_inputs: norm={norm}, steps={steps}, batch={batch} (expected all > 0)")
    generator = torch.Generator().manual_seed(int(seed))
    meis, activations = [], []
    for start in range(0, len(units), batch):
        chunk = torch.as_tensor(units[start : start + batch])
        rows = torch.arange(len(chunk))
        x = _project(torch.randn(len(chunk), *image_shape, generator=generator), norm)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            response = response_fn(x)
            if response.ndim != 2 or int(chunk.max()) >= response.shape[1]:
                raise ValueError(
                    f"response_fn gave shape {tuple(response.shape)} (expected (B, N) with N > {int(chunk.max())})"
                )
            (grad,) = torch.autograd.grad(response[rows.to(response.device), chunk.to(response.device)].sum(), x)
            grad = _gaussian_blur(grad.detach().cpu().float(), blur_sigma)
            grad = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None, None]
            x = _project(x.detach().cpu() + step_size * norm * grad, norm)
        with torch.no_grad():
            response = response_fn(x)
            final = response[rows.to(response.device), chunk.to(response.device)]
        meis.append(x.numpy().astype(np.float32))
        activations.append(final.detach().cpu().numpy().astype(np.float32))
    return np.concatenate(meis), np.concatenate(activations)
