"""Scans that pass or fail ScanInfo: every later error names the scan, every backend stores the
same row, and a scan's file stays inside the raw store (issue 11, items 6, 7 and 8)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from pipeline.imaging import io, pmd
from schemas import imaging, params, spikes, sysid

torch.set_num_threads(1)

ANIMAL = 9500
FRAMES, SIDE = 120, 20
STEPS = (imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised, imaging.Segmentation, imaging.Traces)


def _blob_movie(seed: int = 0, frames: int = FRAMES) -> np.ndarray:
    """One soma-sized blob whose brightness oscillates, on a noisy background: PMD keeps rank > 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    blob = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 10.0)
    signal = 50 * np.sin(np.arange(frames) / 10.0)[:, None, None] * blob[None]
    return (100 + signal + rng.normal(0, 1, (frames, SIDE, SIDE))).astype(np.float32)


def _register(db, idx: int, name: str, movie: np.ndarray | None = None, h5: np.ndarray | None = None) -> dict:
    """Write a movie into the raw store and insert its Scan row (frame rate 15 Hz)."""
    folder = f"inputs_{db.backend}"
    (imaging.raw_store_location() / folder).mkdir(parents=True, exist_ok=True)
    relative = f"{folder}/{name}"
    path = imaging.raw_store_location() / relative
    if h5 is not None:
        with h5py.File(path, "w") as f:
            f["mov"] = h5
    else:
        io.write_scanimage_tiff(path, movie, 15.0)
    key = {"animal_id": ANIMAL, "session": 1, "scan_idx": idx}
    imaging.ensure_session(key)
    imaging.Scan.insert1({**key, "filename": relative, "frame_rate": 15.0}, skip_duplicates=True)
    return key


def _populate(tables, restriction) -> list:
    errors = []
    for table in tables:
        errors += table.populate(restriction, reserve_jobs=True, suppress_errors=True)["error_list"]
    return errors


def _error(table, key: dict) -> str:
    return (table().jobs.errors & key).fetch1("error_message")


@pytest.fixture(scope="module")
def defaults(db) -> dict:
    keys = imaging.insert_default_params()
    return {k: v for d in keys.values() for k, v in d.items()}


# ------------------------------------------------------------------------------------------
# item 6: errors after ScanInfo name the scan
# ------------------------------------------------------------------------------------------


def test_one_frame_movie_fails_at_denoised_naming_the_scan(db, defaults):
    key = _register(db, 1, "one_frame.tif", _blob_movie(frames=1))
    _populate(STEPS, {**key, **defaults})
    assert (imaging.ScanInfo & key).fetch1("nframes") == 1
    assert not imaging.Denoised & key
    assert _error(imaging.Denoised, key) == (
        f"ScanError: Scan {ANIMAL}/1/1: movie has shape (1, 20, 20) (expected at least 2 frames and 1x1 pixels)"
    )


def test_zero_cells_at_rank_above_zero_give_traces_without_units(db, defaults):
    key = _register(db, 2, "blob.tif", _blob_movie())
    none = params.insert_config(imaging.SegmentationParams, "soma_correlation", {"max_cells": 0})
    restriction = {**key, **defaults, **none}
    assert _populate(STEPS, restriction) == []
    assert (imaging.Denoised & restriction).fetch1("rank") >= 1
    assert (imaging.Segmentation & restriction).fetch1("ncells") == 0
    assert (imaging.Traces & restriction).fetch1("nframes") == FRAMES
    assert len(imaging.Traces.Unit & restriction) == 0


def test_spikes_of_a_scan_without_cells_fail_naming_the_scan(db, defaults):
    key = _register(db, 2, "blob.tif", _blob_movie())
    none = params.insert_config(imaging.SegmentationParams, "soma_correlation", {"max_cells": 0})
    method = spikes.SpikeMethod.insert_method("deconvolution", {"order": 1})
    restriction = {**key, **defaults, **none, **method}
    _populate((*STEPS, spikes.Activity), restriction)
    assert _error(spikes.Activity, restriction) == (
        f"ScanError: Scan {ANIMAL}/1/2: Traces has no units (0 cells segmented; expected at least 1)"
    )


def test_project_of_zero_cells_is_an_empty_trace_array():
    result = pmd.denoise(_blob_movie(), block_size=20)
    assert result.rank >= 1
    assert result.project(np.zeros((0, SIDE, SIDE), np.float32)).shape == (0, FRAMES)


def test_values_beyond_float32_fail_at_scan_info_naming_the_scan(db):
    movie = _blob_movie().astype(np.float64)
    movie[3, 4, 5] = 1e300
    key = _register(db, 3, "huge.h5", h5=movie)
    _populate([imaging.ScanInfo], key)
    assert not imaging.ScanInfo & key
    message = _error(imaging.ScanInfo, key)
    assert message.startswith(f"MovieFileError: Scan {ANIMAL}/1/3: ")
    assert "frame 3 has 1 pixel(s) beyond the float32 range (largest |value| 1e+300; expected |value| <= 3.4e+38)" in (
        message
    )


def test_complex_movie_is_rejected_at_scan_info_naming_the_scan(db):
    key = _register(db, 4, "complex.h5", h5=_blob_movie().astype(np.complex64) * (1 + 1j))
    _populate([imaging.ScanInfo], key)
    assert not imaging.ScanInfo & key
    message = _error(imaging.ScanInfo, key)
    assert message.startswith(f"MovieFileError: Scan {ANIMAL}/1/4: ")
    assert "pixels are complex64 (expected real numbers, integer or float" in message


def test_denoise_rejects_values_beyond_float32():
    movie = _blob_movie().astype(np.float64)
    movie[5, 2, 2] = -1e300
    expected = r"movie has values up to 1e\+300 in block y 0:20, x 0:20 \(expected \|value\| <= 3.4e\+38"
    with pytest.raises(ValueError, match=expected):
        pmd.denoise(movie)


def test_denoise_rejects_a_complex_array():
    with pytest.raises(ValueError, match=r"movie has dtype complex64 \(expected real values"):
        pmd.denoise(_blob_movie().astype(np.complex64))


def test_trial_whose_response_window_leaves_the_recording_fails_naming_the_scan(db, defaults):
    """The trial fits in the movie (ScanInfo accepts it); its 0.5 s response window does not."""
    key = _register(db, 5, "late_trial.tif", _blob_movie())
    imaging.StimulusImage.insert1({"image_id": 950001, "image": np.zeros((4, 4), np.uint8)}, skip_duplicates=True)
    imaging.Trial.insert1(
        {**key, "trial_idx": 0, "image_id": 950001, "onset_frame": FRAMES - 2, "duration_frames": 2},
        skip_duplicates=True,
    )
    method = spikes.SpikeMethod.insert_method("deconvolution", {"order": 1})
    window = params.insert_config(sysid.ResponseWindow, "window_mean", {"start": 0.0, "stop": 0.5})
    restriction = {**key, **defaults, **method, **window}
    _populate((*STEPS, spikes.Activity, sysid.TrialResponses), restriction)
    assert len(imaging.Traces.Unit & restriction) >= 1
    assert not sysid.TrialResponses & restriction
    assert _error(sysid.TrialResponses, restriction) == (
        f"ScanError: Scan {ANIMAL}/1/5: trial 0: response window frames 118..125 outside the recording "
        f"(onset frame 118; expected within 0..119)"
    )


# ------------------------------------------------------------------------------------------
# item 7: one result on every backend
# ------------------------------------------------------------------------------------------


def test_scan_without_signal_stores_a_null_snr_gain_on_every_backend(db, defaults):
    noise = np.random.default_rng(1).normal(100, 5, (FRAMES, SIDE, SIDE)).astype(np.float32)
    key = _register(db, 6, "noise.tif", noise)
    restriction = {**key, **defaults}
    assert _populate(STEPS[:3], restriction) == []
    row = (imaging.Denoised & restriction).fetch1()
    assert row["rank"] == 0
    assert row["snr_gain"] is None
    assert math.isfinite(row["compression_ratio"]) and row["compression_ratio"] > 1
    assert imaging.Denoised.load(restriction).snr_gain_estimate == math.inf


def test_non_finite_value_for_a_nullable_column_is_null():
    values = [float("inf"), float("-inf"), float("nan"), None, 2.5, np.float32(1.5)]
    assert [imaging.finite_or_null(v) for v in values] == [None, None, None, None, 2.5, 1.5]


def test_non_finite_value_for_a_non_nullable_column_names_the_scan():
    with pytest.raises(imaging.ScanError, match=r"^Scan 1/2/3: Denoised.compression_ratio is nan \(expected a finite"):
        imaging.finite({"animal_id": 1, "session": 2, "scan_idx": 3}, "Denoised.compression_ratio", float("nan"))


# ------------------------------------------------------------------------------------------
# item 8: Scan.filename inside the raw store
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename, rule",
    [
        ("../outside.tif", "climbs out of the raw store with '..'"),
        ("inputs/../../outside.tif", "climbs out of the raw store with '..'"),
        ("/tmp/outside.tif", "is an absolute path, outside the raw store"),
        ("~/outside.tif", "is an absolute path, outside the raw store"),
        ("C:/scans/outside.tif", "has a backslash or drive letter"),
        ("scans\\outside.tif", "has a backslash or drive letter"),
        ("", "is empty or not a string"),
    ],
)
def test_scan_filename_outside_the_raw_store_is_rejected_at_insert(db, filename, rule):
    outside = imaging.raw_store_location().parent / "outside.tif"
    outside.write_bytes(b"II*\x00")  # the file exists: only the rule stops the insert
    key = {"animal_id": ANIMAL, "session": 2, "scan_idx": 1}
    imaging.ensure_session(key)
    with pytest.raises(ValueError) as raised:
        imaging.Scan.insert1({**key, "filename": filename})
    assert str(raised.value) == (
        f"Scan.filename {filename!r} {rule} (expected a path relative to the raw store, without '..', "
        "e.g. 'mouse7/2024-05-01/scan2.tif')"
    )
    assert len(imaging.Scan & key) == 0


def test_one_bad_filename_keeps_the_whole_insert_out(db):
    good = _register(db, 7, "good.tif", _blob_movie(frames=4))
    good_file = (imaging.Scan & good).fetch1("filename").path
    rows = [
        {"animal_id": ANIMAL, "session": 3, "scan_idx": 1, "filename": good_file},
        {"animal_id": ANIMAL, "session": 3, "scan_idx": 2, "filename": "../../x.tif"},
    ]
    imaging.ensure_session(rows[0])
    with pytest.raises(ValueError, match=r"Scan.filename '../../x.tif' climbs out of the raw store"):
        imaging.Scan.insert(rows)
    assert len(imaging.Scan & {"animal_id": ANIMAL, "session": 3}) == 0
    imaging.Scan.insert(rows[:1])
    assert len(imaging.Scan & {"animal_id": ANIMAL, "session": 3}) == 1
