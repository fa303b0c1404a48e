"""Cores: image -> feature maps shared by all neurons of all datasets."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .normalization import DivisiveNormalization, make_norm
from .regularizers import group_sparsity, laplace_smoothness
from .steerable import steerable_basis


class StackedCNNCore(nn.Module):
    """Stacked convolutions, a normalization and ELU (Klindt et al. 2017; the Sensorium baseline core).

    Parameters
    ----------
    input_channels : channels of the image (1 for grey scale).
    hidden_channels : feature maps of every layer.
    layers : number of convolution layers.
    input_kernel, hidden_kernel : filter sizes of the first and the later layers (odd).
    pad_input : zero-pad the first layer ("same"); otherwise it is "valid" and the maps shrink
        by ``input_kernel - 1``. Later layers are always "same".
    gamma_input : weight of the Laplace smoothness penalty on the first layer's filters.
    gamma_hidden : weight of the group sparsity penalty on the later layers' filters.
    momentum : of the batch norm's running statistics.
    norm : "batch" (default), "layer" or "divisive" after every convolution (``make_norm``).
    pool_kernel : spatial size of the divisive normalization's pool.

    Input (B, input_channels, H, W) -> output (B, hidden_channels, H', W').
    """

    def __init__(
        self,
        input_channels: int = 1,
        hidden_channels: int = 16,
        layers: int = 3,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        pad_input: bool = False,
        gamma_input: float = 1.0,
        gamma_hidden: float = 0.0,
        momentum: float = 0.1,
        norm: str = "batch",
        pool_kernel: int = 5,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers = {layers} (expected at least 1)")
        self.gamma_input = gamma_input
        self.gamma_hidden = gamma_hidden
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(layers):
            kernel = input_kernel if i == 0 else hidden_kernel
            padding = (kernel // 2) if (i > 0 or pad_input) else 0
            self.convs.append(
                nn.Conv2d(
                    input_channels if i == 0 else hidden_channels, hidden_channels, kernel, padding=padding, bias=False
                )
            )
            self.norms.append(make_norm(norm, hidden_channels, momentum=momentum, pool_kernel=pool_kernel))
        self.norm = norm
        self.outchannels = hidden_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv, norm in zip(self.convs, self.norms):
            x = F.elu(norm(conv(x)))
        return x

    def regularizer(self) -> torch.Tensor:
        """Laplace smoothness of the first layer + group sparsity of the others (scalar, >= 0)."""
        penalty = self.gamma_input * laplace_smoothness(self.convs[0].weight)
        if len(self.convs) > 1 and self.gamma_hidden:
            hidden = sum(group_sparsity(conv.weight) for conv in self.convs[1:])
            penalty = penalty + self.gamma_hidden * hidden / (len(self.convs) - 1)
        return penalty


class DivisiveNormalizationCore(StackedCNNCore):
    """A stacked CNN core with divisively normalized copies of its last maps (Burg et al. 2021).

    ``x = norm(conv(...))`` is the last layer's linear response and ``a = elu(x)`` its output,
    as in ``StackedCNNCore``; the output is ``[a, elu(DN(x))]``, every map of the second half
    divided by a learned pool of the squared responses of all channels around it
    (``DivisiveNormalization``). The pool reads the signed responses before the
    nonlinearity: their squares are the energy of the filters, Heeger's normalization pool,
    which half-rectified maps would lose. Keeping both halves lets the readout choose per
    neuron: in a population where only some neurons are normalized, one shared division of
    every channel would help those and hurt the others. With ``normalize=False`` it is
    exactly ``StackedCNNCore``, the same model without normalization.

    Parameters
    ----------
    pool_kernel : spatial size of the normalization pool (odd, pixels).
    normalize : apply the divisive normalization.
    pool : False: the second half's layer has no pool (each channel only scaled): the control
        with the same readout features and parameters but the pool's.
    **kwargs : ``StackedCNNCore``'s parameters.

    Input (B, input_channels, H, W) -> output (B, 2 * hidden_channels, H', W'), or
    (B, hidden_channels, H', W') without normalization.
    """

    def __init__(self, *args, pool_kernel: int = 5, normalize: bool = True, pool: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.divisive = DivisiveNormalization(self.outchannels, pool_kernel, pooled=pool) if normalize else None
        if normalize:
            self.outchannels *= 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.divisive is None:
            return super().forward(images)
        x = images
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if i < len(self.convs) - 1:
                x = F.elu(x)
        return torch.cat([F.elu(x), F.elu(self.divisive(x))], dim=1)


class RotationEquivariantCore(nn.Module):
    """Convolutions whose filters are shared across ``rotations`` angles (Ecker et al. 2019).

    Every filter is a combination of steerable ring harmonics (``steerable_basis``); each of the
    ``features`` filters of a layer is applied at every rotation, giving ``features *
    rotations`` maps, ordered feature-major: channel ``f * rotations + r`` is feature ``f`` at
    angle ``2 pi r / rotations``. Later layers read all rotations of the previous layer and
    rotate with them (their weights on the input's orientation channels are cyclically
    shifted), so rotating the image by 360/rotations * k degrees (k * 90 degrees exactly)
    rotates the maps and shifts every feature's orientation channels by k. Batch norm shares
    its statistics and affine parameters across the rotations of a feature.

    Parameters
    ----------
    input_channels : channels of the image.
    features : filters per layer (before rotation).
    rotations : angles each filter is applied at.
    layers : number of layers.
    input_kernel, hidden_kernel : odd filter sizes.
    pad_input : "same" first layer; otherwise "valid".
    gamma_input, gamma_hidden : Laplace smoothness of the first layer's filters, group sparsity
        of the later layers' filters.

    Input (B, input_channels, H, W) -> output (B, features * rotations, H', W').
    """

    def __init__(
        self,
        input_channels: int = 1,
        features: int = 4,
        rotations: int = 16,
        layers: int = 3,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        pad_input: bool = False,
        gamma_input: float = 1.0,
        gamma_hidden: float = 0.0,
        momentum: float = 0.1,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers = {layers} (expected at least 1)")
        self.features = features
        self.rotations = rotations
        self.gamma_input = gamma_input
        self.gamma_hidden = gamma_hidden
        self.paddings = []
        self.coefficients = nn.ParameterList()
        self.norms = nn.ModuleList()
        for i in range(layers):
            kernel = input_kernel if i == 0 else hidden_kernel
            basis = torch.from_numpy(steerable_basis(kernel, rotations))
            self.register_buffer(f"basis{i}", basis, persistent=False)
            n_basis = basis.shape[1]
            if i == 0:
                shape = (features, input_channels, n_basis)
                fan_in = input_channels * n_basis
            else:
                shape = (features, features, rotations, n_basis)
                fan_in = features * rotations * n_basis
            self.coefficients.append(nn.Parameter(torch.randn(shape) / fan_in**0.5))
            self.paddings.append((kernel // 2) if (i > 0 or pad_input) else 0)
            self.norms.append(nn.BatchNorm2d(features, momentum=momentum))
        self.outchannels = features * rotations

    def filters(self, layer: int) -> torch.Tensor:
        """Conv weight of ``layer`` for all rotations: (features * rotations, in_channels, k, k)."""
        basis = getattr(self, f"basis{layer}")  # (rotations, n_basis, k, k)
        coef = self.coefficients[layer]
        k = basis.shape[-1]
        if layer == 0:
            weight = torch.einsum("cib,rbxy->crixy", coef, basis)
            return weight.reshape(self.features * self.rotations, coef.shape[1], k, k)
        # output rotation r sees input orientation s through the filter of orientation s - r
        per_rotation = [
            torch.einsum("cisb,bxy->cisxy", torch.roll(coef, shifts=r, dims=2), basis[r]) for r in range(self.rotations)
        ]
        weight = torch.stack(per_rotation, dim=1)  # (c, r, i, s, k, k)
        return weight.reshape(self.features * self.rotations, self.features * self.rotations, k, k)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for i, norm in enumerate(self.norms):
            x = F.conv2d(x, self.filters(i), padding=self.paddings[i])
            b, _, h, w = x.shape
            # (B, features, rotations * H, W): one set of statistics per feature
            x = norm(x.reshape(b, self.features, self.rotations * h, w)).reshape(b, -1, h, w)
            x = F.elu(x)
        return x

    def regularizer(self) -> torch.Tensor:
        """Laplace smoothness of the first layer + group sparsity of the others (scalar, >= 0)."""
        penalty = self.gamma_input * laplace_smoothness(self.filters(0)[:: self.rotations])
        if len(self.norms) > 1 and self.gamma_hidden:
            hidden = sum(group_sparsity(self.filters(i)[:: self.rotations]) for i in range(1, len(self.norms)))
            penalty = penalty + self.gamma_hidden * hidden / (len(self.norms) - 1)
        return penalty


class IdentityCore(nn.Module):
    """The image itself, optionally average-pooled by ``downsample`` (for linear models).

    Input (B, C, H, W) -> output (B, C, H // downsample, W // downsample).
    """

    def __init__(self, input_channels: int = 1, downsample: int = 1):
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample = {downsample} (expected at least 1)")
        self.downsample = downsample
        self.outchannels = input_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.downsample == 1:
            return images
        return F.avg_pool2d(images, self.downsample)

    def regularizer(self) -> torch.Tensor:
        return torch.zeros(())
