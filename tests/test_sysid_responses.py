"""From a scan's inferred spikes to a dataset: TrialResponses and dataset_from_responses (both backends)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from imaging_helpers import populate_small_scan
from schemas import imaging, params, spikes, sysid


@pytest.fixture(scope="module")
def responses(db, tmp_path_factory):
    traces_key = populate_small_scan(db, tmp_path_factory.mktemp("scan"), seed=4)
    method = spikes.SpikeMethod.insert_method("deconvolution", {"order": 1})
    window = params.insert_config(sysid.ResponseWindow, "window_mean", {"start": 0.0, "stop": 0.6})
    restriction = {**traces_key, **method, **window}
    for table in (spikes.Activity, sysid.TrialResponses):
        result = table.populate(restriction, reserve_jobs=True, suppress_errors=True)
        assert result["error_list"] == []
    return (sysid.TrialResponses & restriction).fetch1("KEY")


def test_one_response_row_per_stimulus_trial(responses):
    row = (sysid.TrialResponses & responses).fetch1()
    n_trials = len(imaging.Trial & responses)
    assert row["n_trials"] == n_trials > 0
    assert len(sysid.TrialResponses.Trial & responses) == n_trials
    assert row["n_units"] == (imaging.Segmentation & responses).fetch1("ncells")
    assert bool(row["has_behavior"]) is True


def test_each_response_is_the_window_mean_of_the_units_activity(responses):
    trial = (sysid.TrialResponses.Trial * imaging.Trial & responses).to_dicts(order_by="trial_idx")[0]
    units = (spikes.Activity.Unit & responses).to_dicts(order_by="unit_id")
    fps = float((imaging.ScanInfo & responses).fetch1("fps"))
    first, last = trial["onset_frame"], trial["onset_frame"] + int(round(0.6 * fps))
    expected = np.array([np.nanmean(np.asarray(u["spikes"])[first:last]) for u in units], dtype=np.float32)
    np.testing.assert_allclose(trial["responses"], expected, rtol=1e-5, atol=1e-6)


def test_dataset_from_responses_puts_repeated_images_in_the_test_tier(responses):
    key = sysid.dataset_from_responses(responses, "scan_seed4")
    row = (sysid.Dataset & key).fetch1()
    shown = Counter(t["image_id"] for t in (imaging.Trial & responses).to_dicts())
    repeated_trials = sum(count for count in shown.values() if count > 1)
    assert row["origin"] == "trial_responses"
    assert row["n_trials"] == sum(shown.values())
    assert row["tiers"].get("test", 0) == repeated_trials
    assert row["n_neurons"] == (sysid.TrialResponses & responses).fetch1("n_units")
    assert (sysid.DatasetSource & key).fetch1("spike_method_hash") == responses["spike_method_hash"]
