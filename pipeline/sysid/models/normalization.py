"""Normalization layers of the cores: batch, layer and divisive normalization (Ren et al. 2017).

Ren et al.'s unified view writes all three as ``y = (x - mean_A(x)) / sqrt(sigma^2 + var_B(x))``
with different summation fields: over the batch (batch norm), over the channels and the
image of one sample (layer norm), or over a local, learned pool of channels and positions
(divisive normalization, Heeger 1992; Burg et al. 2021 as a model of V1).
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

NORMS = ("batch", "layer", "divisive")


class DivisiveNormalization(nn.Module):
    """``y_c = x_c / (sigma_c^2 + sum_{c', d} w_{c c' d} x_{c'}(p + d)^2)^q_c + b_c``, w >= 0.

    Each channel is divided by a learned, non-negative weighting of the squared activity (the
    energy) of every channel in a ``pool_kernel`` x ``pool_kernel`` neighbourhood, raised to a
    learned exponent ``q_c`` in (0, 1) (0.5 at first); sigma_c > 0 is a learned
    semi-saturation constant and b_c a learned bias (0 at first; it sets the threshold of the
    nonlinearity that follows, as batch norm's bias does). With q = 0.5 and sigma -> 0 scaling
    the input by a > 0 does not change the output (contrast invariance); for large sigma the
    layer is linear; with q -> 1 it is Heeger's ``x / (sigma^2 + energy)``. Learning the
    exponent follows Burg et al. 2021, who learn the exponent of their normalization.

    Parameters
    ----------
    channels : number of channels C.
    pool_kernel : odd size of the spatial pool (pixels).
    sigma : initial semi-saturation constant.
    pooled : False: no pool (w = 0), so each channel is only scaled by its learned
        ``1 / sigma_c^(2 q_c)`` and shifted by ``b_c``; the same parameters but the pool's, as a
        control that tells the pool's contribution from the layer's extra channels.

    Input (B, C, H, W) -> output (B, C, H, W).

    References
    ----------
    Heeger, D. J. (1992). Normalization of cell responses in cat striate cortex. Visual
    Neuroscience 9, 181-197. doi:10.1017/S0952523800009640
    Ren, M., Liao, R., Urtasun, R., Sinz, F. H., Zemel, R. S. (2017). Normalizing the
    normalizers: comparing and extending network normalization schemes. ICLR.
    Burg, M. F., Cadena, S. A., Denfield, G. H., Walker, E. Y., Tolias, A. S., Bethge, M.,
    Ecker, A. S. (2021). Learning divisive normalization in primary visual cortex. PLoS Comput
    Biol 17, e1009028. doi:10.1371/journal.pcbi.1009028

    Examples
    --------
    >>> layer = DivisiveNormalization(4, pool_kernel=3, sigma=1e-6)
    >>> x = torch.randn(2, 4, 8, 8)
    >>> bool(torch.allclose(layer(10 * x), layer(x), atol=1e-4))
    True
    """

    def __init__(self, channels: int, pool_kernel: int = 5, sigma: float = 1.0, pooled: bool = True):
        super().__init__()
        if pool_kernel < 1 or pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel = {pool_kernel} (expected an odd positive number of pixels)")
        if sigma <= 0:
            raise ValueError(f"sigma = {sigma} (expected > 0)")
        self.pool_kernel = pool_kernel
        self.pooled = pooled
        # w = softplus(theta): starts near a uniform pool of total weight 1 per channel
        start = torch.log(torch.expm1(torch.tensor(1.0 / (channels * pool_kernel**2))))
        logits = start + 0.01 * torch.randn(channels, channels, pool_kernel, pool_kernel)
        self.pool_logits = nn.Parameter(logits) if pooled else None
        # log scale: a channel can move its sigma by orders of magnitude, i.e. switch itself
        # from contrast-invariant (sigma << pool) to unnormalized (sigma >> pool)
        self.log_sigma = nn.Parameter(torch.full((channels,), math.log(sigma)))
        # q = sigmoid(logit): 0.5 at first
        self.exponent_logit = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def pool_weights(self) -> torch.Tensor:
        """(C, C, k, k) non-negative pool weights."""
        return F.softplus(self.pool_logits)

    def exponent(self) -> torch.Tensor:
        """(C,) exponents q of the denominators, in (0, 1)."""
        return torch.sigmoid(self.exponent_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.conv2d(x.pow(2), self.pool_weights(), padding=self.pool_kernel // 2) if self.pooled else 0.0
        sigma2 = (2.0 * self.log_sigma).exp()[None, :, None, None]
        q = self.exponent()[None, :, None, None]
        return x / (sigma2 + pool + 1e-12).pow(q) + self.bias[None, :, None, None]


def make_norm(kind: str, channels: int, *, momentum: float = 0.1, pool_kernel: int = 5) -> nn.Module:
    """The normalization layer ``kind`` ("batch" | "layer" | "divisive") for ``channels`` maps.

    "batch" is ``BatchNorm2d``; "layer" normalizes each sample over channels and positions
    (``GroupNorm`` with one group, with a per-channel gain and bias); "divisive" is
    ``DivisiveNormalization`` with a ``pool_kernel`` pool.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=momentum)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "divisive":
        return DivisiveNormalization(channels, pool_kernel)
    raise ValueError(f"norm = {kind!r} (expected one of {list(NORMS)})")
