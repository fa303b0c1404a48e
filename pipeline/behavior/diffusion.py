"""A denoising diffusion model over short 3D pose sequences, guided by 2D keypoints at sampling (Platypose-style).

The model learns motion alone, from 3D sequences without any 2D input (zero-shot: the camera
and the detector never enter training). At sampling, each reverse step is nudged down the
gradient of the weak-perspective reprojection error of its current estimate of the clean
sequence (as in diffusion posterior sampling), so that the samples agree with the 2D
keypoints while the learned motion prior keeps them temporally consistent. A window of one
frame is the per-frame model the sequences are compared with.

References
----------
.. [1] Pierzchlewicz, P. A., da Silva, C. O., Cotton, R. J., Sinz, F. H. (2024). Platypose:
   Calibrated zero-shot multi-hypothesis 3D human motion estimation. arXiv:2403.06164.
   https://doi.org/10.48550/arXiv.2403.06164
.. [2] Ho, J., Jain, A., Abbeel, P. (2020). Denoising diffusion probabilistic models. NeurIPS.
   arXiv:2006.11239. https://doi.org/10.48550/arXiv.2006.11239
.. [3] Chung, H., Kim, J., Mccann, M. T., Klasky, M. L., Ye, J. C. (2023). Diffusion posterior
   sampling for general noisy inverse problems. ICLR. https://doi.org/10.48550/arXiv.2209.14687
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def cosine_schedule(steps: int) -> torch.Tensor:
    """``(steps,)`` cumulative signal fractions alpha-bar of the cosine schedule (Nichol & Dhariwal 2021)."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    alpha_bar = (f / f[0])[1:]
    return alpha_bar.clamp(1e-5, 1.0).float()


class TemporalBlock(nn.Module):
    """A residual block of two temporal convolutions, with the diffusion step added in between."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.step = nn.Linear(channels, channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x)) + self.step(embedding)[..., None]
        return x + self.conv2(self.act(h))


class MotionDenoiser(nn.Module):
    """Predicts the noise of ``(batch, frames, dim)`` noisy sequences at diffusion step ``t``.

    Parameters
    ----------
    dim
        Pose coordinates per frame.
    channels, blocks, kernel
        Width, depth and temporal kernel size of the convolutional network; with ``frames=1``
        it is a per-frame network (the convolutions see only the centre tap).
    steps
        Number of diffusion steps.
    """

    def __init__(self, dim: int, *, channels: int = 128, blocks: int = 4, kernel: int = 5, steps: int = 100):
        super().__init__()
        self.input = nn.Conv1d(dim, channels, 1)
        self.blocks = nn.ModuleList(TemporalBlock(channels, kernel) for _ in range(blocks))
        self.output = nn.Conv1d(channels, dim, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.embed = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.channels, self.dim, self.steps = channels, dim, steps
        self.register_buffer("alpha_bar", cosine_schedule(steps))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def set_standardization(self, offset: torch.Tensor, scale: torch.Tensor) -> None:
        self.offset.copy_(offset)
        self.scale.copy_(scale)

    def _step_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.channels // 2
        frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * frequencies
        return self.embed(torch.cat([torch.sin(angles), torch.cos(angles)], -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        embedding = self._step_embedding(t)
        h = self.input(x.transpose(1, 2))
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h).transpose(1, 2)

    def loss(self, sequences: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction loss (DDPM) of clean sequences ``(batch, frames, dim)`` in data units."""
        x0 = (sequences - self.offset) / self.scale
        t = torch.randint(0, self.steps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        a = self.alpha_bar[t][:, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return ((self(xt, t) - noise) ** 2).mean()

    def sample(
        self,
        n: int,
        frames: int,
        *,
        guidance: Callable[[torch.Tensor], torch.Tensor] | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(n, frames, dim)`` sequences in data units by ancestral DDPM sampling.

        Parameters
        ----------
        guidance
            A function of clean sequences ``(n, frames, dim)`` in data units returning a
            ``(n,)`` energy (e.g. a reprojection error); its gradient through the model's
            estimate of the clean sequence steers every step.
        guidance_scale
            Step size of the guidance, relative to the gradient's norm per sample.
        """
        device = self.alpha_bar.device
        x = torch.randn(n, frames, self.dim, generator=generator).to(device)
        for step in reversed(range(self.steps)):
            t = torch.full((n,), step, device=device, dtype=torch.long)
            a = self.alpha_bar[step]
            a_prev = self.alpha_bar[step - 1] if step > 0 else torch.tensor(1.0, device=device)
            beta = 1 - a / a_prev
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(guidance is not None)
                eps = self(x_in, t)
                x0 = (x_in - (1 - a).sqrt() * eps) / a.sqrt()
                gradient = None
                if guidance is not None:
                    energy = guidance(x0 * self.scale + self.offset)
                    (gradient,) = torch.autograd.grad(energy.sum(), x_in)
            x0, eps = x0.detach().clamp(-6, 6), eps.detach()
            # the posterior mean of the previous step given x_t and the estimate x0
            mean = (a_prev.sqrt() * beta / (1 - a)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a)) * x
            if gradient is not None:
                # DPS: a step along the gradient, normalized per sample by the energy's square root
                norm = energy.detach().clamp_min(1e-8).sqrt()[:, None, None]
                mean = mean - guidance_scale * gradient / norm
            if step > 0:
                variance = beta * (1 - a_prev) / (1 - a)
                x = mean + variance.sqrt() * torch.randn(x.shape, generator=generator).to(device)
            else:
                x = mean
        return (x * self.scale + self.offset).detach()
