"""Ground-truth recordings (calcium with simultaneous spikes) and readers for their file layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Recording:
    """One cell's calcium trace with its true spikes.

    Attributes
    ----------
    calcium
        ``(frames,)`` float fluorescence (dF/F or any linear scale); NaN = no sample.
    spikes
        ``(frames,)`` float true spike counts per frame; NaN = no sample.
    fps
        Frame rate in Hz.
    dataset, name
        Labels (dataset: the group used for leave-one-dataset-out cross-validation).
    """

    calcium: np.ndarray
    spikes: np.ndarray
    fps: float
    dataset: str = ""
    name: str = ""

    def __post_init__(self):
        self.calcium = np.asarray(self.calcium, dtype=np.float32)
        self.spikes = np.asarray(self.spikes, dtype=np.float32)
        if self.calcium.ndim != 1 or self.calcium.shape != self.spikes.shape:
            raise ValueError(
                f"recording {self.name!r}: calcium {self.calcium.shape} and spikes {self.spikes.shape} "
                "must be 1-D arrays of equal length"
            )
        self.fps = check_fps(self.fps)


def check_fps(fps) -> float:
    """``fps`` as a positive finite float, or a ValueError naming it."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    return value


def spike_counts(spike_times: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """Spike counts per frame from spike times.

    Parameters
    ----------
    spike_times
        ``(spikes,)`` times in seconds.
    frame_times
        ``(frames,)`` increasing frame times in seconds; frame k collects the spikes closer to
        it than to its neighbours.

    Returns
    -------
    ``(frames,)`` float32 counts.
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    if frame_times.ndim != 1 or frame_times.size < 2 or np.any(np.diff(frame_times) <= 0):
        raise ValueError("frame_times must be an increasing (frames,) array with at least 2 frames")
    middle = (frame_times[1:] + frame_times[:-1]) / 2
    edges = np.concatenate(
        [[frame_times[0] - (middle[0] - frame_times[0])], middle, [frame_times[-1] + (frame_times[-1] - middle[-1])]]
    )
    counts, _ = np.histogram(np.asarray(spike_times, dtype=np.float64).ravel(), bins=edges)
    return counts.astype(np.float32)


def read_spikefinder_csv(path: str | Path) -> list[np.ndarray]:
    """Columns of a spikefinder CSV (header ``0..K-1``, one column per cell, empty = no sample).

    Returns one ``(samples,)`` float array per cell, trailing empty samples removed (cells of a
    dataset have different lengths); empty samples inside a trace stay NaN.
    """
    import pandas as pd

    table = pd.read_csv(path)
    columns = []
    for name in table.columns:
        values = table[name].to_numpy(dtype=np.float64)
        finite = np.flatnonzero(~np.isnan(values))
        columns.append(values[: finite[-1] + 1] if finite.size else values[:0])
    return columns


def read_spikefinder(calcium_csv: str | Path, spikes_csv: str | Path, dataset: str = "") -> list[Recording]:
    """The recordings of one spikefinder dataset (``N.train.calcium.csv`` + ``N.train.spikes.csv``, 100 Hz)."""
    calcium = read_spikefinder_csv(calcium_csv)
    spikes = read_spikefinder_csv(spikes_csv)
    if len(calcium) != len(spikes):
        raise ValueError(f"{calcium_csv} has {len(calcium)} cells but {spikes_csv} has {len(spikes)}")
    stem = Path(calcium_csv).name.split(".calcium")[0]
    out = []
    for index, (c, s) in enumerate(zip(calcium, spikes)):
        n = min(c.size, s.size)
        out.append(Recording(c[:n], s[:n], 100.0, dataset=dataset or stem, name=f"{stem}.{index}"))
    return out


def read_cascade(path: str | Path, dataset: str = "") -> list[Recording]:
    """The recordings in one CASCADE ground-truth ``.mat`` file.

    The file holds a struct (array) ``CAttached`` with ``fluo_time`` (s), ``fluo_mean`` (dF/F)
    and ``events_AP`` (action potential times in units of 1e-4 s). MATLAB 5 files are read
    with scipy, v7.3 (HDF5) files with h5py.
    """
    path = Path(path)
    fields = _cascade_structs(path)
    out = []
    for index, (time, fluo, events) in enumerate(fields):
        time = np.asarray(time, dtype=np.float64).ravel()
        fluo = np.asarray(fluo, dtype=np.float64).ravel()
        events = np.asarray(events, dtype=np.float64).ravel() / 1e4
        if time.size != fluo.size or time.size < 2:
            raise ValueError(f"{path.name} recording {index}: {time.size} frame times for {fluo.size} samples")
        fps = 1.0 / float(np.median(np.diff(time)))
        suffix = f".{index}" if len(fields) > 1 else ""
        out.append(
            Recording(
                fluo, spike_counts(events, time), fps, dataset=dataset or path.parent.name, name=path.stem + suffix
            )
        )
    return out


def _cascade_structs(path: Path) -> list[tuple]:
    import scipy.io

    try:
        struct = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["CAttached"]
    except NotImplementedError:  # MATLAB v7.3 is HDF5
        return _cascade_structs_h5(path)
    structs = list(np.atleast_1d(struct))
    return [(s.fluo_time, s.fluo_mean, getattr(s, "events_AP", np.zeros(0))) for s in structs]


def _cascade_structs_h5(path: Path) -> list[tuple]:
    import h5py

    names = ("fluo_time", "fluo_mean", "events_AP")
    with h5py.File(path, "r") as f:
        group = f["CAttached"]
        first = group[names[0]]
        if first.dtype != h5py.ref_dtype:  # a single struct: fields are numeric arrays
            return [tuple(group[n][()] for n in names)]
        # a struct array: each field is an array of references, one per element
        refs = {n: np.asarray(group[n]).ravel() for n in names}
        return [tuple(f[refs[n][i]][()] for n in names) for i in range(refs[names[0]].size)]
