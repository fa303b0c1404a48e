"""Supervised spike inference: a 1-D convolutional network trained on calcium / true-spike pairs.

Every trace is brought to a common rate (``rate`` Hz, bins of ``1/rate`` s) and to common
units (z-scored, plus a channel scaled by its noise level), so one network serves indicators,
frame rates and noise levels it was trained on together (Theis et al. 2016; Rupprecht et al.
2021). Training adds noise to the inputs so the network sees each recording at several noise
levels. The network is fully convolutional and non-causal: a bin's rate depends on
``receptive_field`` bins centred on it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import nn

from pipeline.device import choose_device

from .metric import spikefinder_correlation
from .recordings import Recording, check_fps, spike_counts
from .resampling import fill_gaps, rebin, to_100hz

NOISE_FLOOR = 0.02  # z units: a trace is never treated as less noisy than this


def normalize(trace: np.ndarray) -> tuple[np.ndarray, float]:
    """Z-scored trace and its noise level in z units (from the spread of differences).

    Returns ``(samples,)`` float32 and a float (0 for a constant trace, whose z-score is 0).
    """
    spread = float(np.std(trace))
    if not np.isfinite(spread) or spread <= 1e-9 * max(float(np.max(np.abs(trace))), 1e-30):
        return np.zeros(trace.shape, np.float32), 0.0
    z = (trace - np.median(trace)) / spread
    noise = float(np.median(np.abs(np.diff(z))) / (0.6745 * np.sqrt(2))) if z.size > 1 else 0.0
    return z.astype(np.float32), noise


def network_input(z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The network's channels from z-scored traces ``(B, L)`` and noise levels ``(B,)``: (B, 3, L)."""
    noise = noise.clamp(min=NOISE_FLOOR)[:, None]
    return torch.stack([z, z / noise / 10.0, torch.log(noise).expand_as(z)], dim=1)


class SpikeNetwork(nn.Module):
    """Dilated 1-D CNN: (B, 3, L) network inputs -> (B, L) non-negative spikes per bin."""

    def __init__(self, channels: int = 32, kernel: int = 9, dilations: Iterable[int] = (1, 2, 4, 8)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for dilation in dilations:
            layers += [
                nn.Conv1d(previous, channels, kernel, dilation=dilation, padding=dilation * (kernel // 2)),
                nn.ELU(),
            ]
            previous = channels
        layers.append(nn.Conv1d(previous, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.receptive_field = 1 + (kernel - 1) * sum(dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.layers(x)[:, 0])


@dataclass
class SpikeModel:
    """A trained network with the preprocessing it was trained with."""

    network: SpikeNetwork
    config: dict
    score: float = float("nan")
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        """CPU state dict of the network."""
        return {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state_dict: Mapping, config: dict, score: float = float("nan")) -> "SpikeModel":
        network = build_network(config)
        network.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
        network.eval()
        return cls(network, dict(config), score)

    def to_bytes(self) -> bytes:
        """The CPU state dict, serialized with ``torch.save``."""
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, config: dict, score: float = float("nan")) -> "SpikeModel":
        """A model from ``to_bytes()`` output and its config (loads on a machine without a GPU)."""
        state = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        return cls.from_state_dict(state, config, score)

    @property
    def window_seconds(self) -> float:
        """The shortest trace (s) the model accepts: its receptive field."""
        return self.network.receptive_field / self.config["rate"]


def build_network(config: Mapping) -> SpikeNetwork:
    return SpikeNetwork(config["channels"], config["kernel"], tuple(config["dilations"]))


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_recording(item) -> Recording:
    if isinstance(item, Recording):
        return item
    if not isinstance(item, Mapping):
        raise TypeError(
            f"a recording is a Recording or a mapping with calcium, fps and spikes, got {type(item).__name__}"
        )
    calcium = np.asarray(item["calcium"], dtype=np.float64)
    fps = check_fps(item["fps"])
    if "spikes" in item and item["spikes"] is not None:
        spikes = item["spikes"]
    elif "spike_times" in item:
        spikes = spike_counts(item["spike_times"], np.arange(calcium.size) / fps)
    else:
        raise KeyError("a recording needs 'spikes' (counts per frame) or 'spike_times' (s)")
    return Recording(calcium, spikes, fps, dataset=str(item.get("dataset", "")), name=str(item.get("name", "")))


def _prepare(recording: Recording, rate: float, smoothing: float) -> dict | None:
    trace, missing = fill_gaps(recording.calcium)
    missing |= np.isnan(recording.spikes)
    n_out = int(recording.calcium.size * rate / recording.fps)
    if n_out < 8:
        return None
    z, noise = normalize(rebin(trace, recording.fps, rate, n_out, "mean"))
    target = rebin(np.nan_to_num(recording.spikes), recording.fps, rate, n_out, "sum")
    valid = rebin((~missing).astype(float), recording.fps, rate, n_out, "mean") > 0.999
    if smoothing > 0:
        target = gaussian_filter1d(target, smoothing * rate, mode="constant")
    return {"z": z, "noise": noise, "target": target.astype(np.float32), "valid": valid, "dataset": recording.dataset}


def train_spike_model(
    recordings: Iterable,
    *,
    rate: float = 25.0,
    channels: int = 32,
    kernel: int = 9,
    dilations: tuple = (1, 2, 4, 8),
    window: int = 256,
    batch_size: int = 16,
    steps: int = 1500,
    learning_rate: float = 0.002,
    smoothing: float = 0.03,
    noise_augmentation: float = 1.5,
    seed: int = 0,
    threads: int = 1,
) -> SpikeModel:
    """Train the supervised network on ground-truth recordings.

    Parameters
    ----------
    recordings
        ``Recording`` objects or mappings with ``calcium`` (frames,), ``fps`` (Hz) and
        ``spikes`` (frames,) counts per frame or ``spike_times`` (s, from the first frame).
        NaN samples are left out of the loss. Each ``dataset`` label weighs equally.
    rate
        The common rate (Hz) the network works at.
    channels, kernel, dilations
        Network width, kernel size (bins) and the dilation of each layer.
    window, batch_size, steps
        Training windows (bins), windows per step and the number of Adam steps.
    smoothing
        Gaussian width (s) of the target spike trains.
    noise_augmentation
        Added Gaussian noise is up to this multiple of a recording's own noise.
    seed
        Seeds every random choice: equal seeds and data give equal weights.
    threads
        Torch CPU threads during training.

    Returns
    -------
    SpikeModel
        With ``score``: the mean spikefinder correlation over the training recordings.
    """
    config = {
        "rate": float(rate),
        "channels": int(channels),
        "kernel": int(kernel),
        "dilations": [int(d) for d in dilations],
        "smoothing": float(smoothing),
    }
    recordings = [_as_recording(r) for r in recordings]
    prepared = [
        p for p in (_prepare(r, rate, smoothing) for r in recordings) if p is not None and p["z"].size >= window
    ]
    if not prepared:
        raise ValueError(f"no training recording is at least {window / rate:.1f} s long (window of {window} bins)")
    rng = np.random.default_rng(seed)
    datasets = sorted({p["dataset"] for p in prepared})
    by_dataset = {d: [i for i, p in enumerate(prepared) if p["dataset"] == d] for d in datasets}
    device = choose_device()  # CUDA when a GPU is visible (a GPU worker), else the CPU
    with _threads(threads):
        torch.manual_seed(seed)
        network = build_network(config)
        mean_rate = float(np.mean([p["target"][p["valid"]].mean() for p in prepared if p["valid"].any()])) * rate
        with torch.no_grad():  # start at the mean firing rate (inverse softplus)
            network.layers[-1].bias.fill_(float(np.log(np.expm1(max(mean_rate, 1e-3)))))
        network.to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to zero
            optimizer,
            lambda i: (
                (i + 1) / warmup if i < warmup else 0.5 * (1 + np.cos(np.pi * (i - warmup) / max(1, steps - warmup)))
            ),
        )
        history = []
        network.train()
        for step in range(steps):
            z, noise, target, valid = _batch(prepared, by_dataset, datasets, rng, batch_size, window)
            extra = rng.uniform(0, noise_augmentation, size=batch_size) * noise
            z = z + rng.standard_normal(z.shape).astype(np.float32) * extra[:, None].astype(np.float32)
            noise = np.sqrt(noise**2 + extra**2)
            inputs = network_input(torch.from_numpy(z), torch.from_numpy(noise.astype(np.float32)))
            prediction = network(inputs.to(device))
            mask = torch.from_numpy(valid).to(device)
            # in spikes per second: targets of order one whatever the rate
            loss = ((prediction - torch.from_numpy(target).to(device) * rate) ** 2)[mask].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"spike model training diverged at step {step}: loss is {loss.item()}")
            history.append(float(loss.detach()))
        network.eval()
    model = SpikeModel(network, config, history=history)
    scores = [
        spikefinder_correlation(to_100hz(predict(model, r.calcium, r.fps), r.fps), to_100hz(r.spikes, r.fps))
        for r in recordings
    ]
    model.score = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
    return model


def _batch(prepared, by_dataset, datasets, rng, batch_size, window):
    z = np.empty((batch_size, window), np.float32)
    target = np.empty((batch_size, window), np.float32)
    valid = np.empty((batch_size, window), bool)
    noise = np.empty(batch_size)
    for b in range(batch_size):
        members = by_dataset[datasets[rng.integers(len(datasets))]]
        lengths = np.array([prepared[i]["z"].size for i in members], float)
        p = prepared[members[rng.choice(len(members), p=lengths / lengths.sum())]]
        start = rng.integers(p["z"].size - window + 1)
        z[b], target[b], valid[b] = (p[k][start : start + window] for k in ("z", "target", "valid"))
        noise[b] = p["noise"]
    return z, noise, target, valid


def predict(model: SpikeModel, trace: np.ndarray, fps: float) -> np.ndarray:
    """Inferred spikes per frame of one trace.

    Parameters
    ----------
    trace
        ``(frames,)``; NaN samples are missing (interpolated over, NaN in the output).
    fps
        Frame rate in Hz.

    Returns
    -------
    ``(frames,)`` float64 expected spike counts per frame; NaN where ``trace`` is NaN; zeros
    for a constant trace.

    Raises
    ------
    ValueError
        If fps is not positive, or the trace is shorter than the model's receptive field.
    """
    fps = check_fps(fps)
    trace = np.asarray(trace, dtype=np.float64)
    rate = model.config["rate"]
    field_bins = model.network.receptive_field
    n_out = int(np.ceil(trace.size * rate / fps))
    if n_out < field_bins:
        raise ValueError(
            f"trace has {trace.size} samples at {fps:g} Hz ({trace.size / fps:.2f} s); the supervised model "
            f"needs at least {model.window_seconds:.2f} s ({field_bins} bins at {rate:g} Hz)"
        )
    filled, missing = fill_gaps(trace)
    out = np.zeros(trace.size)
    if not missing.all():
        z, noise = normalize(rebin(filled, fps, rate, n_out, "mean"))
        if noise > 0:
            with torch.no_grad():
                x = network_input(torch.from_numpy(z)[None], torch.tensor([noise], dtype=torch.float32))
                pad = field_bins // 2
                x = nn.functional.pad(x, (pad, pad), mode="reflect")
                rates = model.network.layers(x.to(next(model.network.parameters()).device))
                rates = nn.functional.softplus(rates[:, 0, pad : pad + n_out])[0].double().cpu().numpy() / rate
            out = rebin(rates, rate, fps, trace.size, "sum")
    out[missing] = np.nan
    return out
