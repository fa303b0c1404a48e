"""A conditional normalizing flow over 3D poses given 2D keypoints (cGNF-style), with its marginal.

Affine coupling layers (RealNVP) map a pose to a standard normal; each layer's conditioner
sees half of the pose coordinates and the condition (normalized 2D keypoints and their
confidences) plus a flag saying whether the condition is present. Training drops the condition
for a fraction of the samples (flag 0, condition zeroed), so that one set of weights gives both
the conditional density p(pose | keypoints) and the marginal p(pose), as in cGNF. The
conditioners here are MLPs over all coordinates; cGNF's graph conditioners restrict the same
idea to the skeleton's neighbourhoods.

References
----------
.. [1] Pierzchlewicz, P. A., Cotton, R. J., Bashiri, M., Sinz, F. H. (2022). Multi-hypothesis
   3D human pose estimation metrics favor miscalibrated distributions. arXiv:2210.11179.
   https://doi.org/10.48550/arXiv.2210.11179
.. [2] Dinh, L., Sohl-Dickstein, J., Bengio, S. (2017). Density estimation using Real NVP.
   ICLR. arXiv:1605.08803. https://doi.org/10.48550/arXiv.1605.08803
"""

from __future__ import annotations

import math

import torch
from torch import nn

# log-scales of a coupling are bounded (tanh) so that an untrained layer cannot blow up samples
MAX_LOG_SCALE = 2.0


def mlp(inputs: int, outputs: int, hidden: int, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden`` units (SiLU); the last layer starts at zero."""
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, outputs)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # every coupling starts as the identity
    return nn.Sequential(*layers, last)


class ConditionalCoupling(nn.Module):
    """One affine coupling: the coordinates outside ``mask`` are scaled and shifted by a function
    of the coordinates inside it and of the condition."""

    def __init__(self, mask: torch.Tensor, condition_dim: int, hidden: int, depth: int = 2):
        super().__init__()
        self.register_buffer("mask", mask.float())
        dim = mask.numel()
        self.net = mlp(dim + condition_dim + 1, 2 * dim, hidden, depth)

    def _scale_shift(self, kept: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(torch.cat([kept, context], -1)).chunk(2, -1)
        free = 1 - self.mask
        return MAX_LOG_SCALE * torch.tanh(log_scale / MAX_LOG_SCALE) * free, shift * free

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose side to noise side: ``(z, log|det dz/dx|)``."""
        log_scale, shift = self._scale_shift(x * self.mask, context)
        return x * torch.exp(log_scale) + shift, log_scale.sum(-1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self._scale_shift(z * self.mask, context)
        return (z - shift) * torch.exp(-log_scale)


class ConditionalFlow(nn.Module):
    """A density over ``dim``-vectors conditioned on ``condition_dim``-vectors, or unconditioned.

    Parameters
    ----------
    dim
        Dimension of the modelled vector (at least 2), e.g. 3 x (joints - 1) pose coordinates.
    condition_dim
        Dimension of the condition, e.g. 3 x joints (2D keypoints and confidences).
    layers
        Number of coupling layers.
    hidden
        Width of each conditioner.
    seed
        Seed of the random split of coordinates in each layer.
    """

    def __init__(
        self,
        dim: int,
        condition_dim: int,
        *,
        layers: int = 8,
        hidden: int = 128,
        depth: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim={dim} (expected at least 2: a coupling needs coordinates on both sides)")
        generator = torch.Generator().manual_seed(seed)
        couplings = []
        for i in range(layers):
            if i % 2 == 0:
                order = torch.randperm(dim, generator=generator)
                mask = torch.zeros(dim)
                mask[order[: dim // 2]] = 1
            else:
                mask = 1 - couplings[-1].mask  # every coordinate is transformed in every pair of layers
            couplings.append(ConditionalCoupling(mask, condition_dim, hidden, depth))
        self.couplings = nn.ModuleList(couplings)
        self.dim, self.condition_dim = dim, condition_dim
        # a fixed standardization of the data (set from training data), part of the density
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def set_standardization(self, offset: torch.Tensor, scale: torch.Tensor) -> None:
        self.offset.copy_(offset)
        self.scale.copy_(scale)

    def _context(self, condition: torch.Tensor | None, batch: int) -> torch.Tensor:
        if condition is None:
            return torch.zeros(batch, self.condition_dim + 1, device=self.offset.device)
        present = torch.ones(condition.shape[0], 1, device=condition.device)
        return torch.cat([condition, present], -1)

    def log_prob(
        self, x: torch.Tensor, condition: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch,)`` log density of ``x`` ``(batch, dim)`` given ``condition`` ``(batch, condition_dim)``.

        ``condition=None`` gives the marginal; ``drop`` ``(batch,)`` bool drops the condition of
        some samples (conditioning dropout in training).
        """
        context = self._context(condition, x.shape[0])
        if drop is not None:
            context = context * (~drop).float()[:, None]
        z = (x - self.offset) / self.scale
        total = -torch.log(self.scale).sum().expand(x.shape[0])
        for coupling in self.couplings:
            z, log_det = coupling(z, context)
            total = total + log_det
        base = -0.5 * (z**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return base + total

    def inverse(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Noise ``(batch, dim)`` to data: the inverse of the map in ``log_prob``."""
        context = self._context(condition, z.shape[0])
        for coupling in reversed(self.couplings):
            z = coupling.inverse(z, context)
        return z * self.scale + self.offset

    def forward_map(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Data ``(batch, dim)`` to noise (without the log determinant)."""
        context = self._context(condition, x.shape[0])
        z = (x - self.offset) / self.scale
        for coupling in self.couplings:
            z, _ = coupling(z, context)
        return z

    @torch.no_grad()
    def sample(
        self, n: int, condition: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(n, batch, dim)`` samples for each of the ``batch`` conditions (batch 1 if None)."""
        batch = 1 if condition is None else condition.shape[0]
        z = torch.randn(n * batch, self.dim, generator=generator).to(self.offset.device)
        repeated = None if condition is None else condition.repeat(n, 1)
        return self.inverse(z, repeated).reshape(n, batch, self.dim)
