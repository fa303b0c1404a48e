"""A K-shot neural process: a neuron's readout inferred from K (image, response) pairs in one pass.

After the Factorized Neural Process of Cotton, Sinz & Tolias (2020), written anew: a shared
core maps images to features g (C, H, W); a set encoder reads the set mean of ``[g, g * r, r]``
over a neuron's K context trials (i.e. the mean features, the response-weighted features and
the mean response: a deterministic per-neuron latent that any K summarizes in the same
size), and infers from it the neuron's *location* (a distribution over the maps' positions)
and its *feature weights* and bias; the rate on a new image is ``ELU(w . f + b) + 1`` with ``f``
the features read at that location, scored with a Poisson likelihood. A new neuron costs one
forward pass, no per-neuron optimization.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .encoder import PerDataset

Sums = dict[str, torch.Tensor]

#: initial weight of the correlation energy in the location logits
ENERGY_GAIN = 200.0


def context_sums(maps: torch.Tensor, responses: torch.Tensor) -> Sums:
    """Sufficient statistics of K context trials of N neurons (add them up over batches).

    Parameters
    ----------
    maps : (K, C, H, W) core features of the context images.
    responses : (K, N) the neurons' responses to them.

    Returns
    -------
    dict: ``n`` (scalar), ``g`` (C, H, W) and ``g2`` (C,) sums of features and squared
    features, ``gr`` (N, C, H, W) sum of features times response, ``r`` and ``r2`` (N,) sums of
    responses and squared responses.
    """
    if maps.ndim != 4 or responses.ndim != 2 or maps.shape[0] != responses.shape[0]:
        raise ValueError(
            f"context maps {tuple(maps.shape)} and responses {tuple(responses.shape)} "
            "(expected (K, C, H, W) and (K, N) with the same K)"
        )
    return {
        "n": torch.tensor(float(maps.shape[0]), device=maps.device),
        "g": maps.sum(0),
        "g2": maps.pow(2).sum(dim=(0, 2, 3)),
        "gr": torch.einsum("kchw,kn->nchw", maps, responses),
        "r": responses.sum(0),
        "r2": responses.pow(2).sum(0),
    }


def add_sums(a: Sums | None, b: Sums) -> Sums:
    """The sums of two sets of context trials (``a`` may be None)."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


class SetEncoder(nn.Module):
    """Context sums -> per-neuron location distribution (N, H*W), feature weights (N, C), bias (N).

    From the set means it forms, per neuron and position, the correlation-like map
    ``(mean(g r) - mean(g) mean(r)) / (std(g) std(r))`` (N, C, H, W); a 1x1 network with a
    ``1/sqrt(K)`` input (how noisy the map is) embeds every position; the location branch
    turns the embedding into logits (a 5x5 convolution, so neighbours agree) and a softmax over
    positions; the feature branch reads the embedding and the map at that distribution and,
    with the mean and spread of the responses, gives the feature weights and the bias.

    Parameters
    ----------
    channels : C, features of the core.
    hidden : width of the embedding.
    """

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.channels = channels
        self.embed = nn.Sequential(nn.Conv2d(channels + 1, hidden, 1), nn.ELU(), nn.Conv2d(hidden, hidden, 1), nn.ELU())
        # location logits from the embedding and the correlation energy mean_c corr^2; the
        # energy starts as a smoothed spike-triggered map, so that the location is found from
        # the first step and the network learns what to add to it (e.g. at small K)
        self.location = nn.Conv2d(hidden + 1, 1, 5, padding=2)
        with torch.no_grad():
            self.location.weight.zero_()
            t = torch.arange(-2.0, 3.0)
            gauss = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 2.0)
            self.location.weight[0, hidden] = ENERGY_GAIN * gauss / gauss.sum()
        self.features = nn.Sequential(
            nn.Linear(hidden + channels + 3, hidden), nn.ELU(), nn.Linear(hidden, channels + 1)
        )
        # start from "weights follow the correlation at the location", bias from the mean response
        nn.init.zeros_(self.features[-1].weight)
        nn.init.zeros_(self.features[-1].bias)
        self.direct = nn.Parameter(torch.tensor(1.0))

    def forward(self, sums: Sums) -> dict[str, torch.Tensor]:
        n = sums["n"].clamp(min=1.0)
        c, h, w = sums["g"].shape
        g_mean = sums["g"] / n
        g_var = (sums["g2"] / (n * h * w) - g_mean.mean(dim=(1, 2)) ** 2).clamp(min=1e-6)
        r_mean = sums["r"] / n
        r_std = (sums["r2"] / n - r_mean**2).clamp(min=1e-6).sqrt()
        cov = sums["gr"] / n - g_mean[None] * r_mean[:, None, None, None]
        corr = cov / (g_var.sqrt()[None, :, None, None] * r_std[:, None, None, None])  # (N, C, H, W)
        noise = torch.ones_like(corr[:, :1]) / torch.sqrt(n)
        hidden = self.embed(torch.cat([corr, noise], dim=1))  # (N, D, H, W)
        energy = corr.pow(2).mean(dim=1, keepdim=True)
        mask = torch.softmax(self.location(torch.cat([hidden, energy], dim=1)).flatten(1), dim=1)  # (N, H*W)
        pooled = torch.einsum("ndp,np->nd", hidden.flatten(2), mask)
        at_location = torch.einsum("ncp,np->nc", corr.flatten(2), mask)
        scalars = torch.stack([r_mean, torch.log(r_std), noise[:, 0, 0, 0]], dim=1)
        out = self.features(torch.cat([pooled, at_location, scalars], dim=1))
        weights = self.direct * at_location + out[:, :c]
        # ELU(x) + 1 = mean response at x = mean - 1 (mean >= 1) or log(mean)
        base = torch.where(r_mean >= 1, r_mean - 1, torch.log(r_mean.clamp(min=1e-3)))
        return {"mask": mask, "weights": weights, "bias": base + out[:, c]}


def predict(maps: torch.Tensor, readout: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rates (B, N) of neurons with inferred ``readout`` (mask, weights, bias) on (B, C, H, W) maps."""
    located = torch.einsum("bcp,np->bnc", maps.flatten(2), readout["mask"])
    return F.elu((located * readout["weights"][None]).sum(-1) + readout["bias"][None]) + 1.0


class InferredReadout(nn.Module):
    """The readout of one dataset's neurons as the set encoder inferred it (buffers, no parameters)."""

    def __init__(self, n_neurons: int, channels: int, positions: int):
        super().__init__()
        self.register_buffer("mask", torch.full((n_neurons, positions), 1.0 / positions))
        self.register_buffer("weights", torch.zeros(n_neurons, channels))
        self.register_buffer("bias", torch.zeros(n_neurons))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "weights": self.weights, "bias": self.bias}

    def store(self, readout: dict[str, torch.Tensor]) -> None:
        for name in ("mask", "weights", "bias"):
            getattr(self, name).copy_(readout[name].detach())


class NeuralProcess(nn.Module):
    """Core + set encoder; ``forward`` predicts the neurons it was last conditioned on.

    ``infer(context_images, context_responses)`` gives any neurons' readout from K trials;
    ``condition(data_key, readout)`` stores it for ``forward(images, data_key)``, the Encoder
    contract that the scores and in-silico experiments use (the trainer conditions on every
    training trial at the end).

    Parameters
    ----------
    core : module (B, C_in, H, W) -> (B, C, H', W') with ``regularizer()``.
    neurons : data_key -> number of neurons.
    map_shape : (C, H', W') of the core's output.
    hidden : width of the set encoder.
    """

    def __init__(self, core: nn.Module, neurons: dict[str, int], map_shape: tuple[int, int, int], hidden: int = 32):
        super().__init__()
        c, h, w = map_shape
        self.core = core
        self.encoder = SetEncoder(c, hidden)
        self.readout = PerDataset({k: InferredReadout(n, c, h * w) for k, n in neurons.items()})

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout)

    def infer(self, images: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Readouts of N neurons from K context trials: (K, C, H, W) images, (K, N) responses."""
        return self.encoder(context_sums(self.core(images), responses))

    def condition(self, data_key: str, readout: dict[str, torch.Tensor]) -> None:
        self.readout[data_key].store(readout)

    def forward(self, images: torch.Tensor, data_key: str | None = None, behavior=None, pupil_center=None):
        if data_key is None:
            if len(self.readout) != 1:
                raise ValueError(f"data_key is needed: this model has neurons of {self.data_keys}")
            data_key = self.data_keys[0]
        return predict(self.core(images), self.readout[data_key].as_dict())

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        return self.core.regularizer()


def random_split(batch_size: int, generator: torch.Generator, min_context: int = 4, min_target: int = 4):
    """A random (context, target) split of a batch's trial indices with a log-uniform context size."""
    if batch_size < min_context + min_target:
        raise ValueError(f"batch of {batch_size} trials (expected at least {min_context + min_target} to split)")
    high = batch_size - min_target
    k = int(round(math.exp(torch.empty(1).uniform_(math.log(min_context), math.log(high), generator=generator).item())))
    order = torch.randperm(batch_size, generator=generator)
    return order[:k], order[k:]
