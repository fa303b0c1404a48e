"""Activity: spikes of every unit of a scan's traces, several methods side by side."""

import numpy as np
import pytest
import torch

from pipeline.spikes import infer_spikes
from tests.imaging_helpers import populate_small_scan
from tests.spikes_helpers import simulate_recordings

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scan(db, tmp_path_factory):
    from schemas import spikes

    traces_key = populate_small_scan(db, tmp_path_factory.mktemp("scan"))
    deconvolution = spikes.SpikeMethod.insert_method("deconvolution", {"order": 1})
    from pipeline.spikes import Recording

    spikes.GroundTruth.insert_recordings(
        [
            Recording(r["calcium"], r["spikes"], r["fps"], "activity-sim", r["name"])
            for r in simulate_recordings(2, seed=50, frames=1200, fps=15.0)
        ],
        skip_duplicates=True,
    )
    if not spikes.TrainingSet & {"training_set": "activity"}:
        spikes.TrainingSet.create("activity", {"truth_dataset": "activity-sim"})
    supervised = spikes.SpikeMethod.insert_method(
        "supervised",
        {
            "training_set": "activity",
            "channels": 4,
            "kernel": 5,
            "dilations": [1, 2],
            "window": 64,
            "batch_size": 4,
            "steps": 10,
        },
    )
    return {"traces": traces_key, "deconvolution": deconvolution, "supervised": supervised}


def test_supervised_method_waits_for_its_trained_model(db, scan):
    from schemas import spikes

    pending = spikes.Activity.key_source & scan["traces"]
    assert len(pending & scan["deconvolution"]) == 1
    if not spikes.SpikeModel & scan["supervised"]:
        assert len(pending & scan["supervised"]) == 0


def test_activity_has_the_deconvolved_spikes_of_every_unit(db, scan):
    from schemas import imaging, spikes

    key = {**scan["traces"], **scan["deconvolution"]}
    # workers of other tests (sweeps) may have populated it already: then its row is checked as is
    if not spikes.Activity & key:
        result = spikes.Activity.populate(key, reserve_jobs=True, suppress_errors=True)
        assert result["success_count"] == 1, result["error_list"]
    units = (imaging.Traces.Unit & scan["traces"]).to_dicts(order_by="unit_id")
    rows = (spikes.Activity.Unit & key).to_dicts(order_by="unit_id")
    assert [r["unit_id"] for r in rows] == [u["unit_id"] for u in units]
    fps = (imaging.Traces & scan["traces"]).fetch1("fps")
    expected = infer_spikes(np.stack([u["dff"] for u in units]), fps, "deconvolution", order=1)
    np.testing.assert_array_equal(np.stack([r["spikes"] for r in rows]), expected)
    assert (spikes.Activity & key).fetch1("n_units") == len(units)


def test_activity_of_a_supervised_method_uses_its_trained_model(db, scan):
    from schemas import imaging, spikes

    spikes.SpikeModel.populate(scan["supervised"], reserve_jobs=True, suppress_errors=True)
    key = {**scan["traces"], **scan["supervised"]}
    result = spikes.Activity.populate(key, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 1, result["error_list"]
    model = spikes.SpikeModel.load_model({**scan["supervised"], "training_set": "activity"})
    units = (imaging.Traces.Unit & scan["traces"]).to_dicts(order_by="unit_id")
    fps = (imaging.Traces & scan["traces"]).fetch1("fps")
    expected = infer_spikes(np.stack([u["dff"] for u in units]), fps, "supervised", model)
    rows = (spikes.Activity.Unit & key).to_dicts(order_by="unit_id")
    np.testing.assert_array_equal(np.stack([r["spikes"] for r in rows]), expected)
    # both methods side by side for the same cells
    assert len(spikes.Activity & scan["traces"] & [scan["deconvolution"], scan["supervised"]]) == 2


def test_pretrained_method_infers_without_ground_truth_or_training(db, scan):
    from schemas import imaging, spikes

    method = spikes.SpikeMethod.insert_method("pretrained")
    key = {**scan["traces"], **method}
    assert len(spikes.Activity.key_source & key) == 1  # no SpikeModel to wait for
    spikes.Activity.populate(key)
    stored = np.stack((spikes.Activity.Unit & key).to_arrays("spikes", order_by="unit_id"))
    dff = np.stack((imaging.Traces.Unit & scan["traces"]).to_arrays("dff", order_by="unit_id"))
    fps = (imaging.Traces & scan["traces"]).fetch1("fps")
    assert stored.shape == dff.shape and stored.shape[0] == 12
    assert np.array_equal(stored, infer_spikes(dff, fps, "pretrained"))
