"""Truncated movie files are rejected by every reader, and by ScanInfo naming the scan (issue 11, item 5).

tifffile reads a TIFF cut at 99% as 52 of 60 frames and one cut at 90% as 1 frame, reporting
"invalid page offset" only through logging; the readers find truncation from the file itself.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from pipeline.imaging import io, scan
from schemas import imaging

ANIMAL = 9400
MOVIE = np.random.default_rng(0).normal(100, 5, (60, 32, 32)).astype(np.uint16)


# the per-page header text of ScanImage 3.8 and 5 (the frame count each declares: 60)
SCANIMAGE_3 = (
    "state.configName='rig'\rstate.software.version=3.8\rstate.acq.numberOfChannelsSave=1\r"
    "state.acq.numberOfZSlices=1\rstate.acq.frameRate=4.0\rstate.acq.numberOfFrames=60\r"
)
SCANIMAGE_5 = (
    "scanimage.SI5.VERSION_MAJOR = 5\nscanimage.SI5.hChannels.channelSave = 1\n"
    "scanimage.SI5.hStackManager.framesPerSlice = 60\nscanimage.SI5.hRoiManager.scanFrameRate = 30\n"
)


def _write_pages(path: Path, description: str) -> None:
    with tifffile.TiffWriter(path) as writer:
        for frame in MOVIE:
            writer.write(frame, description=description, metadata=None, contiguous=False)


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"{path.stem}_{round(fraction * 100)}{path.suffix}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _files(folder: Path) -> dict[str, Path]:
    """Whole 60-frame movies as each writer makes them."""
    files = {
        "shaped": folder / "shaped.tif",  # tifffile's default: a {"shape": ...} description
        "bare": folder / "bare.tif",  # no metadata at all: only the page chain tells
        "imagej": folder / "imagej.tif",
        "bigtiff": folder / "bigtiff.tif",
        "scanimage": folder / "scanimage.tif",
        "scanimage3": folder / "scanimage3.tif",
        "scanimage5": folder / "scanimage5.tif",
        "hdf5": folder / "movie.h5",
    }
    tifffile.imwrite(files["shaped"], MOVIE)
    tifffile.imwrite(files["bare"], MOVIE, metadata=None)
    tifffile.imwrite(files["imagej"], MOVIE, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(files["bigtiff"], MOVIE, bigtiff=True, metadata=None)
    io.write_scanimage_tiff(files["scanimage"], MOVIE.astype(np.float32), 10.0)
    _write_pages(files["scanimage3"], SCANIMAGE_3)
    _write_pages(files["scanimage5"], SCANIMAGE_5)
    with h5py.File(files["hdf5"], "w") as f:
        f["mov"] = MOVIE
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("movies"))


@pytest.mark.parametrize(
    "name, software",
    [
        ("shaped", "tiff"),
        ("bare", "tiff"),
        ("imagej", "ImageJ TIFF 1.11a"),
        ("bigtiff", "tiff"),
        ("scanimage", "ScanImage 2016b"),
        ("scanimage3", "ScanImage 3.8"),
        ("scanimage5", "ScanImage 5"),
        ("hdf5", "hdf5"),
    ],
)
def test_whole_files_read_as_60_frames(files, name, software):
    info = scan.scan_info(files[name])
    assert (info.nframes, info.software) == (60, software)


@pytest.mark.parametrize(
    "name, fraction, message",
    [
        ("shaped", 0.99, "TIFF has 52 frames but its tifffile shape header says 60 (file truncated; expected 60"),
        ("shaped", 0.90, "TIFF has 1 frames but its tifffile shape header says 60 (file truncated; expected 60"),
        ("imagej", 0.99, "TIFF has 52 frames but its ImageJ header says 60 (file truncated; expected 60 frames)"),
        ("imagej", 0.90, "TIFF has 1 frames but its ImageJ header says 60 (file truncated; expected 60 frames)"),
        ("bare", 0.99, "TIFF has 52 readable pages, then page 52 at byte 131554 beyond the end of the file"),
        ("bare", 0.90, "TIFF has 1 readable pages, then page 1 at byte 123088 beyond the end of the file"),
        ("bigtiff", 0.99, "page 54 of 55 cannot be read"),
        ("bigtiff", 0.90, "the file ends inside page 5's header at 124459 bytes (file truncated"),
        ("scanimage", 0.99, "page 59's pixel data ends at byte 159376, beyond the end of the file at 157782 bytes"),
        ("scanimage", 0.90, "TIFF has 54 frames but its ScanImage header says 60 (file truncated; expected 60 frames)"),
        ("scanimage3", 0.99, "page 59's pixel data ends at byte 144976, beyond the end of the file at 143526 bytes"),
        ("scanimage3", 0.90, "TIFF has 54 frames but its ScanImage header says 60 (file truncated; expected 60"),
        ("scanimage5", 0.99, "page 59's pixel data ends at byte 144976, beyond the end of the file at 143526 bytes"),
        ("scanimage5", 0.90, "TIFF has 54 frames but its ScanImage header says 60 (file truncated; expected 60"),
        ("hdf5", 0.99, "not a readable HDF5 file (Unable to synchronously open file (truncated file: eof = 123678"),
    ],
)
def test_truncated_file_is_a_movie_file_error(files, name, fraction, message):
    cut = _cut(files[name], fraction)
    with pytest.raises(io.MovieFileError) as raised:
        scan.scan_info(cut)
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(cut))


def test_truncation_is_found_without_tifffile_logging(files, caplog):
    """The page chain is checked in the file itself: silencing tifffile's log changes nothing."""
    import logging

    cut = _cut(files["bare"], 0.90)
    logging.getLogger("tifffile").disabled = True
    try:
        with pytest.raises(io.MovieFileError, match=r"TIFF has 1 readable pages, then page 1 at byte 123088"):
            io.movie_info(cut)
    finally:
        logging.getLogger("tifffile").disabled = False


@pytest.fixture(scope="module")
def truncated_scans(db, tmp_path_factory):
    """Truncated plain, ImageJ, ScanImage and HDF5 movies registered as scans, ScanInfo populated."""
    root = imaging.raw_store_location() / f"truncated_{db.backend}"
    root.mkdir(parents=True, exist_ok=True)
    whole = _files(root)
    cuts = {
        "plain_99": _cut(whole["shaped"], 0.99),
        "plain_90": _cut(whole["bare"], 0.90),
        "imagej_99": _cut(whole["imagej"], 0.99),
        "scanimage_99": _cut(whole["scanimage"], 0.99),
        "hdf5_90": _cut(whole["hdf5"], 0.90),
    }
    keys = {}
    for idx, (name, path) in enumerate(cuts.items(), start=1):
        keys[name] = {"animal_id": ANIMAL, "session": 1, "scan_idx": idx}
        relative = str(path.relative_to(imaging.raw_store_location()))
        imaging.ensure_session(keys[name])
        imaging.Scan.insert1({**keys[name], "filename": relative, "frame_rate": 10.0}, skip_duplicates=True)
    result = imaging.ScanInfo.populate({"animal_id": ANIMAL}, reserve_jobs=True, suppress_errors=True)
    return keys, result


def _error(key: dict) -> str:
    return (imaging.ScanInfo().jobs.errors & key).fetch1("error_message")


def test_no_truncated_scan_gets_a_scan_info_row(truncated_scans):
    keys, result = truncated_scans
    assert len(imaging.ScanInfo & {"animal_id": ANIMAL}) == 0
    assert len(result["error_list"]) == 5


@pytest.mark.parametrize(
    "name, message",
    [
        ("plain_99", "TIFF has 52 frames but its tifffile shape header says 60 (file truncated; expected 60 frames)"),
        ("plain_90", "TIFF has 1 readable pages, then page 1 at byte 123088 beyond the end of the file"),
        ("imagej_99", "TIFF has 52 frames but its ImageJ header says 60 (file truncated; expected 60 frames)"),
        ("scanimage_99", "page 59's pixel data ends at byte 159376, beyond the end of the file at 157782 bytes"),
        ("hdf5_90", "(truncated file: eof = "),
    ],
)
def test_truncated_scan_error_names_the_scan(truncated_scans, name, message):
    keys, _ = truncated_scans
    error = _error(keys[name])
    assert error.startswith(f"MovieFileError: Scan {ANIMAL}/1/{keys[name]['scan_idx']}: ")
    assert message in error
