"""When each frame of a scan was taken, from its file's header, and stimulus onsets in seconds as frames.

Times are seconds on the clock of the scan's start trigger, the clock a stimulus computer that
receives the same trigger logs its onsets on:

- ScanImage 2016+ / 5: the ``frameTimestamps_sec`` that every page's description carries;
- ScanImage 3.x: the header's frame rate (``state.acq.frameRate``) and the delay of the first
  frame after the trigger (``state.internal.triggerFrameDelayMS``);
- any other file: ``frame k`` at ``k / fps`` with the frame rate the caller gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.imaging import io

# an onset logged a rounding error after a frame's start still belongs to that frame
_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class FrameTiming:
    """Start times of the frames of one channel and field.

    Attributes
    ----------
    times : np.ndarray
        (frames,) float64 seconds after the scan's start trigger.
    source : str
        Where they came from: ``"ScanImage frame timestamps"``, ``"ScanImage 3.x header"`` or
        ``"frame rate"``.
    """

    times: np.ndarray
    source: str


def frame_times(
    path: str | Path, *, frame_rate: float | None = None, channel: int = 0, field: int = 0, axes: str | None = None
) -> FrameTiming:
    """Start time of every frame of a movie file, from its header where it has them.

    Parameters
    ----------
    path
        The movie file (see ``pipeline.imaging.io.movie_info``).
    frame_rate
        Volume rate (Hz) for files whose header has none.
    channel, field
        The channel and field (plane) whose frames are timed.

    Raises
    ------
    ValueError
        The file has no timing and ``frame_rate`` is not a positive number.
    """
    path = Path(path)
    info = io.movie_info(path, axes=axes)
    if info.software.startswith("ScanImage") and not info.software.startswith("ScanImage 3"):
        stamps = _page_timestamps(path, info, channel, field)
        if stamps is not None:
            return FrameTiming(stamps, "ScanImage frame timestamps")
    fps = info.fps or frame_rate
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise ValueError(
            f"{path}: no frame timing in the file's header and frame rate {frame_rate!r} (expected a frame rate > 0 Hz)"
        )
    start = 0.0
    source = "frame rate"
    if info.software.startswith("ScanImage 3"):
        start = float(info.header.get("state.internal.triggerFrameDelayMS", 0) or 0) / 1000.0
        source = "ScanImage 3.x header"
    return FrameTiming(start + np.arange(info.nframes, dtype=np.float64) / float(fps), source)


def _page_timestamps(path: Path, info: io.MovieInfo, channel: int, field: int) -> np.ndarray | None:
    """``frameTimestamps_sec`` of the pages of one channel and field, or None when a page lacks it."""
    import tifffile

    per_volume = info.nchannels * info.nfields
    offset = field * info.nchannels + channel
    times = np.empty(info.nframes, dtype=np.float64)
    with tifffile.TiffFile(path, is_scanimage=False) as tif:
        for t in range(info.nframes):
            values = io.parse_key_values(tif.pages[t * per_volume + offset].description or "")
            stamp = values.get("frameTimestamps_sec")
            if not isinstance(stamp, (int, float)):
                return None
            times[t] = float(stamp)
    return times


def onset_frames(onsets: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The frame in which each onset falls: the first frame starting at or after it.

    Parameters
    ----------
    onsets
        (trials,) seconds on the frames' clock.
    times
        (frames,) start times of the frames, increasing (``FrameTiming.times``).

    Returns
    -------
    np.ndarray
        (trials,) int64 frame indices.

    Raises
    ------
    ValueError
        An onset before the first frame's start or after the last frame's.

    Examples
    --------
    >>> onset_frames(np.array([0.0, 0.25, 0.26]), np.arange(4) * 0.25).tolist()
    [0, 1, 2]
    """
    onsets = np.asarray(onsets, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    frames = np.searchsorted(times, onsets - _TOLERANCE_S, side="left")
    late = np.flatnonzero(frames >= len(times))
    if late.size:
        raise ValueError(
            f"onset {onsets[late[0]]:g} s is after the last frame's start ({times[-1]:g} s; expected "
            f"onsets within the scan's {len(times)} frames)"
        )
    early = np.flatnonzero(onsets < times[0] - _TOLERANCE_S)
    if early.size:
        raise ValueError(
            f"onset {onsets[early[0]]:g} s is before the scan's first frame ({times[0]:g} s; expected "
            "onsets on the clock of the scan's start trigger)"
        )
    return frames.astype(np.int64)


def duration_frames(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Frames from each onset's frame up to the last frame starting before the presentation ends (at least 1).

    Parameters
    ----------
    onsets, durations
        (trials,) seconds.
    times
        (frames,) start times of the frames.
    """
    first = onset_frames(onsets, times)
    end = np.searchsorted(
        np.asarray(times, dtype=np.float64),
        np.asarray(onsets, np.float64) + np.asarray(durations, np.float64) - _TOLERANCE_S,
    )
    return np.maximum(end - first, 1).astype(np.int64)
