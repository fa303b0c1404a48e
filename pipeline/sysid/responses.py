"""Trial responses: the activity of every unit in a window after each stimulus onset."""

from __future__ import annotations

import numpy as np

from pipeline import identity


def _check_window(config: dict) -> None:
    """The response window's validation hook: 0 <= start < stop."""
    if not config["stop"] > config["start"] >= 0:
        raise ValueError(f"start = {config['start']}, stop = {config['stop']} s (expected 0 <= start < stop)")


@identity.register("response", name="window_mean", validate=_check_window)
def window_mean(
    activity: np.ndarray,
    onsets: np.ndarray,
    fps: float,
    behavior: dict[str, np.ndarray] | None = None,
    *,
    start: float = 0.05,
    stop: float = 0.5,
) -> dict[str, np.ndarray | None]:
    """Mean activity of every unit, and mean behaviour, in a window after every onset.

    Parameters
    ----------
    activity
        (units, frames) inferred spike rate per frame.
    onsets
        (trials,) frame index of every stimulus onset.
    fps
        Frame rate (Hz).
    behavior
        Optional per-frame traces (frames,): ``running`` (cm/s), ``pupil_radius``,
        ``pupil_x``, ``pupil_y`` (eye-camera pixels); missing keys are allowed only as a whole.
    start, stop
        The window, in seconds after onset: frames ``onset + round(start * fps)`` up to (not
        including) ``onset + max(round(stop * fps), round(start * fps) + 1)``.

    Returns
    -------
    dict
        ``responses`` (trials, units) float32; ``behavior`` (trials, 3) float32 as pupil
        radius, its derivative (per second), running speed, and ``pupil_center`` (trials, 2)
        float32 as (x, y) minus their mean over trials -- both None without ``behavior``.

    Raises
    ------
    ValueError
        If a window leaves the recording or the window is empty, naming the trial.
    """
    activity = np.asarray(activity, dtype=np.float64)
    onsets = np.asarray(onsets, dtype=np.int64)
    if activity.ndim != 2:
        raise ValueError(f"activity has shape {activity.shape} (expected (units, frames))")
    if not stop > start >= 0:
        raise ValueError(f"response window start={start}, stop={stop} s (expected 0 <= start < stop)")
    if fps <= 0:
        raise ValueError(f"fps = {fps} (expected > 0)")
    frames = activity.shape[1]
    first = int(round(start * fps))
    last = max(int(round(stop * fps)), first + 1)
    begin, end = onsets + first, onsets + last
    bad = np.flatnonzero((begin < 0) | (end > frames))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"trial {i}: response window frames {begin[i]}..{end[i] - 1} outside the recording "
            f"(onset frame {onsets[i]}; expected within 0..{frames - 1})"
        )
    # cumulative sums give every window mean in one pass
    cumulative = np.concatenate([np.zeros((activity.shape[0], 1)), np.cumsum(activity, axis=1)], axis=1)
    responses = ((cumulative[:, end] - cumulative[:, begin]) / (end - begin)).T.astype(np.float32)
    if behavior is None:
        return {"responses": responses, "behavior": None, "pupil_center": None}
    needed = ("running", "pupil_radius", "pupil_x", "pupil_y")
    missing = [k for k in needed if behavior.get(k) is None]
    if missing:
        raise ValueError(f"behavior lacks {missing} (expected all of {list(needed)} or no behavior)")
    traces = {}
    for name in needed:
        trace = np.asarray(behavior[name], dtype=np.float64).ravel()
        if trace.shape[0] != frames:
            raise ValueError(f"behavior {name} has {trace.shape[0]} frames (expected {frames}, as activity)")
        traces[name] = np.concatenate([[0.0], np.cumsum(trace)])
    derivative = np.gradient(np.asarray(behavior["pupil_radius"], dtype=np.float64).ravel()) * fps
    traces["pupil_derivative"] = np.concatenate([[0.0], np.cumsum(derivative)])

    def mean(name: str) -> np.ndarray:
        return (traces[name][end] - traces[name][begin]) / (end - begin)

    behavior_out = np.stack([mean("pupil_radius"), mean("pupil_derivative"), mean("running")], axis=1)
    center = np.stack([mean("pupil_x"), mean("pupil_y")], axis=1)
    center -= center.mean(axis=0, keepdims=True)
    return {
        "responses": responses,
        "behavior": behavior_out.astype(np.float32),
        "pupil_center": center.astype(np.float32),
    }


def _check_frames(config: dict) -> None:
    """The per-frame window's validation hook: a lag of 0 s or more."""
    if not config["lag"] >= 0:
        raise ValueError(f"lag = {config['lag']} s (expected 0 or more)")


@identity.register("response", name="frames", validate=_check_frames)
def frames(
    activity: np.ndarray,
    onsets: np.ndarray,
    fps: float,
    behavior: dict[str, np.ndarray] | None = None,
    durations: np.ndarray | None = None,
    *,
    lag: float = 0.0,
) -> dict[str, np.ndarray | None]:
    """Activity of every unit at every frame of a trial: the responses to a movie, over time.

    Frame ``t`` of a trial is the activity at ``onset + t + round(lag * fps)``: one response
    per movie frame (the stimulus is shown one movie frame per imaging frame).

    Parameters
    ----------
    activity
        (units, frames) inferred spike rate per frame.
    onsets
        (trials,) first frame of every trial.
    fps
        Frame rate (Hz).
    behavior
        Optional per-frame traces (frames,): ``running``, ``pupil_radius``, ``pupil_x``,
        ``pupil_y``; missing keys are allowed only as a whole.
    durations
        (trials,) frames of every trial; all equal (a dataset's trials share one length).
    lag
        Seconds between a movie frame and the activity it is paired with.

    Returns
    -------
    dict
        ``responses`` (trials, T, units) float32; ``behavior`` (trials, T, 2) float32 as
        pupil radius and running speed, ``pupil_center`` (trials, T, 2) as (x, y) minus their
        mean over the trials' frames -- both None without ``behavior``.

    Raises
    ------
    ValueError
        If the trials differ in length or a trial's frames leave the recording, naming it.
    """
    activity = np.asarray(activity, dtype=np.float32)
    onsets = np.asarray(onsets, dtype=np.int64)
    if activity.ndim != 2:
        raise ValueError(f"activity has shape {activity.shape} (expected (units, frames))")
    if durations is None:
        raise ValueError("frames responses need every trial's duration_frames (got None)")
    durations = np.asarray(durations, dtype=np.int64)
    lengths = np.unique(durations)
    if len(lengths) != 1 or lengths[0] < 1:
        raise ValueError(
            f"trials last {sorted(lengths.tolist())[:5]} frames (expected one length of at least 1 frame for all "
            "trials: cut the movies to one length)"
        )
    length = int(lengths[0])
    shift = int(round(lag * fps))
    index = onsets[:, None] + shift + np.arange(length)[None, :]  # (trials, T)
    bad = np.flatnonzero((index[:, 0] < 0) | (index[:, -1] >= activity.shape[1]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"trial {i}: frames {index[i, 0]}..{index[i, -1]} outside the recording "
            f"(onset frame {onsets[i]}, lag {shift} frames; expected within 0..{activity.shape[1] - 1})"
        )
    responses = np.ascontiguousarray(np.moveaxis(activity[:, index], 0, -1))  # (trials, T, units)
    if behavior is None:
        return {"responses": responses, "behavior": None, "pupil_center": None}
    needed = ("running", "pupil_radius", "pupil_x", "pupil_y")
    missing = [k for k in needed if behavior.get(k) is None]
    if missing:
        raise ValueError(f"behavior lacks {missing} (expected all of {list(needed)} or no behavior)")
    traces = {}
    for name in needed:
        trace = np.asarray(behavior[name], dtype=np.float32).ravel()
        if trace.shape[0] != activity.shape[1]:
            raise ValueError(f"behavior {name} has {trace.shape[0]} frames (expected {activity.shape[1]}, as activity)")
        traces[name] = trace[index]
    center = np.stack([traces["pupil_x"], traces["pupil_y"]], -1)
    center -= center.reshape(-1, 2).mean(0)
    return {
        "responses": responses,
        "behavior": np.stack([traces["pupil_radius"], traces["running"]], -1).astype(np.float32),
        "pupil_center": center.astype(np.float32),
    }
