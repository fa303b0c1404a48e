"""Bad scans end as clear errors in the jobs table; the good scans beside them still populate."""

import h5py
import numpy as np
import pytest
import tifffile

from pipeline.imaging import io
from schemas import imaging
from tests.imaging_helpers import populate_small_scan

ANIMAL = 9100


def _scan(idx: int) -> dict:
    return {"animal_id": ANIMAL, "session": 1, "scan_idx": idx}


def _register(idx: int, relative: str, **extra) -> dict:
    key = _scan(idx)
    imaging.ensure_session(key)
    imaging.Scan.insert1({**key, "filename": relative, **extra}, skip_duplicates=True)
    return key


@pytest.fixture(scope="module")
def bad_scans(db):
    """Six broken scans and one good one, all populated into ScanInfo together."""
    root = imaging.raw_store_location() / f"errors_{db.backend}"
    root.mkdir(parents=True, exist_ok=True)
    good = np.random.default_rng(0).normal(100, 5, (60, 16, 16)).astype(np.float32)
    io.write_scanimage_tiff(root / "good.tif", good, 10.0)
    io.write_scanimage_tiff(root / "cut_source.tif", good, 10.0)
    data = (root / "cut_source.tif").read_bytes()
    (root / "cut.tif").write_bytes(data[: len(data) // 2])
    (root / "corrupt.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    with h5py.File(root / "empty.h5", "w") as f:
        f["mov"] = np.zeros((0, 16, 16), dtype=np.uint16)
    nan = good.copy()
    nan[7, 3, 3] = np.nan
    tifffile.imwrite(root / "nan.tif", nan)
    io.write_scanimage_tiff(root / "gone.tif", good, 10.0)
    io.write_scanimage_tiff(root / "late.tif", good, 10.0)
    rel = f"errors_{db.backend}"
    keys = {
        "good": _register(1, f"{rel}/good.tif"),
        "truncated": _register(2, f"{rel}/cut.tif"),
        "corrupt": _register(3, f"{rel}/corrupt.tif"),
        "empty": _register(4, f"{rel}/empty.h5", frame_rate=10.0),
        "nan": _register(5, f"{rel}/nan.tif", frame_rate=10.0),
        "missing": _register(6, f"{rel}/gone.tif"),
        "late": _register(7, f"{rel}/late.tif"),
    }
    (root / "gone.tif").unlink()
    imaging.StimulusImage.insert1({"image_id": 990001, "image": np.zeros((4, 4), np.uint8)}, skip_duplicates=True)
    imaging.Trial.insert1(
        {**keys["late"], "trial_idx": 0, "image_id": 990001, "onset_frame": 58, "duration_frames": 8},
        skip_duplicates=True,
    )
    result = imaging.ScanInfo.populate({"animal_id": ANIMAL}, reserve_jobs=True, suppress_errors=True)
    return keys, result


def _error(key: dict) -> str:
    return (imaging.ScanInfo().jobs.errors & key).fetch1("error_message")


def test_good_scan_populates_beside_bad_ones(bad_scans):
    keys, result = bad_scans
    assert len(imaging.ScanInfo & {"animal_id": ANIMAL}) == 1
    assert (imaging.ScanInfo & keys["good"]).fetch1("nframes") == 60
    assert len(result["error_list"]) == 6


def test_truncated_tiff_error_names_scan_and_frame(bad_scans):
    keys, _ = bad_scans
    message = _error(keys["truncated"])
    assert message.startswith("MovieFileError: Scan 9100/1/2: ")
    assert "frames but its ScanImage header says 60 (file truncated; expected 60 frames)" in message


def test_corrupt_tiff_error(bad_scans):
    keys, _ = bad_scans
    assert "Scan 9100/1/3: " in _error(keys["corrupt"])
    assert "TIFF has 0 frames (expected at least 1)" in _error(keys["corrupt"])


def test_file_without_frames_error(bad_scans):
    keys, _ = bad_scans
    assert "Scan 9100/1/4: " in _error(keys["empty"])
    assert "0 frames (expected at least 1)" in _error(keys["empty"])


def test_nan_movie_error(bad_scans):
    keys, _ = bad_scans
    assert "Scan 9100/1/5: " in _error(keys["nan"])
    assert "frame 7 has 1 non-finite (NaN/inf) pixel(s)" in _error(keys["nan"])


def test_missing_file_error(bad_scans):
    keys, _ = bad_scans
    assert "Scan 9100/1/6: file 'errors_" in _error(keys["missing"])
    assert "gone.tif' not found in the raw store" in _error(keys["missing"])


def test_trial_beyond_movie_end_error(bad_scans):
    keys, _ = bad_scans
    message = _error(keys["late"])
    assert "Scan 9100/1/7: trial 0 spans frames 58..65, beyond the movie's end" in message
    assert "<= 60 frames" in message


def test_scan_results_are_bit_for_bit_reproducible(db, tmp_path):
    """The same movie under two scan keys gives identical factors, masks and traces."""
    first = populate_small_scan(db, tmp_path, seed=0)
    path = imaging.raw_store_location() / (imaging.Scan & first).fetch1("filename").path
    copy_rel = f"simulated/copy_{db.backend}.tif"
    (imaging.raw_store_location() / copy_rel).write_bytes(path.read_bytes())
    twin = {"animal_id": 9199, "session": 1, "scan_idx": 1}  # not 9000: other parts query that animal
    imaging.ensure_session(twin)
    imaging.Scan.insert1({**twin, "filename": copy_rel}, skip_duplicates=True)
    params_key = {k: v for k, v in first.items() if k.endswith("_hash")}
    for table in (imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised, imaging.Segmentation, imaging.Traces):
        table.populate({**twin, **params_key}, suppress_errors=False)
    second = {**first, **twin}
    a, b = (imaging.Denoised & first).fetch1(), (imaging.Denoised & second).fetch1()
    assert np.array_equal(np.asarray(a["temporal"]), np.asarray(b["temporal"]))
    assert np.array_equal(np.asarray(a["spatial"]), np.asarray(b["spatial"]))
    da = np.stack([u["dff"] for u in (imaging.Traces.Unit & first).to_dicts(order_by="unit_id")])
    db_ = np.stack([u["dff"] for u in (imaging.Traces.Unit & second).to_dicts(order_by="unit_id")])
    assert da.shape == db_.shape and np.array_equal(da, db_)
