"""Cells and traces that suite2p or CaImAn already found, read from their own output files.

A lab that ran suite2p or CaImAn joins the pipeline through parameter sets, not new tables:
``import_suite2p`` / ``import_caiman`` are segmentation builders (``SegmentationParams``) and
``import_traces`` a trace builder (``TraceParams``). Their first positional argument after the
data is ``scan_path``, the scan's movie file, which the tables pass to builders that take it;
the results are read from files beside it:

- suite2p: ``<folder>/stat.npy`` (per cell ``ypix``, ``xpix``, ``lam``), ``iscell.npy``
  ((cells, 2): is a cell, probability), ``F.npy`` and ``Fneu.npy`` ((cells, frames));
- CaImAn: the HDF5 file ``cnm.save()`` writes: ``estimates/A`` (a sparse (pixels, cells)
  matrix in CSC parts ``data``, ``indices``, ``indptr``, ``shape``; pixels in Fortran order of
  ``estimates/dims``), ``estimates/C`` ((cells, frames) denoised traces), optionally
  ``estimates/YrA`` (residuals) and ``estimates/idx_components`` (the accepted cells).

suite2p's ``stat.npy`` is a pickled object array: it is loaded with ``allow_pickle=True``, so
only import files your lab wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import identity
from pipeline.imaging import segmentation, traces


class ImportedResultsError(ValueError):
    """suite2p / CaImAn output that is missing or does not fit the scan."""


@dataclass(frozen=True)
class ImportedCells:
    """Cells of an external segmentation.

    Attributes
    ----------
    weights : np.ndarray
        (cells, height, width) float32 footprints, peak 1, 0 outside each cell.
    fluorescence : np.ndarray
        (cells, frames) float32: suite2p ``F - neuropil_ratio * Fneu``; CaImAn ``C + YrA``.
    """

    weights: np.ndarray
    fluorescence: np.ndarray


def _beside(scan_path: str | Path, relative: str) -> Path:
    return Path(scan_path).parent / relative


def _peak_one(weights: np.ndarray) -> np.ndarray:
    peak = weights.reshape(len(weights), -1).max(axis=1) if len(weights) else np.zeros(0)
    return (weights / np.maximum(peak, 1e-12)[:, None, None]).astype(np.float32)


def read_suite2p(
    folder: str | Path, shape: tuple[int, int], *, only_cells: bool = True, neuropil_ratio: float = 0.7
) -> ImportedCells:
    """Cells of a suite2p plane folder.

    Parameters
    ----------
    folder
        The plane folder (``.../suite2p/plane0``).
    shape
        (height, width) of the scan's frames.
    only_cells
        Keep only the ROIs that ``iscell.npy`` marks as cells.
    neuropil_ratio
        Fraction of ``Fneu`` subtracted from ``F`` (suite2p's own default is 0.7).
    """
    folder = Path(folder)
    files = {name: folder / f"{name}.npy" for name in ("stat", "iscell", "F", "Fneu")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ImportedResultsError(
            f"suite2p output missing: {missing} (expected stat.npy, iscell.npy, F.npy and Fneu.npy in {folder})"
        )
    stat = np.load(files["stat"], allow_pickle=True)
    iscell = np.load(files["iscell"])
    fluorescence = np.load(files["F"]).astype(np.float32)
    neuropil = np.load(files["Fneu"]).astype(np.float32)
    if not (len(stat) == len(iscell) == len(fluorescence) == len(neuropil)):
        raise ImportedResultsError(
            f"{folder}: stat has {len(stat)} ROIs, iscell {len(iscell)}, F {len(fluorescence)}, "
            f"Fneu {len(neuropil)} (expected the same number in each)"
        )
    keep = np.flatnonzero(iscell[:, 0] > 0.5) if only_cells else np.arange(len(stat))
    height, width = shape
    weights = np.zeros((len(keep), height, width), dtype=np.float32)
    for i, roi in enumerate(stat[keep]):
        y, x = np.asarray(roi["ypix"], np.int64), np.asarray(roi["xpix"], np.int64)
        if y.size and (y.max() >= height or x.max() >= width or min(y.min(), x.min()) < 0):
            raise ImportedResultsError(
                f"{folder}: ROI {keep[i]} has pixels outside the scan's {height} x {width} "
                "frames (expected suite2p run on this scan)"
            )
        weights[i, y, x] = np.asarray(roi.get("lam", np.ones(y.size)), np.float32)
    return ImportedCells(_peak_one(weights), fluorescence[keep] - neuropil_ratio * neuropil[keep])


def read_caiman(path: str | Path, shape: tuple[int, int], *, only_accepted: bool = True) -> ImportedCells:
    """Cells of a CaImAn HDF5 results file (``cnm.save(path)``).

    Parameters
    ----------
    path
        The ``.hdf5`` file.
    shape
        (height, width) of the scan's frames.
    only_accepted
        Keep only ``estimates/idx_components`` where the file has them.
    """
    import h5py
    from scipy import sparse

    path = Path(path)
    if not path.is_file():
        raise ImportedResultsError(f"{path}: CaImAn results not found (expected the HDF5 file of cnm.save())")
    with h5py.File(path, "r") as f:
        if "estimates/A" not in f or "estimates/C" not in f:
            raise ImportedResultsError(f"{path}: no estimates/A and estimates/C (expected CaImAn's cnm.save() layout)")
        group = f["estimates/A"]
        matrix = sparse.csc_matrix(
            (group["data"][()], group["indices"][()], group["indptr"][()]), shape=tuple(group["shape"][()])
        )
        calcium = f["estimates/C"][()].astype(np.float32)
        if "estimates/YrA" in f and f["estimates/YrA"].shape == calcium.shape:
            calcium = calcium + f["estimates/YrA"][()].astype(np.float32)
        dims = tuple(int(d) for d in f["estimates/dims"][()]) if "estimates/dims" in f else tuple(shape)
        accepted = f["estimates/idx_components"][()] if "estimates/idx_components" in f else None
    if dims != tuple(shape) or matrix.shape[0] != shape[0] * shape[1]:
        raise ImportedResultsError(
            f"{path}: components of {dims} frames ({matrix.shape[0]} pixels) (expected the "
            f"scan's {shape[0]} x {shape[1]})"
        )
    if matrix.shape[1] != calcium.shape[0]:
        raise ImportedResultsError(
            f"{path}: A has {matrix.shape[1]} components but C {calcium.shape[0]} traces "
            "(expected one trace per component)"
        )
    keep = np.arange(matrix.shape[1])
    if only_accepted and accepted is not None and np.size(accepted):
        keep = np.asarray(accepted, np.int64)
    dense = matrix[:, keep].toarray().T  # (cells, pixels), pixels in Fortran order of (height, width)
    weights = dense.reshape(len(keep), shape[1], shape[0]).transpose(0, 2, 1)
    return ImportedCells(_peak_one(np.maximum(weights, 0)), calcium[keep])


def _as_segmentation(cells: ImportedCells, movie) -> segmentation.Segmentation:
    weights = cells.weights
    masks = weights > 0
    yy, xx = np.mgrid[: weights.shape[1], : weights.shape[2]]
    total = np.maximum(weights.sum(axis=(1, 2)), 1e-12)
    centers = np.stack([(weights * yy).sum(axis=(1, 2)) / total, (weights * xx).sum(axis=(1, 2)) / total], axis=1)
    image = segmentation.correlation_image(movie)
    scores = np.array([image[int(round(c[0])), int(round(c[1]))] for c in centers], dtype=np.float32)
    return segmentation.Segmentation(masks, weights, centers.astype(np.float32), image, scores)


@identity.register("imaging", "import_suite2p")
def import_suite2p(
    movie: np.ndarray, scan_path: str, *, folder: str = "suite2p/plane0", only_cells: bool = True
) -> segmentation.Segmentation:
    """Segmentation builder: the cells suite2p found, from ``folder`` beside the scan's file.

    The correlation image and each cell's score come from ``movie`` (the denoised movie), so
    that imported cells compare with the pipeline's own.
    """
    cells = read_suite2p(_beside(scan_path, folder), movie.shape[1:], only_cells=only_cells)
    return _as_segmentation(cells, movie)


@identity.register("imaging", "import_caiman")
def import_caiman(
    movie: np.ndarray, scan_path: str, *, file: str = "caiman_results.hdf5", only_accepted: bool = True
) -> segmentation.Segmentation:
    """Segmentation builder: the components CaImAn accepted, from ``file`` beside the scan's file."""
    cells = read_caiman(_beside(scan_path, file), movie.shape[1:], only_accepted=only_accepted)
    return _as_segmentation(cells, movie)


@identity.register("imaging", "import_traces")
def import_traces(
    source,
    weights: np.ndarray,
    fps: float,
    scan_path: str,
    *,
    origin: str = "suite2p",
    location: str = "",
    neuropil_ratio: float = 0.7,
    baseline_window: float = 60.0,
) -> dict[str, np.ndarray]:
    """Trace builder: suite2p's or CaImAn's own traces of an imported segmentation.

    Parameters
    ----------
    source
        The denoised movie (unused: the traces are the tool's, not re-extracted).
    weights
        (cells, height, width) footprints of the segmentation; they must be the imported
        cells of the same files, else this is an error.
    fps
        Frame rate (Hz), for the dF/F baseline.
    scan_path
        The scan's movie file; the results are beside it.
    origin
        ``"suite2p"`` or ``"caiman"``.
    location
        The suite2p folder or CaImAn file beside the scan (default: the segmentation
        builders' defaults).
    neuropil_ratio
        suite2p only: fraction of ``Fneu`` subtracted.
    baseline_window
        Seconds of the running baseline of dF/F (``pipeline.imaging.traces.baseline``).
    """
    shape = weights.shape[1:]
    if origin == "suite2p":
        cells = read_suite2p(_beside(scan_path, location or "suite2p/plane0"), shape, neuropil_ratio=neuropil_ratio)
    elif origin == "caiman":
        cells = read_caiman(_beside(scan_path, location or "caiman_results.hdf5"), shape)
    else:
        raise ImportedResultsError(f"origin {origin!r} (expected 'suite2p' or 'caiman')")
    if cells.weights.shape != weights.shape or not np.allclose(cells.weights, weights, atol=1e-6):
        raise ImportedResultsError(
            f"the segmentation's {len(weights)} masks are not the {len(cells.weights)} cells of the {origin} results "
            f"beside {Path(scan_path).name} (expected a segmentation imported by import_{origin} from them)"
        )
    dff, _ = traces.delta_f_over_f(cells.fluorescence, fps, window=baseline_window)
    return {"fluorescence": cells.fluorescence.astype(np.float32), "dff": dff.astype(np.float32)}
