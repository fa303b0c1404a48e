"""Readers of a lab's own experiment files: stimulus trials (CSV/JSON), stimulus images, behaviour (CSV).

The layouts (documented in the README, section "Your own experiment"):

Trials, a CSV with a header row or a JSON list of objects (or ``{"trials": [...]}``), one
trial per row:

======================  ==============================================================
``trial_idx``           int, unique within the scan
``image_id``            int, the stimulus image's global id (shared across scans)
``onset_frame``         int, first frame showing the image (0-based), *or*
``onset_time``          float, seconds after the scan's start trigger
``duration_frames``     int, frames the image was shown, *or*
``duration_time``       float, seconds it was shown
``tier``                optional: train, validation, test or final_test
======================  ==============================================================

Images: a folder of ``<image_id>.npy`` (2-D) or ``<image_id>.png`` files (grey; colour is
converted to luminance).

Behaviour: a CSV with columns ``running`` (cm/s), ``pupil_radius``, ``pupil_x``, ``pupil_y``
(pixels of the eye camera) and either one row per frame or a ``time`` column (seconds on the
scan's clock) from which every column is interpolated onto the frame times.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIERS = ("train", "validation", "test", "final_test")
BEHAVIOR_COLUMNS = ("running", "pupil_radius", "pupil_x", "pupil_y")


class ExperimentFileError(ValueError):
    """A trial, image or behaviour file that does not follow its documented layout."""


@dataclass(frozen=True)
class TrialFile:
    """The trials of one scan as read from a lab's file (onsets in frames or seconds, as given).

    Attributes
    ----------
    trial_idx, image_id : np.ndarray
        (trials,) int64.
    onset, duration : np.ndarray
        (trials,) int64 frames when ``unit == "frames"``, float64 seconds when ``"seconds"``.
    onset_unit, duration_unit : str
        ``"frames"`` or ``"seconds"``.
    tier : np.ndarray or None
        (trials,) str, or None when the file has no ``tier`` column.
    """

    trial_idx: np.ndarray
    image_id: np.ndarray
    onset: np.ndarray
    duration: np.ndarray
    onset_unit: str
    duration_unit: str
    tier: np.ndarray | None = None


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ExperimentFileError(f"{path}: file not found (expected a trial file, .csv or .json)")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise ExperimentFileError(f"{path}: not valid JSON ({error})") from None
        rows = data.get("trials") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ExperimentFileError(f'{path}: expected a JSON list of trial objects or {{"trials": [...]}}')
        return rows
    if path.suffix.lower() != ".csv":
        raise ExperimentFileError(f"{path}: unknown trial file type {path.suffix!r} (expected .csv or .json)")
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items() if k is not None} for row in csv.DictReader(f)]


def _column(path: Path, rows: list[dict], name: str, kind: type) -> np.ndarray:
    values = []
    for i, row in enumerate(rows):
        value = row.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ExperimentFileError(f"{path}: trial row {i}: {name} = {value!r} (expected a number)") from None
        if kind is int and number != int(number):
            raise ExperimentFileError(f"{path}: trial row {i}: {name} = {value!r} (expected a whole number)")
        values.append(number)
    return np.array(values, dtype=np.int64 if kind is int else np.float64)


def _one_of(path: Path, columns: set, frames: str, seconds: str) -> str:
    present = [c for c in (frames, seconds) if c in columns]
    if len(present) != 1:
        raise ExperimentFileError(
            f"{path}: has {present or 'neither'} of {frames!r} / {seconds!r} (expected exactly one)"
        )
    return present[0]


def read_trials(path: str | Path) -> TrialFile:
    """Read a trial file in the layout of this module's docstring.

    Raises
    ------
    ExperimentFileError
        Missing columns, non-numeric values, repeated ``trial_idx``, negative onsets or an
        unknown tier; the message names the file, the row and the value.
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ExperimentFileError(f"{path}: no trials (expected at least one row)")
    columns = set(rows[0])
    missing = [c for c in ("trial_idx", "image_id") if c not in columns]
    if missing:
        raise ExperimentFileError(f"{path}: missing column(s) {missing} (found {sorted(columns)})")
    onset_name = _one_of(path, columns, "onset_frame", "onset_time")
    duration_name = _one_of(path, columns, "duration_frames", "duration_time")
    if (onset_name, duration_name) == ("onset_frame", "duration_time"):
        raise ExperimentFileError(
            f"{path}: duration_time with onset_frame (expected duration_time with onset_time, or duration_frames)"
        )
    trial_idx = _column(path, rows, "trial_idx", int)
    repeated = sorted({int(t) for t in trial_idx if (trial_idx == t).sum() > 1})
    if repeated:
        raise ExperimentFileError(f"{path}: trial_idx {repeated[:5]} repeated (expected each trial once)")
    onset = _column(path, rows, onset_name, int if onset_name == "onset_frame" else float)
    duration = _column(path, rows, duration_name, int if duration_name == "duration_frames" else float)
    for name, values in ((onset_name, onset), (duration_name, duration)):
        bad = np.flatnonzero(values < 0) if name.startswith("onset") else np.flatnonzero(values <= 0)
        if bad.size:
            expected = ">= 0" if name.startswith("onset") else "> 0"
            raise ExperimentFileError(f"{path}: trial row {bad[0]}: {name} = {values[bad[0]]:g} (expected {expected})")
    tier = None
    if "tier" in columns:
        tier = np.array([str(r.get("tier", "")) for r in rows])
        bad = [i for i, t in enumerate(tier) if t not in TIERS]
        if bad:
            raise ExperimentFileError(
                f"{path}: trial row {bad[0]}: tier = {str(tier[bad[0]])!r} (expected one of {TIERS})"
            )
    return TrialFile(
        trial_idx=trial_idx,
        image_id=_column(path, rows, "image_id", int),
        onset=onset,
        duration=duration,
        onset_unit="frames" if onset_name == "onset_frame" else "seconds",
        duration_unit="frames" if duration_name == "duration_frames" else "seconds",
        tier=tier,
    )


def read_images(folder: str | Path) -> dict[int, np.ndarray]:
    """Stimulus images of a folder: ``{image_id: (height, width) float32}``.

    Files are ``<image_id>.npy`` (2-D, or (1, H, W)) or ``<image_id>.png``; colour PNGs are
    converted to luminance (ITU-R 601-2, as Pillow's ``"L"`` mode).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExperimentFileError(f"{folder}: not a folder (expected a folder of <image_id>.npy / .png)")
    images = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".npy", ".png"):
            continue
        if not path.stem.isdigit():
            raise ExperimentFileError(f"{path}: file name {path.stem!r} is not an image id (expected e.g. 1042.npy)")
        image_id = int(path.stem)
        if image_id in images:
            raise ExperimentFileError(f"{path}: image id {image_id} given twice (expected one file per id)")
        images[image_id] = _read_image(path)
    if not images:
        raise ExperimentFileError(f"{folder}: no .npy or .png images (expected <image_id>.npy / .png files)")
    return images


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        image = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as img:
            image = np.asarray(img.convert("L") if img.mode not in ("L", "I;16", "I", "F") else img)
    image = np.squeeze(image) if image.ndim == 3 and image.shape[0] == 1 else image
    if image.ndim != 2:
        raise ExperimentFileError(f"{path}: image has shape {image.shape} (expected (height, width))")
    return image.astype(np.float32)


def read_behavior(path: str | Path, frame_times: np.ndarray) -> dict[str, np.ndarray]:
    """Behaviour on the frames of a scan: ``{column: (frames,) float32}`` for ``BEHAVIOR_COLUMNS``.

    Parameters
    ----------
    path
        CSV with the columns ``BEHAVIOR_COLUMNS`` and either one row per frame or a ``time``
        column (seconds on the scan's clock).
    frame_times
        (frames,) start times of the scan's frames (``pipeline.imaging.timing.frame_times``).
    """
    path = Path(path)
    if not path.is_file():
        raise ExperimentFileError(f"{path}: file not found (expected a behaviour CSV)")
    with open(path, newline="") as f:
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    columns = set(rows[0]) if rows else set()
    missing = [c for c in BEHAVIOR_COLUMNS if c not in columns]
    if missing:
        raise ExperimentFileError(
            f"{path}: missing column(s) {missing} (expected {list(BEHAVIOR_COLUMNS)}, and "
            "'time' unless there is one row per frame)"
        )
    values = {name: _column(path, rows, name, float) for name in (*BEHAVIOR_COLUMNS, "time") if name in columns}
    nframes = len(frame_times)
    if "time" not in values:
        if len(rows) != nframes:
            raise ExperimentFileError(
                f"{path}: {len(rows)} rows (expected {nframes}, one per frame, or a 'time' column)"
            )
        return {name: values[name].astype(np.float32) for name in BEHAVIOR_COLUMNS}
    time = values["time"]
    if np.any(np.diff(time) <= 0):
        raise ExperimentFileError(f"{path}: column 'time' is not increasing (expected sample times in seconds)")
    return {name: np.interp(frame_times, time, values[name]).astype(np.float32) for name in BEHAVIOR_COLUMNS}
