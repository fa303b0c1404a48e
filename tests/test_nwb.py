"""NWB export of a scan's results, read back with pynwb."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from pynwb import NWBHDF5IO

from schemas import imaging, ingest, nwb, spikes
from tests.imaging_helpers import populate_small_scan


@pytest.fixture(scope="module")
def exported(db, tmp_path_factory):
    """The small simulated scan through Activity, exported; and its Traces key."""
    key = populate_small_scan(db, tmp_path_factory.mktemp("scan"), seed=0)
    method = ingest.insert_default_parameters()["spikes"][0]
    spikes.Activity.populate({**key, **method}, suppress_errors=False)
    path = nwb.export_scan(key, tmp_path_factory.mktemp("nwb") / "scan.nwb")
    with NWBHDF5IO(str(path), "r") as io:
        yield key, method, io.read()


def test_masks_are_the_segmentation_footprints(exported):
    key, _, nwbfile = exported
    rois = nwbfile.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
    ids, weights = imaging.Segmentation.weights((imaging.Segmentation & key).fetch1("KEY"), (40, 40))
    assert rois["image_mask"].data.shape == weights.shape
    np.testing.assert_array_equal(rois["image_mask"].data[:], weights)
    assert rois["mask_id"].data[:].tolist() == ids.tolist()


def test_fluorescence_and_dff_are_the_traces(exported):
    key, _, nwbfile = exported
    units = (imaging.Traces.Unit & key).to_dicts(order_by="unit_id")
    ophys = nwbfile.processing["ophys"]
    fluorescence = ophys["Fluorescence"]["fluorescence"]
    dff = ophys["DfOverF"]["dff"]
    assert fluorescence.data.shape == (300, len(units)) and fluorescence.rate == 15.0
    np.testing.assert_array_equal(fluorescence.data[:, 0], units[0]["fluorescence"])
    np.testing.assert_array_equal(dff.data[:, -1], units[-1]["dff"])


def test_inferred_spikes_of_each_method(exported):
    key, method, nwbfile = exported
    series = nwbfile.processing["ophys"]["InferredSpikes"][f"spikes_{method['spike_method_hash'][:8]}"]
    first = (spikes.Activity.Unit & key & method).to_dicts(order_by="unit_id")[0]["spikes"]
    assert series.data.shape[0] == 300
    np.testing.assert_array_equal(series.data[:, 0], first)


def test_trials_are_time_intervals_in_seconds(exported):
    key, _, nwbfile = exported
    trials = (imaging.Trial & key).to_dicts(order_by="trial_idx")
    table = nwbfile.trials.to_dataframe()
    assert len(table) == len(trials)
    assert table["image_id"].tolist() == [t["image_id"] for t in trials]
    assert table["start_time"].iloc[1] == pytest.approx(trials[1]["onset_frame"] / 15.0)
    assert table["stop_time"].iloc[1] == pytest.approx((trials[1]["onset_frame"] + trials[1]["duration_frames"]) / 15.0)


def test_key_matching_no_traces_is_an_error(db, tmp_path):
    with pytest.raises(nwb.ExportError, match=r"selects 0 Traces rows \(expected exactly 1"):
        nwb.export_scan({"animal_id": 1234567}, tmp_path / "none.nwb")


def test_export_nwb_command_writes_the_file(exported, db, tmp_path):
    key, _, _ = exported
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(db.env)
    pairs = [f"{k}={v}" for k, v in key.items()]
    out = subprocess.run(
        [sys.executable, "-m", "schemas.cli", "export-nwb", *pairs, str(tmp_path / "cli.nwb")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    with NWBHDF5IO(str(tmp_path / "cli.nwb"), "r") as io:
        assert io.read().processing["ophys"]["DfOverF"]["dff"].data.shape[0] == 300
