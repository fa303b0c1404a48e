"""Spike inference from calcium traces: AR deconvolution, a supervised network, the spikefinder metric.

``infer_spikes(traces, fps)`` is the entry point; ``method`` names a builder registered with
``pipeline.identity.register("spikes", ...)`` (the same names ``SpikeMethod`` rows use):

- ``"deconvolution"``: non-negative AR(1)/AR(2) deconvolution, parameters from the trace.
  Needs no ground truth: the default.
- ``"supervised"``: a network from ``train_spike_model`` on ground-truth recordings.
- ``"pretrained"``: the network shipped with the package (``pipeline.spikes.weights``),
  trained on public ground truth: supervised inference without ground truth of your own.
"""

from __future__ import annotations

import numpy as np

from pipeline import identity

from .deconvolution import deconvolve, estimate_ar, estimate_noise
from .metric import spikefinder_correlation
from .recordings import Recording, check_fps, read_cascade, read_spikefinder, spike_counts
from .supervised import SpikeModel, predict, train_spike_model

__all__ = [
    "infer_spikes",
    "train_spike_model",
    "spikefinder_correlation",
    "SpikeModel",
    "Recording",
    "read_spikefinder",
    "read_cascade",
    "spike_counts",
    "deconvolve",
    "estimate_noise",
    "estimate_ar",
    "deconvolution",
    "supervised",
    "pretrained",
]


def _check_traces(traces) -> np.ndarray:
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim == 1:
        traces = traces[None]
    if traces.ndim != 2:
        raise ValueError(f"traces must be (cells, samples), got shape {traces.shape}")
    if np.isinf(traces).any():
        raise ValueError("traces contain infinite values (expected finite numbers, or NaN for missing samples)")
    return traces


def _check_deconvolution(config: dict) -> None:
    """The deconvolution's validation hook: AR order 1 or 2, positive decay and shrinkage."""
    if config["order"] not in (1, 2):
        raise ValueError(f"order must be 1 or 2 (AR(1) or AR(2)), got {config['order']!r}")
    identity.bounds(above={"tau": 0.0, "fudge_factor": 0.0}, maximum={"fudge_factor": 1.0})(config)


@identity.register("spikes", "deconvolution", validate=_check_deconvolution)
def deconvolution(
    traces: np.ndarray, fps: float, model=None, *, order: int = 1, tau: float = 1.0, fudge_factor: float = 0.99
) -> np.ndarray:
    """Noise-constrained non-negative AR deconvolution of each trace (see ``deconvolve``).

    Parameters
    ----------
    traces
        ``(cells, samples)`` fluorescence; NaN = missing sample.
    fps
        Frame rate (Hz).
    model
        Unused (the deconvolution needs no trained model).
    order
        1 or 2: AR order of the calcium model.
    tau, fudge_factor
        Fallback decay time (s) and root shrinkage, see ``deconvolve``.

    Returns
    -------
    ``(cells, samples)`` float32 spikes per frame (trace units); NaN where the trace is NaN;
    zeros for a constant trace. Missing samples inside a trace are interpolated over.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2 (AR(1) or AR(2)), got {order!r}")
    fps = check_fps(fps)
    traces = _check_traces(traces)
    out = np.full(traces.shape, np.nan, np.float32)
    for i, trace in enumerate(traces):
        missing = np.isnan(trace)
        if missing.all():
            continue
        index = np.arange(trace.size)
        filled = np.interp(index, index[~missing], trace[~missing])
        spikes, _ = deconvolve(filled, fps, order=order, tau=tau, fudge_factor=fudge_factor)
        spikes[missing] = np.nan
        out[i] = spikes
    return out


@identity.register("spikes", "supervised")
def supervised(
    traces: np.ndarray,
    fps: float,
    model: SpikeModel | None = None,
    *,
    training_set: str,
    rate: float = 25.0,
    channels: int = 32,
    kernel: int = 9,
    dilations: list = (1, 2, 4, 8),
    window: int = 256,
    batch_size: int = 16,
    steps: int = 1500,
    learning_rate: float = 0.002,
    smoothing: float = 0.03,
    noise_augmentation: float = 1.5,
    objective: str = "correlation",
    calibrate: str | None = None,
    focus: dict | None = None,
    noise_level: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Spikes from a trained network (``train_spike_model``), one trace at a time.

    The keyword parameters are the training configuration of the ``SpikeModel`` this method
    uses (``training_set`` names its ground-truth recordings); inference needs only ``model``.

    Returns
    -------
    ``(cells, samples)`` float32 expected spike counts per frame; NaN where the trace is NaN.

    Raises
    ------
    ValueError
        Without a model, or for traces shorter than the model's receptive field.
    """
    if model is None:
        raise ValueError("method 'supervised' needs a trained model (train_spike_model or the SpikeModel table)")
    return _predict_all(model, traces, fps)


def _predict_all(model: SpikeModel, traces, fps: float) -> np.ndarray:
    """``predict`` on every trace: ``(cells, samples)`` float32."""
    fps = check_fps(fps)
    traces = _check_traces(traces)
    return np.stack([predict(model, trace, fps) for trace in traces]).astype(np.float32)


def infer_spikes(
    traces: np.ndarray, fps: float, method: str = "deconvolution", model: SpikeModel | None = None, **config
) -> np.ndarray:
    """Inferred spikes per frame for every trace.

    Parameters
    ----------
    traces
        ``(cells, samples)`` (or ``(samples,)``) fluorescence; NaN marks a missing sample.
    fps
        Frame rate in Hz (> 0).
    method
        A registered spikes builder: ``"deconvolution"`` (default, no ground truth needed) or
        ``"supervised"`` (needs ``model``).
    model
        A ``SpikeModel`` from ``train_spike_model``, for ``"supervised"``.
    **config
        The method's keyword parameters (validated: an unknown key is a ConfigError).

    Returns
    -------
    ``(cells, samples)`` float32; NaN where the input is NaN.
    """
    fn = identity.resolve("spikes", method)
    if method == "supervised" and "training_set" not in config:
        config["training_set"] = ""
    return fn(traces, fps, model, **identity.normalize(fn, config, name=f"spikes method {method!r}"))


@identity.register("spikes", "pretrained")
def pretrained(
    traces: np.ndarray, fps: float, model: SpikeModel | None = None, *, weights: str = "default"
) -> np.ndarray:
    """Spikes from the network shipped with the package (``pipeline/spikes/weights/<weights>.pt``).

    Parameters
    ----------
    weights
        Which shipped weights: ``"default"`` (trained on the spikefinder and CASCADE ground
        truth; ``pipeline.spikes.weights.load`` gives its provenance).
    model
        Unused (the weights come from the package).

    Returns
    -------
    ``(cells, samples)`` float32 expected spike counts per frame; NaN where the trace is NaN.
    """
    from .weights import load

    network, _provenance = load(weights)
    return _predict_all(network, traces, fps)
