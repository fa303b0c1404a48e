"""Video models: a factorized 3D-convolution core, the Gaussian readout over time, and a latent-state model.

``VideoModel``: core -> per-frame Gaussian readout (shifted by the pupil position) -> ELU + 1,
times the behaviour modulator's gain; trained like the static models on the Poisson loss.

``LatentVideoModel`` (Schmidt, Turishcheva, Shrinivasan & Sinz 2024): the same stimulus path
gives every neuron's log mean; ``latent_dim`` stimulus-independent latents per frame shift it by
``loadings @ z_t``; responses follow a zero-inflated gamma distribution (a proper density for
non-negative responses with exact zeros). A bidirectional GRU infers ``q(z | responses)`` from
the residual responses of a random half of the neurons (``mask_fraction`` are hidden from it);
the loss is the negative ELBO: every neuron's negative log-likelihood under a sample of ``q``
plus KL(q || N(0, I)). (Scoring only the hidden neurons, as a first version did, left the
model's marginal likelihood below the video-only model's: ``benchmarks/video.py``.) With ``latent_dim = 0`` it is the video-only model with the same
likelihood, the baseline of its log-likelihood gain. Its ``forward`` predicts with the latents
at the prior's mean (z = 0); ``log_likelihood`` and ``infer_latents`` give the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .builders import first_batch_and_mean, training_loaders
from .encoder import Encoder, PerDataset
from .readouts import GaussianReadout
from .regularizers import group_sparsity, laplace_smoothness
from .shifter import Shifter


class Factorized3dCore(nn.Module):
    """Layers of a spatial (1, k, k) then a causal temporal (kt, 1, 1) convolution, batch norm and ELU.

    (B, C_in, T, H, W) -> (B, hidden_channels, T, H, W): spatial padding keeps the frame size;
    the temporal convolution sees only the current and past frames (zero history before the
    first frame of a clip).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: int = 16,
        layers: int = 3,
        input_kernel: int = 7,
        hidden_kernel: int = 3,
        input_temporal: int = 9,
        hidden_temporal: int = 3,
        gamma_input: float = 0.01,
        gamma_hidden: float = 0.0,
    ):
        super().__init__()
        for name, value in (
            ("layers", layers),
            ("hidden_channels", hidden_channels),
            ("input_kernel", input_kernel),
            ("hidden_kernel", hidden_kernel),
            ("input_temporal", input_temporal),
            ("hidden_temporal", hidden_temporal),
        ):
            if value < 1:
                raise ValueError(f"Factorized3dCore: {name} = {value} (expected at least 1)")
        self.gamma_input, self.gamma_hidden = gamma_input, gamma_hidden
        self.spatial = nn.ModuleList()
        self.temporal = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.lags = []
        for i in range(layers):
            k, kt = (input_kernel, input_temporal) if i == 0 else (hidden_kernel, hidden_temporal)
            cin = in_channels if i == 0 else hidden_channels
            self.spatial.append(nn.Conv3d(cin, hidden_channels, (1, k, k), padding=(0, k // 2, k // 2), bias=False))
            self.temporal.append(nn.Conv3d(hidden_channels, hidden_channels, (kt, 1, 1), bias=False))
            self.norms.append(nn.BatchNorm3d(hidden_channels))
            self.lags.append(kt - 1)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5:
            raise ValueError(f"videos have shape {tuple(videos.shape)} (expected (batch, channels, T, H, W))")
        x = videos
        for spatial, temporal, norm, lag in zip(self.spatial, self.temporal, self.norms, self.lags):
            x = spatial(x)
            x = temporal(F.pad(x, (0, 0, 0, 0, lag, 0)))
            x = F.elu(norm(x))
        return x

    def regularizer(self) -> torch.Tensor:
        first = self.spatial[0].weight[:, :, 0]  # (out, in, k, k)
        penalty = self.gamma_input * laplace_smoothness(first)
        for conv in list(self.spatial)[1:]:
            penalty = penalty + self.gamma_hidden * group_sparsity(conv.weight[:, :, 0])
        return penalty


class FrameModulator(nn.Module):
    """log gain = MLP(behaviour) per frame: (B, T, behavior_dims) -> (B, T, n_neurons); 0 at initialization."""

    def __init__(self, n_neurons: int, behavior_dims: int = 2, hidden: int = 10):
        super().__init__()
        self.behavior_dims = behavior_dims
        self.mlp = nn.Sequential(nn.Linear(behavior_dims, hidden), nn.ELU(), nn.Linear(hidden, n_neurons))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, behavior: torch.Tensor) -> torch.Tensor:
        if behavior.ndim != 3 or behavior.shape[-1] != self.behavior_dims:
            raise ValueError(f"behavior has shape {tuple(behavior.shape)} (expected (batch, T, {self.behavior_dims}))")
        return self.mlp(behavior).clamp(max=10.0)


class VideoModel(Encoder):
    """rates = (ELU(readout(core(videos))) + 1) * exp(modulator(behaviour)), per frame.

    The ``Encoder`` of image models over time: its core takes clips (B, C, T, H, W), its
    readout, shifter and (per-frame) modulator apply to every frame.
    ``forward(videos, data_key=None, behavior=None, pupil_center=None)`` -> (B, T, N_key).
    """

    def log_rates(
        self,
        videos: torch.Tensor,
        data_key: str | None = None,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, N) log of the stimulus- and behaviour-driven rate."""
        key = self._key(data_key)
        maps = self.core(videos)  # (B, C, T, H, W)
        b, c, t, h, w = maps.shape
        frames = maps.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        shift = None
        if self.shifter is not None:
            if pupil_center is None:
                raise ValueError(f"data_key {key!r}: this model has a shifter and needs pupil_center (got None)")
            shift = self.shifter[key](pupil_center.reshape(b * t, 2))
        x = self.readout[key](frames, shift=shift).reshape(b, t, -1)
        log_rate = torch.log(F.elu(x) + 1.0 + 1e-6)
        if self.modulator is not None:
            if behavior is None:
                raise ValueError(
                    f"data_key {key!r}: this model has a behaviour modulator and needs behavior (got None)"
                )
            log_rate = log_rate + self.modulator[key](behavior)
        return log_rate

    def forward(self, videos, data_key=None, behavior=None, pupil_center=None) -> torch.Tensor:
        return torch.exp(self.log_rates(videos, data_key, behavior, pupil_center))


# --------------------------------------------------------------------------------------- #
# zero-inflated gamma
# --------------------------------------------------------------------------------------- #


def zig_log_prob(
    responses: torch.Tensor, log_mean: torch.Tensor, q_logit: torch.Tensor, shape: torch.Tensor, loc: float
) -> torch.Tensor:
    """Log density of the zero-inflated gamma, elementwise.

    With probability ``1 - q`` a response is "zero": uniform on [0, loc); with probability ``q``
    it is ``loc`` plus a gamma variable of shape ``k`` and mean ``exp(log_mean)``.
    """
    k = shape
    log_scale = log_mean - torch.log(k)
    x = (responses - loc).clamp(min=1e-6)
    log_gamma = (k - 1) * torch.log(x) - x * torch.exp(-log_scale) - k * log_scale - torch.lgamma(k)
    above = F.logsigmoid(q_logit) + log_gamma
    below = F.logsigmoid(-q_logit) - math.log(loc)
    return torch.where(responses >= loc, above, below)


def zig_mean(log_mean: torch.Tensor, q_logit: torch.Tensor, loc: float) -> torch.Tensor:
    """Expected response of the zero-inflated gamma."""
    q = torch.sigmoid(q_logit)
    return (1 - q) * loc / 2 + q * (loc + torch.exp(log_mean))


class LatentEncoder(nn.Module):
    """q(z_t | responses) = N(mu_t, sigma_t^2): visible residuals -> linear -> bidirectional GRU -> (mu, log var)."""

    def __init__(self, n_neurons: int, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.input = nn.Linear(2 * n_neurons, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.output = nn.Linear(2 * hidden, 2 * latent_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, responses: torch.Tensor, expected: torch.Tensor, visible: torch.Tensor):
        """(B, T, N) responses and their stimulus-only expectation, (B, 1, N) 0/1 visibility -> mu, log var (B, T, K)."""
        scale = visible.shape[-1] / visible.sum(-1, keepdim=True).clamp(min=1.0)
        x = torch.cat([(responses - expected) * visible * scale, visible.expand_as(responses)], -1)
        h, _ = self.gru(F.elu(self.input(x)))
        mu, log_var = self.output(h).chunk(2, dim=-1)
        return mu, log_var.clamp(-8.0, 4.0)


class NeuronParameters(nn.Module):
    """Per neuron: the gamma shape (softplus of ``shape_raw``), the zero-inflation logit
    ``q_slope * log mean + q_offset``, and the latents' ``loadings`` (n, latent_dim)."""

    def __init__(self, n_neurons: int, latent_dim: int, mean_activity: torch.Tensor | None = None):
        super().__init__()
        self.shape_raw = nn.Parameter(torch.full((n_neurons,), 0.55))  # shape 1 (exponential) at start
        self.q_slope = nn.Parameter(torch.ones(n_neurons))
        offset = torch.zeros(n_neurons) if mean_activity is None else torch.log(mean_activity.float().clamp(min=1e-3))
        self.q_offset = nn.Parameter(offset.clone())
        self.loadings = nn.Parameter(torch.randn(n_neurons, latent_dim) * 0.01)


class LatentVideoModel(nn.Module):
    """The video model with latent state and a zero-inflated gamma likelihood (see the module docstring)."""

    def __init__(
        self,
        video: VideoModel,
        n_neurons: dict[str, int],
        *,
        latent_dim: int = 4,
        encoder_hidden: int = 64,
        mask_fraction: float = 0.5,
        loc: float = 0.005,
        mean_activity: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if latent_dim < 0:
            raise ValueError(f"latent_dim = {latent_dim} (expected 0 or more)")
        if not 0.0 < mask_fraction < 1.0:
            raise ValueError(f"mask_fraction = {mask_fraction} (expected in (0, 1))")
        self.video = video
        self.latent_dim, self.mask_fraction, self.loc = int(latent_dim), float(mask_fraction), float(loc)
        self.neurons = PerDataset(
            {
                k: NeuronParameters(n, self.latent_dim, None if mean_activity is None else mean_activity.get(k))
                for k, n in n_neurons.items()
            }
        )
        self.encoder = (
            PerDataset({k: LatentEncoder(n, self.latent_dim, encoder_hidden) for k, n in n_neurons.items()})
            if self.latent_dim
            else None
        )

    @property
    def data_keys(self) -> list[str]:
        return self.video.data_keys

    def _params(self, key: str, log_rate: torch.Tensor, z: torch.Tensor | None):
        p = self.neurons[key]
        log_mean = log_rate if z is None else log_rate + z @ p.loadings.T
        q_logit = p.q_slope * log_mean + p.q_offset
        shape = F.softplus(p.shape_raw) + 1e-3
        return log_mean, q_logit, shape

    def forward(self, videos, data_key=None, behavior=None, pupil_center=None) -> torch.Tensor:
        """(B, T, N) expected responses with the latents at the prior's mean (z = 0)."""
        key = self.video._key(data_key)
        log_mean, q_logit, _ = self._params(key, self.video.log_rates(videos, key, behavior, pupil_center), None)
        return zig_mean(log_mean, q_logit, self.loc)

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        return self.video.regularizer(data_key)

    def posterior(self, key: str, log_rate: torch.Tensor, responses: torch.Tensor, visible: torch.Tensor):
        """(mu, log var) of q(z | the visible neurons' responses), each (B, T, latent_dim)."""
        log_mean, q_logit, _ = self._params(key, log_rate, None)
        expected = zig_mean(log_mean, q_logit, self.loc).detach()
        return self.encoder[key](responses, expected, visible)

    def training_loss(self, batch: dict, data_key: str, device: torch.device) -> torch.Tensor:
        """The negative ELBO of a batch, summed: every neuron's NLL under one sample of q(z | visible half), plus KL."""
        key = self.video._key(data_key)
        videos, behavior, pupil, responses = (
            batch[n].to(device, non_blocking=True) for n in ("videos", "behavior", "pupil_center", "responses")
        )
        log_rate = self.video.log_rates(videos, key, behavior, pupil)
        if not self.latent_dim:
            log_mean, q_logit, shape = self._params(key, log_rate, None)
            return -zig_log_prob(responses, log_mean, q_logit, shape, self.loc).sum()
        b, _, n = responses.shape
        visible = (torch.rand(b, 1, n, device=device) >= self.mask_fraction).to(responses.dtype)
        mu, log_var = self.posterior(key, log_rate, responses, visible)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        log_mean, q_logit, shape = self._params(key, log_rate, z)
        nll = -zig_log_prob(responses, log_mean, q_logit, shape, self.loc).sum()
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum()
        return nll + kl

    @torch.no_grad()
    def log_likelihood(
        self,
        batch: dict,
        data_key: str | None = None,
        visible: torch.Tensor | None = None,
        samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T, N) log density of every response, the latents integrated out by Monte Carlo.

        ``visible`` None: latents from the prior N(0, I) (the model's marginal). ``visible``
        (N,) bool: latents from q(z | those neurons' responses); the densities of the
        visible neurons themselves are then NaN (they were conditioned on).
        """
        key = self.video._key(data_key)
        device = next(self.parameters()).device
        videos, behavior, pupil, responses = (
            batch[n].to(device) for n in ("videos", "behavior", "pupil_center", "responses")
        )
        log_rate = self.video.log_rates(videos, key, behavior, pupil)
        if not self.latent_dim:
            out = zig_log_prob(responses, *self._params(key, log_rate, None), self.loc)
        else:
            b, t, n = responses.shape
            if visible is None:
                mu = torch.zeros(b, t, self.latent_dim, device=device)
                std = torch.ones_like(mu)
            else:
                mask = visible.to(device=device, dtype=responses.dtype).reshape(1, 1, n).expand(b, 1, n)
                mu, log_var = self.posterior(key, log_rate, responses, mask)
                std = torch.exp(0.5 * log_var)
            draws = []
            for _ in range(samples):
                noise = torch.randn(mu.shape, generator=generator, device="cpu").to(device)
                draws.append(zig_log_prob(responses, *self._params(key, log_rate, mu + std * noise), self.loc))
            out = torch.logsumexp(torch.stack(draws), 0) - math.log(samples)
        if visible is not None:
            out = out.masked_fill(visible.to(device).reshape(1, 1, -1), float("nan"))
        return out

    @torch.no_grad()
    def infer_latents(self, batch: dict, data_key: str | None = None, visible: torch.Tensor | None = None):
        """(B, T, latent_dim) posterior means from the responses of ``visible`` (default: every neuron)."""
        if not self.latent_dim:
            raise ValueError("this model has latent_dim = 0 (no latents to infer)")
        key = self.video._key(data_key)
        device = next(self.parameters()).device
        videos, behavior, pupil, responses = (
            batch[n].to(device) for n in ("videos", "behavior", "pupil_center", "responses")
        )
        b, _, n = responses.shape
        mask = torch.ones(b, 1, n, device=device) if visible is None else visible.to(device).float().reshape(1, 1, n)
        mu, _ = self.posterior(key, self.video.log_rates(videos, key, behavior, pupil), responses, mask.expand(b, 1, n))
        return mu

    @torch.no_grad()
    def predict_conditioned(self, batch: dict, data_key: str | None = None, visible: torch.Tensor | None = None):
        """(B, T, N) expected responses with the latents at their posterior mean given ``visible``."""
        key = self.video._key(data_key)
        device = next(self.parameters()).device
        videos, behavior, pupil = (batch[n].to(device) for n in ("videos", "behavior", "pupil_center"))
        log_rate = self.video.log_rates(videos, key, behavior, pupil)
        z = self.infer_latents(batch, key, visible) if self.latent_dim else None
        log_mean, q_logit, _ = self._params(key, log_rate, z)
        return zig_mean(log_mean, q_logit, self.loc)


# --------------------------------------------------------------------------------------- #
# builders
# --------------------------------------------------------------------------------------- #

_VIDEO_LIMITS = {
    "hidden_channels": 1,
    "layers": 1,
    "input_kernel": 1,
    "hidden_kernel": 1,
    "input_temporal": 1,
    "hidden_temporal": 1,
    "gamma_input": 0.0,
    "gamma_hidden": 0.0,
    "gamma_readout": 0.0,
}


def video_shapes(dataloaders: dict) -> dict[str, dict]:
    """Per data_key of the training loaders: clip shape (C, T, H, W), n_neurons, mean response, behaviour dims."""
    shapes = {}
    for key, loader in training_loaders(dataloaders).items():
        first, mean = first_batch_and_mean(key, loader)
        if "videos" not in first:
            raise ValueError(f"data_key {key!r}: batches have no 'videos' (a video model needs a video dataset)")
        shapes[key] = {
            "video_shape": tuple(first["videos"].shape[1:]),
            "n_neurons": int(first["responses"].shape[-1]),
            "mean_activity": mean,
            "behavior_dims": int(first["behavior"].shape[-1]),
            "has_behavior": bool(getattr(loader.dataset, "has_behavior", True)),
        }
    frame_shapes = {s["video_shape"][2:] for s in shapes.values()}
    if len(frame_shapes) != 1:
        raise ValueError(f"datasets of one shared core need one frame size, got {sorted(frame_shapes)}")
    return shapes


def _video_model(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int,
    layers: int,
    input_kernel: int,
    hidden_kernel: int,
    input_temporal: int,
    hidden_temporal: int,
    gamma_input: float,
    gamma_hidden: float,
    gamma_readout: float,
    init_sigma: float,
    shifter: bool,
    modulator: bool,
) -> tuple[VideoModel, dict]:
    from pipeline.sysid.training import set_seed

    set_seed(seed)
    shapes = video_shapes(dataloaders)
    channels, _, height, width = next(iter(shapes.values()))["video_shape"]
    core = Factorized3dCore(
        channels,
        hidden_channels,
        layers,
        input_kernel,
        hidden_kernel,
        input_temporal,
        hidden_temporal,
        gamma_input,
        gamma_hidden,
    )
    in_shape = (hidden_channels, height, width)
    readouts = {
        k: GaussianReadout(in_shape, s["n_neurons"], init_sigma=init_sigma, gamma_readout=gamma_readout)
        for k, s in shapes.items()
    }
    missing = [k for k, s in shapes.items() if not s["has_behavior"]]
    if (shifter or modulator) and missing:
        raise ValueError(
            f"data_key(s) {missing} have no behaviour or pupil position: build with shifter=False, modulator=False"
        )
    shifters = {k: Shifter() for k in shapes} if shifter else None
    modulators = (
        {k: FrameModulator(s["n_neurons"], s["behavior_dims"]) for k, s in shapes.items()} if modulator else None
    )
    return VideoModel(core, readouts, shifters, modulators), shapes


def _register(name: str, limits: dict, **more):
    from pipeline import identity

    return identity.register("model", name, validate=identity.bounds(minimum=limits, **more))


@_register("video_gaussian", _VIDEO_LIMITS)
def video_gaussian(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 16,
    layers: int = 3,
    input_kernel: int = 7,
    hidden_kernel: int = 3,
    input_temporal: int = 9,
    hidden_temporal: int = 3,
    gamma_input: float = 0.01,
    gamma_hidden: float = 0.0,
    gamma_readout: float = 1e-3,
    init_sigma: float = 0.1,
    shifter: bool = True,
    modulator: bool = True,
) -> VideoModel:
    """Factorized 3D core + Gaussian readout per frame (+ shifter and behaviour modulator), Poisson-trained."""
    return _video_model(**locals())[0]


@_register(
    "video_latent",
    {**_VIDEO_LIMITS, "latent_dim": 0, "encoder_hidden": 1},
    above={"mask_fraction": 0.0, "zig_loc": 0.0},
    maximum={"mask_fraction": 0.95},
)
def video_latent(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 16,
    layers: int = 3,
    input_kernel: int = 7,
    hidden_kernel: int = 3,
    input_temporal: int = 9,
    hidden_temporal: int = 3,
    gamma_input: float = 0.01,
    gamma_hidden: float = 0.0,
    gamma_readout: float = 1e-3,
    init_sigma: float = 0.1,
    shifter: bool = True,
    modulator: bool = True,
    latent_dim: int = 4,
    encoder_hidden: int = 64,
    mask_fraction: float = 0.5,
    zig_loc: float = 0.005,
) -> LatentVideoModel:
    """The video model with ``latent_dim`` latents per frame and a zero-inflated gamma likelihood.

    ``latent_dim = 0`` gives the video-only model with the same likelihood (the baseline of the
    log-likelihood gain). Trained by ``standard_trainer`` through the model's ``training_loss``
    (the negative ELBO).
    """
    core_settings = dict(locals())
    latent = {name: core_settings.pop(name) for name in ("latent_dim", "encoder_hidden", "mask_fraction", "zig_loc")}
    video, shapes = _video_model(**core_settings)
    return LatentVideoModel(
        video,
        {k: s["n_neurons"] for k, s in shapes.items()},
        latent_dim=latent["latent_dim"],
        encoder_hidden=latent["encoder_hidden"],
        mask_fraction=latent["mask_fraction"],
        loc=latent["zig_loc"],
        mean_activity={k: s["mean_activity"] for k, s in shapes.items()},
    )


video_gaussian.takes_video = True  # type: ignore[attr-defined]
video_latent.takes_video = True  # type: ignore[attr-defined]
