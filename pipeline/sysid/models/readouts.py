"""Readouts: a core's feature maps -> one response per neuron of one dataset.

A readout knows only the shape of the maps it reads, never which core made them.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .regularizers import laplace_smoothness


def _bias(n_neurons: int, mean_activity: torch.Tensor | None) -> nn.Parameter:
    if mean_activity is None:
        return nn.Parameter(torch.zeros(n_neurons))
    mean_activity = torch.as_tensor(mean_activity, dtype=torch.float32).reshape(-1)
    if mean_activity.shape != (n_neurons,):
        raise ValueError(f"mean_activity has shape {tuple(mean_activity.shape)} (expected ({n_neurons},))")
    # the encoder's output is elu(x) + 1; this x gives the mean rate at initialization
    target = mean_activity.clamp(min=1e-3)
    return nn.Parameter(torch.where(target >= 1, target - 1, torch.log(target)))


def _no_shift(name: str, shift: torch.Tensor | None) -> None:
    if shift is not None:
        raise ValueError(f"{name} has no receptive field position to shift (got a shift of shape {tuple(shift.shape)})")


class FactorizedReadout(nn.Module):
    """ "What x where" readout (Klindt et al. 2017): a spatial mask times feature weights.

    Neuron n's response is sum_{c,y,x} maps[c, y, x] * mask[n, y, x] * features[n, c] + bias[n].
    The penalty is the L1 norm of the full (mask x features) weights of every neuron, which
    makes both the location and the feature vector sparse.

    Parameters
    ----------
    in_shape : (channels, height, width) of the maps it reads.
    n_neurons : number of neurons.
    gamma_readout : weight of the sparsity penalty.
    mean_activity : (n_neurons,) mean responses, to initialize the bias.
    """

    def __init__(self, in_shape, n_neurons: int, gamma_readout: float = 1e-3, mean_activity=None):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        self.in_shape = (c, h, w)
        self.gamma_readout = gamma_readout
        self.mask = nn.Parameter(torch.randn(n_neurons, h * w) * 0.01 + 1.0 / (h * w))
        self.features = nn.Parameter(torch.randn(n_neurons, c) / c**0.5)
        self.bias = _bias(n_neurons, mean_activity)

    def forward(self, maps: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) maps -> (B, n_neurons)."""
        _no_shift("FactorizedReadout", shift)
        b, c, h, w = maps.shape
        if (c, h, w) != self.in_shape:
            raise ValueError(f"FactorizedReadout reads maps of shape {self.in_shape}, got {(c, h, w)}")
        located = maps.reshape(b, c, h * w) @ self.mask.t()  # (B, C, N)
        return (located * self.features.t()).sum(dim=1) + self.bias

    def regularizer(self) -> torch.Tensor:
        l1 = (self.mask.abs().sum(dim=1) * self.features.abs().sum(dim=1)).sum()
        return self.gamma_readout * l1


class GaussianReadout(nn.Module):
    """Gaussian readout (Lurz et al. 2021): each neuron reads the maps at one learned position.

    During training the position is drawn from a 2-d Gaussian N(mu_n, Sigma_n) per sample (its
    width shrinks as training goes); in evaluation it is the mean mu_n. A shift (B, 2) from a
    shifter moves every neuron's position by the same amount (eye movements). Positions are in
    the maps' normalized coordinates [-1, 1] (x, y).

    Parameters
    ----------
    in_shape : (channels, height, width).
    n_neurons : number of neurons.
    init_mu_range : initial positions uniform in [-init_mu_range, init_mu_range].
    init_sigma : initial standard deviation of the position.
    gamma_readout : weight of the L1 penalty on the feature weights.
    mean_activity : (n_neurons,) mean responses, to initialize the bias.
    """

    def __init__(
        self,
        in_shape,
        n_neurons: int,
        init_mu_range: float = 0.3,
        init_sigma: float = 0.1,
        gamma_readout: float = 1e-3,
        mean_activity=None,
    ):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        if not 0 < init_mu_range <= 1:
            raise ValueError(f"init_mu_range = {init_mu_range} (expected in (0, 1])")
        self.in_shape = (c, h, w)
        self.gamma_readout = gamma_readout
        self.mu = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-init_mu_range, init_mu_range))
        self.sigma = nn.Parameter(torch.eye(2).repeat(n_neurons, 1, 1) * init_sigma)  # (N, 2, 2)
        self.features = nn.Parameter(torch.full((c, n_neurons), 1.0 / c))
        self.bias = _bias(n_neurons, mean_activity)

    def positions(self, batch_size: int, sample: bool) -> torch.Tensor:
        """(B, N, 2) reading positions; drawn around mu when ``sample``."""
        mu = self.mu.clamp(-1, 1)
        if not sample:
            return mu.expand(batch_size, -1, -1)
        noise = torch.randn(batch_size, mu.shape[0], 2, device=mu.device, dtype=mu.dtype)
        return (mu + torch.einsum("nij,bnj->bni", self.sigma, noise)).clamp(-1, 1)

    def forward(
        self, maps: torch.Tensor, shift: torch.Tensor | None = None, sample: bool | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) maps [, (B, 2) shift] -> (B, n_neurons)."""
        b, c, h, w = maps.shape
        if (c, h, w) != self.in_shape:
            raise ValueError(f"GaussianReadout reads maps of shape {self.in_shape}, got {(c, h, w)}")
        grid = self.positions(b, self.training if sample is None else sample)
        if shift is not None:
            grid = grid + shift[:, None, :]
        values = F.grid_sample(maps, grid[:, :, None, :], align_corners=True)  # (B, C, N, 1)
        # a broadcast product summed over channels: no permuted copies, unlike einsum's bmm
        return (values[..., 0] * self.features).sum(dim=1) + self.bias

    def regularizer(self) -> torch.Tensor:
        return self.gamma_readout * self.features.abs().sum()


class LinearReadout(nn.Module):
    """A full linear filter per neuron over the maps (the linear stage of an LN model).

    Parameters
    ----------
    in_shape : (channels, height, width).
    n_neurons : number of neurons.
    gamma_smooth : weight of the (unnormalized) Laplace smoothness of each filter.
    gamma_l2 : weight of the L2 norm of the filters.
    mean_activity : (n_neurons,) mean responses, to initialize the bias.
    """

    def __init__(self, in_shape, n_neurons: int, gamma_smooth: float = 1.0, gamma_l2: float = 0.0, mean_activity=None):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        self.in_shape = (c, h, w)
        self.gamma_smooth = gamma_smooth
        self.gamma_l2 = gamma_l2
        self.weight = nn.Parameter(torch.randn(n_neurons, c * h * w) * 1e-3)
        self.bias = _bias(n_neurons, mean_activity)

    def forward(self, maps: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) maps -> (B, n_neurons)."""
        _no_shift("LinearReadout", shift)
        if tuple(maps.shape[1:]) != self.in_shape:
            raise ValueError(f"LinearReadout reads maps of shape {self.in_shape}, got {tuple(maps.shape[1:])}")
        return maps.flatten(1) @ self.weight.t() + self.bias

    def regularizer(self) -> torch.Tensor:
        filters = self.weight.reshape(-1, *self.in_shape)
        smooth = laplace_smoothness(filters, normalize=False)
        return self.gamma_smooth * smooth + self.gamma_l2 * self.weight.pow(2).sum()
