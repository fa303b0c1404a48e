"""Test helper for every part: a tiny simulated scan registered and populated through Traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMALL_SCAN = dict(n_cells=12, height=40, width=40, n_frames=300, n_images=10, fps=15.0)


def small_experiment(seed: int = 0):
    """The tiny simulated experiment behind ``populate_small_scan`` (12 cells, 40x40, 300 frames)."""
    from pipeline.simulation.experiment import simulate_experiment

    return simulate_experiment(seed, **SMALL_SCAN)


def populate_small_scan(db, tmp_path: Path, seed: int = 0) -> dict:
    """Register a tiny simulated scan and populate ScanInfo .. Traces for it.

    The scan key is ``animal_id = 9000 + seed, session = 1, scan_idx = 1``; its stimulus
    images get ``image_id = 10000 * seed + i``. Idempotent (a second call populates nothing
    new). Uses the default parameter set of every step.

    Parameters
    ----------
    db
        The ``db`` fixture (schemas activated on one backend).
    tmp_path
        Unused scratch folder (the movie goes to the raw store of the pipeline home).
    seed
        Seed of the simulated experiment.

    Returns
    -------
    dict
        The primary key of the ``Traces`` row.
    """
    import torch

    from schemas import imaging

    torch.set_num_threads(1)
    key = {"animal_id": 9000 + int(seed), "session": 1, "scan_idx": 1}
    if not imaging.Scan & key:
        imaging.insert_simulated_scan(small_experiment(seed), key, image_id_offset=10000 * int(seed))
    defaults = imaging.insert_default_params()
    restriction = {**key, **{k: v for d in defaults.values() for k, v in d.items()}}
    for table in (imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised, imaging.Segmentation, imaging.Traces):
        result = table.populate(restriction, reserve_jobs=True, suppress_errors=True, display_progress=False)
        if result["error_list"]:
            raise RuntimeError(f"populate_small_scan: {table.__name__} failed: {result['error_list']}")
    return (imaging.Traces & restriction).fetch1("KEY")


def blob_movie(frames: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(frames, height, width) float: three Gaussian cells with random activity over noise (mean 100).

    A movie of pure noise denoises to rank 0 (an infinite SNR gain, which MySQL cannot store);
    these cells give PMD something to keep.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    movie = rng.normal(100, 2, (frames, *shape))
    centres = ((shape[0] * 0.3, shape[1] * 0.3), (shape[0] * 0.6, shape[1] * 0.7), (shape[0] * 0.8, shape[1] * 0.2))
    kernel = np.exp(-np.arange(frames) / 4.0)  # calcium decay: smooth in time, as PMD expects of signal
    for cy, cx in centres:
        footprint = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        activity = np.convolve(rng.binomial(1, 0.1, frames), kernel)[:frames]
        movie += 60 * activity[:, None, None] * footprint
    return movie
