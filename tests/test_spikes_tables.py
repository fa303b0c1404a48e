"""Spike inference tables on a real server: methods, ground truth importers, trained models."""

import numpy as np
import pytest
import scipy.io
import torch

from pipeline import identity
from pipeline.spikes import infer_spikes, train_spike_model
from tests.spikes_helpers import simulate_cell, simulate_recordings

torch.set_num_threads(1)
TRAINING = {
    "channels": 4,
    "kernel": 5,
    "dilations": [1, 2],
    "window": 64,
    "batch_size": 4,
    "steps": 20,
    "learning_rate": 0.01,
}


@pytest.fixture(scope="module")
def tables(db):
    from schemas import spikes

    return spikes


def _write_spikefinder(folder, n_cells=2, frames=1200):
    calcium, counts = zip(*(simulate_cell(i, frames=frames, fps=100.0) for i in range(n_cells)))
    np.savetxt(folder / "7.train.calcium.csv", np.stack(calcium, 1), delimiter=",", header="0,1", comments="")
    np.savetxt(folder / "7.train.spikes.csv", np.stack(counts, 1), delimiter=",", header="0,1", comments="")
    return calcium, counts


def test_spike_method_rejects_a_parameter_its_builder_does_not_take(tables):
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['threshold'\]"):
        tables.SpikeMethod.insert_method("deconvolution", {"threshold": 1.0})
    assert len(tables.SpikeMethod & {"builder": "deconvolution", "note": "rejected"}) == 0


def test_spike_method_of_equal_configs_is_one_row(tables):
    first = tables.SpikeMethod.insert_method("deconvolution", {"order": 2})
    second = tables.SpikeMethod.insert_method("deconvolution", {"order": 2, "tau": 1})  # 1 == the default 1.0
    assert first == second
    assert (tables.SpikeMethod & first).fetch1("config")["order"] == 2


def test_spikefinder_importer_inserts_one_row_per_cell(tables, tmp_path):
    calcium, counts = _write_spikefinder(tmp_path)
    n = tables.GroundTruth.import_spikefinder(
        tmp_path / "7.train.calcium.csv", tmp_path / "7.train.spikes.csv", dataset="sf-test", indicator="sim"
    )
    row = (tables.GroundTruth & {"truth_dataset": "sf-test", "recording": "7.train.1"}).fetch1()
    assert n == 2 and row["fps"] == 100.0 and row["source"] == "7.train.calcium.csv"
    np.testing.assert_allclose(row["calcium"], calcium[1], rtol=1e-6)
    assert row["spikes"].sum() == counts[1].sum()


def test_cascade_importer_reads_every_mat_file_of_a_folder(tables, tmp_path):
    folder = tmp_path / "DS99-sim"
    folder.mkdir()
    for i in range(2):
        calcium, counts = simulate_cell(10 + i, frames=900, fps=30.0)
        times = np.repeat(np.arange(900) / 30.0, counts.astype(int))
        struct = {"fluo_time": np.arange(900) / 30.0, "fluo_mean": calcium, "events_AP": times * 1e4}
        scipy.io.savemat(folder / f"cell{i}.mat", {"CAttached": struct})
    assert tables.GroundTruth.import_cascade(folder) == 2
    rows = (tables.GroundTruth & {"truth_dataset": "DS99-sim"}).to_dicts(order_by="recording")
    assert [r["recording"] for r in rows] == ["cell0", "cell1"]
    assert rows[1]["fps"] == pytest.approx(30.0)
    assert rows[1]["spikes"].sum() == counts.sum()


def test_cascade_importer_of_an_empty_folder_is_an_error(tables, tmp_path):
    with pytest.raises(FileNotFoundError, match="no CASCADE .mat files"):
        tables.GroundTruth.import_cascade(tmp_path)


def test_training_set_of_no_recordings_is_an_error(tables):
    with pytest.raises(ValueError, match="training set 'nothing': no GroundTruth rows match"):
        tables.TrainingSet.create("nothing", {"truth_dataset": "absent"})


@pytest.fixture(scope="module")
def trained(tables):
    recordings = simulate_recordings(3, seed=20, frames=1500)
    for r in recordings:
        r["dataset"] = "sim-train"
    from pipeline.spikes import Recording

    tables.GroundTruth.insert_recordings(
        [Recording(r["calcium"], r["spikes"], r["fps"], r["dataset"], r["name"]) for r in recordings]
    )
    set_key = tables.TrainingSet.create("sim", {"truth_dataset": "sim-train"})
    method = tables.SpikeMethod.insert_method("supervised", {"training_set": "sim", **TRAINING})
    result = tables.SpikeModel.populate(method, reserve_jobs=True, suppress_errors=True)
    return {"set": set_key, "method": method, "result": result, "recordings": recordings}


def test_spike_model_trains_on_its_training_set(tables, trained):
    assert trained["result"]["success_count"] == 1, trained["result"]["error_list"]
    row = (tables.SpikeModel & trained["method"]).fetch1()
    assert row["n_recordings"] == 3 and row["training_set"] == "sim"
    assert -1 <= row["training_correlation"] <= 1
    assert row["versions"]["torch"] == torch.__version__


def test_spike_model_weights_reproduce_training_in_the_pipeline(tables, trained):
    model = tables.SpikeModel.load_model(trained["method"])
    from pipeline.spikes import Recording

    recordings = [
        Recording(r["calcium"], r["spikes"], r["fps"], r["dataset"], r["name"]) for r in trained["recordings"]
    ]
    again = train_spike_model(sorted(recordings, key=lambda r: r.name), **TRAINING)
    calcium, _ = simulate_cell(99, frames=600)
    np.testing.assert_array_equal(
        infer_spikes(calcium, 30.0, "supervised", model), infer_spikes(calcium, 30.0, "supervised", again)
    )


def test_deconvolution_methods_train_no_model(tables, trained):
    deconvolution = tables.SpikeMethod.insert_method("deconvolution", {})
    assert len(tables.SpikeModel.key_source & deconvolution) == 0
    assert tables.SpikeModel.key_source & trained["method"]  # the supervised method's training set
    assert (tables.SpikeModel.key_source & trained["method"]).fetch1("training_set") == "sim"


def test_export_pretrained_writes_weights_the_pretrained_method_uses(tables, tmp_path):
    from pipeline.spikes import weights

    from pipeline.spikes import Recording

    recordings = simulate_recordings(3, seed=40)
    tables.GroundTruth.insert_recordings(
        [Recording(r["calcium"], r["spikes"], r["fps"], "shipped-sim", f"ship{i}") for i, r in enumerate(recordings)]
    )
    tables.TrainingSet.create("shipped", {"truth_dataset": "shipped-sim"})
    path = tables.export_pretrained("shipped", path=tmp_path / "lab.pt", config=TRAINING)
    model, provenance = weights.read(path)
    assert provenance["training_set"] == "shipped" and provenance["n_recordings"] == 3
    assert provenance["datasets"] == ["shipped-sim"]
    key = {"spike_method_hash": provenance["spike_method_hash"], "training_set": "shipped"}
    stored = tables.SpikeModel.load_model(key)
    trace = simulate_cell(99, frames=600)[0]
    expected = infer_spikes(trace, 30.0, "supervised", stored)
    assert np.array_equal(infer_spikes(trace, 30.0, "supervised", model), expected)
    # a second export reuses the trained row: the same weights
    again, _ = weights.read(tables.export_pretrained("shipped", path=tmp_path / "again.pt", config=TRAINING))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_export_pretrained_names_a_missing_training_set(tables):
    with pytest.raises(ValueError, match=r"training set 'nowhere' does not exist \(expected one of: "):
        tables.export_pretrained("nowhere")


def test_spike_model_calibrated_on_a_preparation_keeps_its_shift(tables, trained):
    calibrated = tables.SpikeMethod.insert_method(
        "supervised", {"training_set": "sim", "calibrate": "sim-train", **TRAINING}
    )
    result = tables.SpikeModel.populate(calibrated, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 1, result["error_list"]
    from pipeline.spikes import Recording

    recordings = [
        Recording(r["calcium"], r["spikes"], r["fps"], r["dataset"], r["name"]) for r in trained["recordings"]
    ]
    again = train_spike_model(sorted(recordings, key=lambda r: r.name), calibrate="sim-train", **TRAINING)
    model = tables.SpikeModel.load_model(calibrated)
    assert model.config["shift"] == again.config["shift"] and abs(model.config["shift"]) <= 0.2
    assert model.config["blur"] == again.config["blur"]
    assert model.config["gain"] == pytest.approx(again.config["gain"])


def test_calibrating_on_a_dataset_outside_the_training_set_is_a_job_error(tables, trained):
    method = tables.SpikeMethod.insert_method("supervised", {"training_set": "sim", "calibrate": "my-rig", **TRAINING})
    result = tables.SpikeModel.populate(method, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and not tables.SpikeModel & method
    message = (tables.SpikeModel.jobs & "status = 'error'").to_arrays("error_message")
    assert any("calibrate names dataset 'my-rig', which has no training recording: ['sim-train']" in m for m in message)
