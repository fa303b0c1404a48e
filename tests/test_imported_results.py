"""suite2p and CaImAn results as Segmentation / Traces sources: files in their own formats, read back."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import sparse

from pipeline.imaging import io
from pipeline.imaging.imported import ImportedResultsError, read_caiman, read_suite2p
from schemas import imaging, ingest, params
from tests.imaging_helpers import blob_movie

SHAPE = (16, 20)  # not square: a transposed footprint would not fit
FRAMES = 40


def write_suite2p(folder: Path) -> dict:
    """Three ROIs, the middle one not a cell; returns what a reader must find."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    stat = np.array(
        [
            {"ypix": np.array([2, 2, 3]), "xpix": np.array([3, 4, 3]), "lam": np.array([0.5, 0.25, 0.125])},
            {"ypix": np.array([8]), "xpix": np.array([8]), "lam": np.array([1.0])},
            {"ypix": np.array([10, 11]), "xpix": np.array([15, 15]), "lam": np.array([2.0, 1.0])},
        ],
        dtype=object,
    )
    np.save(folder / "stat.npy", stat, allow_pickle=True)
    np.save(folder / "iscell.npy", np.array([[1.0, 0.9], [0.0, 0.2], [1.0, 0.8]]))
    f = rng.normal(200, 10, (3, FRAMES)).astype(np.float32)
    fneu = rng.normal(50, 5, (3, FRAMES)).astype(np.float32)
    np.save(folder / "F.npy", f)
    np.save(folder / "Fneu.npy", fneu)
    return {"fluorescence": (f - 0.7 * fneu)[[0, 2]], "peak_pixels": [(2, 3), (10, 15)]}


def write_caiman(path: Path) -> dict:
    """Two components in CaImAn's layout, the second accepted; returns what a reader must find."""
    height, width = SHAPE
    footprints = np.zeros((2, height, width))
    footprints[0, 1, 2] = 3.0
    footprints[1, 12, 17] = 2.0
    footprints[1, 13, 17] = 1.0
    # CaImAn's A: (pixels, components), pixels in Fortran order of dims (height, width)
    a = sparse.csc_matrix(np.stack([fp.reshape(-1, order="F") for fp in footprints], axis=1))
    c = np.random.default_rng(2).normal(5, 1, (2, FRAMES))
    yra = np.full((2, FRAMES), 0.5)
    with h5py.File(path, "w") as f:
        group = f.create_group("estimates/A")
        for name in ("data", "indices", "indptr"):
            group[name] = getattr(a, name)
        group["shape"] = np.array(a.shape)
        f["estimates/C"] = c
        f["estimates/YrA"] = yra
        f["estimates/dims"] = np.array(SHAPE)
        f["estimates/idx_components"] = np.array([1])
    return {"fluorescence": (c + yra)[[1]].astype(np.float32), "peak_pixels": [(12, 17)]}


def test_suite2p_reader_keeps_cells_with_peak_one_footprints(tmp_path):
    truth = write_suite2p(tmp_path / "plane0")
    cells = read_suite2p(tmp_path / "plane0", SHAPE)
    assert cells.weights.shape == (2, *SHAPE)
    assert cells.weights[0, 2, 3] == 1.0 and cells.weights[0, 3, 3] == 0.25 and cells.weights[1, 11, 15] == 0.5
    np.testing.assert_allclose(cells.fluorescence, truth["fluorescence"], rtol=1e-6)


def test_caiman_reader_unfolds_fortran_order_and_keeps_accepted(tmp_path):
    truth = write_caiman(tmp_path / "caiman_results.hdf5")
    cells = read_caiman(tmp_path / "caiman_results.hdf5", SHAPE)
    assert cells.weights.shape == (1, *SHAPE)
    assert cells.weights[0, 12, 17] == 1.0 and cells.weights[0, 13, 17] == 0.5 and cells.weights.sum() == 1.5
    np.testing.assert_allclose(cells.fluorescence, truth["fluorescence"], rtol=1e-6)


def test_suite2p_rois_outside_the_frame_are_an_error(tmp_path):
    write_suite2p(tmp_path / "plane0")
    with pytest.raises(ImportedResultsError, match=r"ROI 2 has pixels outside the scan's 8 x 8 frames"):
        read_suite2p(tmp_path / "plane0", (8, 8))


def test_missing_suite2p_files_are_named(tmp_path):
    with pytest.raises(ImportedResultsError, match=r"suite2p output missing: .*stat.npy"):
        read_suite2p(tmp_path, SHAPE)


@pytest.fixture(scope="module")
def imported_scan(db):
    """A scan in the raw store with suite2p and CaImAn results beside it, populated through Traces."""
    folder = imaging.raw_store_location() / f"imported_{db.backend}"
    folder.mkdir(parents=True, exist_ok=True)
    io.write_scanimage_tiff(folder / "scan.tif", blob_movie(FRAMES, SHAPE), 10.0)
    truth = {
        "suite2p": write_suite2p(folder / "suite2p" / "plane0"),
        "caiman": write_caiman(folder / "caiman_results.hdf5"),
    }
    done = ingest.ingest_scan(folder / "scan.tif", 9600, 1, 1)  # in the store already: not copied
    key, defaults = done.key, done.parameters["imaging"]
    keys = {}
    for origin, builder in (("suite2p", "import_suite2p"), ("caiman", "import_caiman")):
        seg = params.insert_config(imaging.SegmentationParams, builder, {}, note=f"{origin} results")
        trace = params.insert_config(imaging.TraceParams, "import_traces", {"origin": origin})
        restriction = {**key, **defaults["motion"], **defaults["pmd"], **seg, **trace}
        for table in (
            imaging.ScanInfo,
            imaging.MotionCorrection,
            imaging.Denoised,
            imaging.Segmentation,
            imaging.Traces,
        ):
            table.populate(restriction, suppress_errors=False)
        keys[origin] = (imaging.Traces & restriction).fetch1("KEY")
    return keys, truth


@pytest.mark.parametrize("origin", ["suite2p", "caiman"])
def test_imported_masks_become_segmentation_masks(imported_scan, origin):
    keys, truth = imported_scan
    masks = (imaging.Segmentation.Mask & keys[origin]).to_dicts(order_by="mask_id")
    width = SHAPE[1]
    peaks = [divmod(int(m["pixels"][np.argmax(m["weights"])]), width) for m in masks]
    assert peaks == truth[origin]["peak_pixels"]
    assert (imaging.Segmentation & keys[origin]).fetch1("ncells") == len(truth[origin]["peak_pixels"])


@pytest.mark.parametrize("origin", ["suite2p", "caiman"])
def test_imported_traces_are_the_tools_own(imported_scan, origin):
    keys, truth = imported_scan
    units = (imaging.Traces.Unit & keys[origin]).to_dicts(order_by="unit_id")
    found = np.stack([u["fluorescence"] for u in units])
    np.testing.assert_allclose(found, truth[origin]["fluorescence"], rtol=1e-5)
    assert units[0]["dff"].shape == (FRAMES,)
