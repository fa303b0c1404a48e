"""A K-shot neural process: a neuron's readout inferred from K (image, response) pairs in one pass.

After the Factorized Neural Process of Cotton, Sinz & Tolias (2020), written anew: a shared
core maps images to features g (C, H, W); a set encoder reads set means over a neuron's K
context trials, of ``[g, g * r, r]`` as the paper's and of the feature products ``g g^T`` at
every position (the images' part, shared by all neurons): a per-neuron summary of the same
size for any K. From it it infers the neuron's *location* (a distribution over the maps'
positions) and its *feature weights* and bias, by a ridge regression at every position with
learned ridge, location smoothing and gain; the rate on a new image is ``ELU(w . f + b) + 1``
with ``f`` the features read at that location, scored with a Poisson likelihood. A new neuron
costs one forward pass, no per-neuron optimization."""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .encoder import PerDataset

Sums = dict[str, torch.Tensor]

#: initial weight of a position's evidence K * R2 / 2 in the location logits (1: the posterior)
LOCATION_GAIN = 1.0


def stimulus_sums(maps: torch.Tensor) -> Sums:
    """The part of the context sums that depends on the images only (shared by all neurons).

    Parameters
    ----------
    maps : (K, C, H, W) core features of the context images.

    Returns
    -------
    dict: ``n`` (scalar), ``g`` (C, H, W) and ``gg`` (C, C, H, W) sums of features and of the
    products of every two features at every position.
    """
    if maps.ndim != 4:
        raise ValueError(f"context maps {tuple(maps.shape)} (expected (K, C, H, W))")
    return {
        "n": torch.tensor(float(maps.shape[0]), device=maps.device),
        "g": maps.sum(0),
        "gg": _feature_products(maps),
    }


def response_sums(maps: torch.Tensor, responses: torch.Tensor) -> Sums:
    """The per-neuron part of the context sums: ``gr`` (P, C, N) sums of features times responses
    at every position (positions first: the layout of the per-position regressions), ``r`` and
    ``r2`` (N,)."""
    if maps.ndim != 4 or responses.ndim != 2 or maps.shape[0] != responses.shape[0]:
        raise ValueError(
            f"context maps {tuple(maps.shape)} and responses {tuple(responses.shape)} "
            "(expected (K, C, H, W) and (K, N) with the same K)"
        )
    k, c, h, w = maps.shape
    return {
        "gr": (maps.reshape(k, -1).T @ responses).view(c, h * w, -1).transpose(0, 1),
        "r": responses.sum(0),
        "r2": responses.pow(2).sum(0),
    }


def context_sums(maps: torch.Tensor, responses: torch.Tensor) -> Sums:
    """Sufficient statistics of K context trials of N neurons (add them up over batches).

    Parameters
    ----------
    maps : (K, C, H, W) core features of the context images.
    responses : (K, N) the neurons' responses to them.

    Returns
    -------
    dict: ``stimulus_sums`` (``n``, ``g``, ``gg``: shared by all neurons) and ``response_sums``
    (``gr`` (P, C, N), ``r``, ``r2`` (N,)).
    """
    return {**response_sums(maps, responses), **stimulus_sums(maps)}


def _feature_products(maps: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(C, C, H, W) sums over trials of the products of every two features at every position."""
    k, c, h, w = maps.shape
    total = maps.new_zeros(h * w, c, c)
    # one small matrix product per position, a chunk of trials at a time, on contiguous
    # copies: an einsum over all K at once, or strided batches, were 3-7x slower on a CPU
    for part in maps.split(chunk):
        flat = part.flatten(2).permute(2, 1, 0).contiguous()  # (P, C, k)
        total = total + torch.bmm(flat, flat.transpose(1, 2).contiguous())
    return total.permute(1, 2, 0).reshape(c, c, h, w)


def add_sums(a: Sums | None, b: Sums) -> Sums:
    """The sums of two sets of context trials (``a`` may be None)."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


class SetEncoder(nn.Module):
    """Context sums -> per-neuron location distribution (N, H*W), feature weights (N, C), bias (N).

    From the set means it forms, at every position p, the ridge regression of each neuron's
    response on the C features there, ``beta_p = (Sigma_p + lambda_p I)^-1 cov_p(g, r)``, and
    the fraction of the response variance it explains, ``R2_p = cov_p . beta_p / var(r)``. The
    location branch turns the evidence ``K R2_p / 2`` (the log-likelihood gain of a Gaussian
    linear readout at p) into logits with a 5x5 convolution (the centre weight 1 at first: the
    posterior over positions under a flat prior, which sharpens as K grows; a mean over
    positions would blur the features) and a softmax over positions. The feature weights are the regression coefficients at that
    distribution times a learned, per-neuron gain (an MLP of the mean and spread of the
    responses, R2 at the location and the correlations there), plus the MLP's correction;
    the bias makes the mean predicted rate the mean response. The MLP's output is weighed by
    ``K0 / (K0 + K)`` (K0 learned): a prior worth K0 trials, which the data outweigh as K
    grows (trained at K of a batch, left at full weight, it lowered the test correlation at
    K = all from 0.47 to 0.41 on the simulated population). The ridge ``lambda_p`` is a
    learned fraction of the features' variance at p, larger for small K (a prior that
    shrinks noisy estimates). K enters only through the statistics, the evidence and the
    ridge, not as an input of the learned networks: training sees contexts of a batch's size,
    and the readout of a K far larger is then what the same statistics, less noisy, give,
    not an extrapolation of a network in K.

    Why regression and not the response-weighted mean alone: core features are correlated,
    so the spike-triggered average is a blurred mix of the neuron's weights; for Gaussian
    features and a rate ``f(w . g + b)`` (Stein's lemma) ``Sigma^-1 cov(g, r) = E[f'] w``, i.e.
    the regression finds the direction of w and the gain ``1 / E[f']`` is one number per
    neuron. With K -> all trials the inferred readout thus approaches the fitted one.

    Parameters
    ----------
    channels : C, features of the core.
    hidden : width of the MLP.
    """

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.channels = channels
        # log of the ridge as a fraction of the mean feature variance: a floor, and a part ~ 1/K
        self.log_ridge = nn.Parameter(torch.tensor([math.log(1e-2), math.log(1.0)]))
        self.location = nn.Conv2d(1, 1, 5, padding=2)
        with torch.no_grad():
            self.location.weight.zero_()
            self.location.bias.zero_()
            self.location.weight[0, 0, 2, 2] = LOCATION_GAIN
        self.features = nn.Sequential(nn.Linear(channels + 3, hidden), nn.ELU(), nn.Linear(hidden, channels + 2))
        # the MLP's corrections are a learned prior: they weigh K0 / (K0 + K) against the data,
        # as a conjugate prior of K0 pseudo-trials would, and vanish for K >> K0
        self.log_prior_trials = nn.Parameter(torch.tensor(math.log(100.0)))
        # start from "weights = regression coefficients, bias from the mean response"
        nn.init.zeros_(self.features[-1].weight)
        nn.init.zeros_(self.features[-1].bias)

    def stimulus_statistics(self, sums: Sums) -> dict[str, torch.Tensor]:
        """What the encoder needs of the images alone (``n``, ``g``, ``gg``): the same for every
        neuron that saw them, so computed once for all of them.

        Returns
        -------
        dict: ``n``, ``mu`` (C, P) mean features, ``variance`` (P, C) their variances,
        ``precision`` (P, C, C) the inverse of the ridge-regularized feature covariance at every
        position (one matrix product per neuron then gives its regression coefficients), ``size``
        (H, W) of the maps.
        """
        n = sums["n"].clamp(min=1.0)
        c = sums["g"].shape[0]
        mu = (sums["g"] / n).flatten(1)  # (C, P)
        sigma = ((sums["gg"] / n).flatten(2) - mu[:, None] * mu[None]).permute(2, 0, 1)  # (P, C, C)
        variance = torch.diagonal(sigma, dim1=1, dim2=2).clamp(min=1e-6)  # (P, C)
        ridge = (self.log_ridge[0].exp() + self.log_ridge[1].exp() / n) * variance.mean(1)  # (P,)
        eye = torch.eye(c, device=sigma.device, dtype=sigma.dtype)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(sigma + ridge[:, None, None] * eye))
        return {"n": n, "mu": mu, "variance": variance, "precision": precision, "size": tuple(sums["g"].shape[1:])}

    def forward(self, sums: Sums, stimulus: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Readouts of N neurons from their context sums; ``stimulus``: ``stimulus_statistics(sums)``
        if already computed for these images."""
        stimulus = self.stimulus_statistics(sums) if stimulus is None else stimulus
        n, mu, variance = stimulus["n"], stimulus["mu"], stimulus["variance"]
        c, (h, w) = mu.shape[0], stimulus["size"]
        r_mean = sums["r"] / n
        r_var = (sums["r2"] / n - r_mean**2).clamp(min=1e-6)
        # every (P, C, N): positions first, so that the regressions are one batched product
        # without copies (the per-neuron work of a new neuron is a few passes over P * C numbers)
        cov = (sums["gr"] / n - mu.T[:, :, None] * r_mean).contiguous()
        beta = torch.bmm(stimulus["precision"], cov)
        explained = (cov * beta).sum(1).T / r_var[:, None]  # (N, P)
        # K R2 / 2 is the log-likelihood gain of a Gaussian linear readout at p: a softmax of it
        # is the posterior of the location under a flat prior, sharper the more trials there are
        evidence = 0.5 * n * explained
        mask = torch.softmax(self.location(evidence.unflatten(1, (1, h, w))).flatten(1), dim=1)  # (N, P)
        located = mask.T[:, None, :]
        coefficients = (beta * located).sum(0).T  # (N, C)
        f_mean = mask @ mu.T  # (N, C) mean features at the location
        f_std = (mask @ variance).sqrt()
        r_std = r_var.sqrt()
        correlation = (cov * located).sum(0).T / (f_std * r_std[:, None])
        scalars = torch.stack([torch.log(r_mean.clamp(min=1e-3)), torch.log(r_std), (explained * mask).sum(1)], dim=1)
        prior = self.log_prior_trials.exp()
        out = self.features(torch.cat([correlation, scalars], dim=1)) * (prior / (prior + n))
        weights = out[:, c, None].exp() * (coefficients + out[:, :c] * r_std[:, None] / f_std)
        # ELU(x) + 1 = mean response at x = mean - 1 (mean >= 1) or log(mean); centred features
        base = torch.where(r_mean >= 1, r_mean - 1, torch.log(r_mean.clamp(min=1e-3)))
        bias = base - (weights * f_mean).sum(1) + out[:, c + 1]
        return {"mask": mask, "weights": weights, "bias": bias}


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
