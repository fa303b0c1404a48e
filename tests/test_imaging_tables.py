"""The imaging tables on a real database: a simulated scan populates from ScanInfo to Traces."""

import numpy as np

from schemas import imaging
from tests.imaging_helpers import populate_small_scan, small_experiment


def test_small_scan_populates_every_table(db, tmp_path):
    key = populate_small_scan(db, tmp_path, seed=0)
    scan = {k: key[k] for k in ("animal_id", "session", "scan_idx")}
    info = (imaging.ScanInfo & scan).fetch1()
    assert (info["nframes"], info["height"], info["width"], info["fps"]) == (300, 40, 40, 15.0)
    assert info["software"] == "ScanImage 2016b"
    assert len(imaging.Trial & scan) == len(small_experiment(0).trials["image_id"])
    assert (imaging.Denoised & key).fetch1("rank") > 0
    ncells = (imaging.Segmentation & key).fetch1("ncells")
    assert ncells == len(imaging.Traces.Unit & key) >= 6
    dff = (imaging.Traces.Unit & key).to_dicts()[0]["dff"]
    assert dff.shape == (300,) and dff.dtype == np.float32
