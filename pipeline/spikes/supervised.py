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
BLURS = (0.0, 0.02, 0.04, 0.06, 0.08)  # s: the output smoothings calibrate_timing chooses from


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


def trace_noise(trace: np.ndarray, fps: float, rate: float = 25.0) -> float:
    """A trace's noise level as the network sees it: ``normalize``'s, at ``rate`` Hz (NaN filled)."""
    trace, _ = fill_gaps(np.asarray(trace, dtype=np.float64))
    n_out = int(trace.size * rate / check_fps(fps))
    return normalize(rebin(trace, fps, rate, n_out, "mean"))[1] if n_out > 1 else 0.0


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

    def with_config(self, **changes) -> "SpikeModel":
        """The same network with ``changes`` to its config (e.g. a calibrated ``shift``)."""
        return SpikeModel(self.network, {**self.config, **changes}, self.score, self.history)

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
    noise_level: float | None = None,
    focus: Mapping[str, float] | None = None,
    objective: str = "correlation",
    calibrate: str | None = None,
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
    noise_level
        Noise-matched training (Rupprecht et al. 2021): every training window is brought to
        about this noise level (z units, as ``normalize`` measures it; drawn within ±25%),
        windows already noisier are left as they are. Replaces ``noise_augmentation``. Use the
        median noise of the traces the model is for.
    objective
        ``"mse"``: squared error of the rate (spikes/s); ``"correlation"``: one minus the
        correlation of predicted and true spikes per window (the spikefinder metric when
        ``rate`` is 25 Hz, bins of 40 ms), plus a tenth of the normalized squared error; the
        output is then scaled (``config["gain"]``) so that it sums to the training spikes.
    calibrate
        A dataset of the training recordings: after training, the model's output is shifted in
        time and smoothed by the amounts (``calibrate_timing``) that best match that dataset's
        spikes, kept in ``config["shift"]`` and ``config["blur"]``. Each preparation has its own
        delay between spikes and recorded calcium (indicator rise, acquisition, resampling); a
        model for one preparation should be calibrated on its cells.
    focus
        ``{dataset: fraction}``: that fraction of the training windows comes from that dataset
        (for a model specialized to one preparation); the other datasets share the rest equally.
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
    probabilities = _dataset_probabilities(datasets, focus)
    known = sorted({r.dataset for r in recordings})
    if calibrate is not None and calibrate not in known:
        raise ValueError(f"calibrate names dataset {calibrate!r}, which has no training recording: {known}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective is one of {sorted(OBJECTIVES)}, got {objective!r}")
    if noise_level is not None and not 0 < noise_level < 1:
        raise ValueError(f"noise_level is a noise level in z units, between 0 and 1; got {noise_level!r}")
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
            z, noise, target, valid = _batch(prepared, by_dataset, datasets, probabilities, rng, batch_size, window)
            if noise_level is None:
                extra = rng.uniform(0, noise_augmentation, size=batch_size) * noise
            else:
                level = noise_level * np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=batch_size))
                extra = np.sqrt(np.maximum(level**2 - noise**2, 0.0))
            z = z + rng.standard_normal(z.shape).astype(np.float32) * extra[:, None].astype(np.float32)
            noise = np.sqrt(noise**2 + extra**2)
            inputs = network_input(torch.from_numpy(z), torch.from_numpy(noise.astype(np.float32)))
            prediction = network(inputs.to(device))
            # in spikes per second: targets of order one whatever the rate
            loss = OBJECTIVES[objective](
                prediction, torch.from_numpy(target).to(device) * rate, torch.from_numpy(valid).to(device)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"spike model training diverged at step {step}: loss is {loss.item()}")
            history.append(float(loss.detach()))
        network.eval()
    model = SpikeModel(network, config, history=history)
    runs = [_network_rates(model, r.calcium, r.fps) for r in recordings]  # the network runs once per recording
    if objective != "mse":  # the objective ignores the scale: match the total number of spikes
        predicted = [_output(model, rates, missing, r.fps) for (rates, missing), r in zip(runs, recordings)]
        total = sum(float(np.nansum(np.where(np.isnan(r.spikes), np.nan, p))) for r, p in zip(recordings, predicted))
        model.config["gain"] = float(sum(np.nansum(r.spikes) for r in recordings) / total) if total > 0 else 1.0
    if calibrate is not None:
        model.config.update(calibrate_timing(model, [r for r in recordings if r.dataset == calibrate]))
    scores = [
        spikefinder_correlation(to_100hz(_output(model, rates, missing, r.fps), r.fps), to_100hz(r.spikes, r.fps))
        for (rates, missing), r in zip(runs, recordings)
    ]
    model.score = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
    return model


def _mse(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return ((prediction - target) ** 2)[valid].mean()


def _correlation(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over windows of 1 - Pearson r (valid bins only), plus 0.1 x the normalized squared error."""
    weight = valid.float()
    count = weight.sum(1).clamp(min=1)
    centred_p = (prediction - (prediction * weight).sum(1, keepdim=True) / count[:, None]) * weight
    centred_t = (target - (target * weight).sum(1, keepdim=True) / count[:, None]) * weight
    spread_t = (centred_t**2).sum(1)
    r = (centred_p * centred_t).sum(1) / torch.sqrt((centred_p**2).sum(1) * spread_t + 1e-12)
    informative = spread_t > 1e-9  # windows without spikes have no correlation
    term = (1 - r[informative]).mean() if informative.any() else prediction.sum() * 0
    scale = (target[valid] ** 2).mean().clamp(min=1e-6)
    return term + 0.1 * _mse(prediction, target, valid) / scale


OBJECTIVES = {"mse": _mse, "correlation": _correlation}


def _dataset_probabilities(datasets: list, focus: Mapping[str, float] | None) -> np.ndarray | None:
    """How often each dataset is drawn: ``focus``'s fractions and the rest shared (None: equally)."""
    if not focus:
        return None
    unknown = sorted(set(focus) - set(datasets))
    if unknown:
        raise ValueError(f"focus names datasets {unknown} that are not among the training recordings: {datasets}")
    fractions = np.array([float(focus.get(d, 0.0)) for d in datasets])
    total = float(fractions.sum())
    if (fractions < 0).any() or total > 1 + 1e-9 or (total < 1 - 1e-9 and len(focus) == len(datasets)):
        raise ValueError(
            f"focus fractions are in [0, 1] and add up to at most 1 (to 1 with every dataset), got {dict(focus)}"
        )
    rest = [i for i, d in enumerate(datasets) if d not in focus]
    fractions[rest] = (1.0 - total) / len(rest) if rest else 0.0
    return fractions / fractions.sum()


def _batch(prepared, by_dataset, datasets, probabilities, rng, batch_size, window):
    z = np.empty((batch_size, window), np.float32)
    target = np.empty((batch_size, window), np.float32)
    valid = np.empty((batch_size, window), bool)
    noise = np.empty(batch_size)
    for b in range(batch_size):
        pick = rng.integers(len(datasets)) if probabilities is None else rng.choice(len(datasets), p=probabilities)
        members = by_dataset[datasets[pick]]
        lengths = np.array([prepared[i]["z"].size for i in members], float)
        p = prepared[members[rng.choice(len(members), p=lengths / lengths.sum())]]
        start = rng.integers(p["z"].size - window + 1)
        z[b], target[b], valid[b] = (p[k][start : start + window] for k in ("z", "target", "valid"))
        noise[b] = p["noise"]
    return z, noise, target, valid


def calibrate_timing(
    model: SpikeModel,
    recordings: Iterable,
    limit: float = 0.2,
    step: float = 0.02,
    blurs: Iterable[float] = BLURS,
) -> dict:
    """The time shift and blur of the model's output that maximize the mean spikefinder
    correlation on ``recordings`` (ground truth of one preparation).

    ``shift`` (s) is chosen on a grid of ``step`` within ``±limit``: positive moves the output
    earlier (the network answered late on these cells). ``blur`` (s) is the width of a Gaussian
    that smooths the output, one of ``blurs``: a preparation whose spike timing the network
    reads less precisely scores higher with a smoother output. Of equal scores the smallest
    shift, then the smallest blur, wins. The network runs once per recording.

    Returns ``{"shift": float, "blur": float}``, for ``model.with_config(**...)``.
    """
    recordings = [_as_recording(r) for r in recordings]
    rate = model.config["rate"]
    grid = sorted(np.arange(-round(limit / step), round(limit / step) + 1) * step, key=abs)
    blurs = sorted(float(b) for b in blurs)
    if not blurs or blurs[0] < 0:
        raise ValueError(f"blurs are Gaussian widths in seconds, at least 0; got {blurs}")
    runs = [(*_network_rates(model, r.calcium, r.fps), r.fps, to_100hz(r.spikes, r.fps)) for r in recordings]
    best, best_score = {"shift": 0.0, "blur": 0.0}, -np.inf
    for shift in grid:
        for blur in blurs:
            scores = [
                spikefinder_correlation(to_100hz(_timed(rates, missing, fps, rate, shift, blur, 1.0), fps), truth)
                for rates, missing, fps, truth in runs
            ]
            score = float(np.nanmean(scores)) if np.isfinite(scores).any() else -np.inf
            if score > best_score + 1e-9:
                best, best_score = {"shift": float(round(shift, 6)), "blur": blur}, score
    return best


def _shift(rates: np.ndarray, bins: float) -> np.ndarray:
    """``rates`` moved earlier by ``bins`` (fractional, linearly interpolated; the ends repeat)."""
    index = np.arange(rates.size, dtype=np.float64)
    return np.interp(index + bins, index, rates)


def _network_rates(model: SpikeModel, trace: np.ndarray, fps: float) -> tuple[np.ndarray | None, np.ndarray]:
    """The network's spikes per bin at its rate (None for a constant or all-missing trace) and
    the trace's missing samples; raises for a trace shorter than the receptive field."""
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
    if missing.all():
        return None, missing
    z, noise = normalize(rebin(filled, fps, rate, n_out, "mean"))
    if noise <= 0:
        return None, missing
    with torch.no_grad():
        x = network_input(torch.from_numpy(z)[None], torch.tensor([noise], dtype=torch.float32))
        pad = field_bins // 2
        x = nn.functional.pad(x, (pad, pad), mode="reflect")
        rates = model.network.layers(x.to(next(model.network.parameters()).device))
        rates = nn.functional.softplus(rates[:, 0, pad : pad + n_out])[0].double().cpu().numpy() / rate
    return rates, missing


def _timed(rates, missing, fps, rate, shift, blur, gain) -> np.ndarray:
    """Network rates moved by ``shift`` s, smoothed by a Gaussian of ``blur`` s, scaled by
    ``gain``, as spikes per frame at ``fps`` (NaN where the trace is missing)."""
    out = np.zeros(missing.size)
    if rates is not None:
        if shift:
            rates = _shift(rates, shift * rate)
        if blur:
            rates = gaussian_filter1d(rates, blur * rate, mode="nearest")
        out = rebin(rates * gain, rate, fps, missing.size, "sum")
    out[missing] = np.nan
    return out


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
    ``(frames,)`` float64 expected spike counts per frame, scaled by the model's
    ``config["gain"]``, moved by its calibrated ``config["shift"]`` (s) and smoothed by its
    ``config["blur"]`` (s) where it has them; NaN where ``trace`` is NaN; zeros for a
    constant trace.

    Raises
    ------
    ValueError
        If fps is not positive, or the trace is shorter than the model's receptive field.
    """
    return _output(model, *_network_rates(model, trace, fps), check_fps(fps))


def _output(model: SpikeModel, rates, missing, fps: float) -> np.ndarray:
    """``_timed`` with the model's calibrated shift, blur and gain (none: 0, 0 and 1)."""
    c = model.config
    return _timed(rates, missing, fps, c["rate"], c.get("shift", 0.0), c.get("blur", 0.0), c.get("gain", 1.0))
