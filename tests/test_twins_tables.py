"""Digital-twin tables on a real database (both backends): in-silico experiments and K-shot scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.simulation.population import simulate_population
from schemas import params, sysid, twins

torch.set_num_threads(1)

SMALL = dict(n_neurons=12, n_train=80, n_validation=16, n_test_images=6, repeats=4, height=12, width=16)
TINY_MODEL = {"hidden_channels": 4, "layers": 1, "input_kernel": 5}
FAST = {
    "mei": {"steps": 20, "contrast": 0.5},
    "noise_rf": {"n_images": 200},
    "gratings": {"n_orientations": 8, "frequencies": [0.1, 0.2], "n_phases": 4},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return simulate_population(tmp_path_factory.mktemp("sim") / "population", seed=2, **SMALL)


def _train(db, folder, builder: str, model: dict, dataset: dict | None = None) -> dict:
    dataset_id = f"twins_{db.backend}"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    key = {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 32, **(dataset or {})}),
        **params.insert_config(sysid.ModelConfig, builder, model),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1}),
        "seed": 0,
    }
    result = sysid.TrainedModel.populate(key, suppress_errors=True)
    assert result["error_list"] == []
    return key


@pytest.fixture
def experiments(db, folder):
    """A tiny trained CNN and one config of each in-silico experiment, all populated."""
    key = _train(db, folder, "cnn_factorized", TINY_MODEL)
    configs = {name: params.insert_config(twins.ExperimentConfig, name, config) for name, config in FAST.items()}
    for table in (twins.MEI, twins.ReceptiveField, twins.Tuning):
        result = table.populate(key, suppress_errors=True)
        assert result["error_list"] == []
    return key, configs


def test_each_experiment_table_takes_only_its_own_builder(experiments):
    key, configs = experiments
    assert len(twins.MEI & key) == 1 and len(twins.MEI & key & configs["mei"]) == 1
    assert len(twins.ReceptiveField & key & configs["noise_rf"]) == 1
    assert len(twins.Tuning & key & configs["gratings"]) == 1
    assert not twins.MEI & configs["gratings"]


def test_meis_are_stored_per_unit_at_the_configured_norm(experiments):
    key, configs = experiments
    row = (twins.MEI & key & configs["mei"]).fetch1()
    meis = np.asarray(row["meis"])
    assert meis.shape == (12, 1, 12, 16)
    assert np.allclose(np.linalg.norm(meis.reshape(12, -1), axis=1), 0.5 * np.sqrt(12 * 16), rtol=1e-4)
    assert row["unit_ids"].tolist() == list(range(1, 13))
    activations = (twins.MEI.Unit & key & configs["mei"]).to_arrays("activation", order_by="unit_id")
    assert activations.shape == (12,) and activations.min() > 0.0


def test_tuning_and_receptive_field_rows_per_unit(experiments):
    key, configs = experiments
    tuning = (twins.Tuning & key & configs["gratings"]).fetch1()
    assert np.asarray(tuning["curves"]).shape == (12, 8, 2)
    assert np.asarray(tuning["frequencies"]).tolist() == [0.1, 0.2]
    preferred = (twins.Tuning.Unit & key & configs["gratings"]).to_arrays("preferred_orientation")
    assert len(preferred) == 12 and 0.0 <= preferred.min() and preferred.max() < 180.0
    maps = np.asarray((twins.ReceptiveField & key & configs["noise_rf"]).fetch1("maps"))
    assert maps.shape == (12, 1, 12, 16)
    peaks = (twins.ReceptiveField.Unit & key).to_arrays("peak_x", "peak_y")
    assert len(peaks[0]) == 12 and 0.0 <= peaks[0].min() and peaks[0].max() <= 15.0


@pytest.fixture
def kshot(db, folder):
    """A tiny neural process trained on units 1-9 of 12; its K-shot score on units 10-12."""
    key = _train(
        db,
        folder,
        "neural_process",
        {"hidden_channels": 4, "layers": 1, "input_kernel": 5, "encoder_hidden": 8},
        dataset={"neuron_ids": list(range(1, 10))},
    )
    config = params.insert_config(twins.KShotConfig, "kshot_curve", {"ks": [5, 20, -1], "readout_steps": 20})
    result = twins.KShotScore.populate(key, suppress_errors=True)
    assert result["error_list"] == []
    return {**key, **config}


def test_neural_process_trains_through_trained_model_and_predicts_its_units(kshot):
    assert (sysid.ModelConfig & kshot).fetch1("builder") == "neural_process"
    scores = sysid.Score.populate(kshot, suppress_errors=True)
    assert scores["error_list"] == []
    assert (sysid.Score & kshot).fetch1("n_units") == 9


def test_kshot_score_has_a_point_per_k_and_method_for_the_held_out_units(kshot):
    row = (twins.KShotScore & kshot).fetch1()
    assert row["n_heldout"] == 3 and row["unit_ids"].tolist() == [10, 11, 12]
    assert row["n_context"] == 80  # the train tier of SMALL
    points = (twins.KShotScore.Point & kshot).to_dicts(order_by=("k_request", "method"))
    assert [(p["k_request"], p["k"], p["method"]) for p in points] == [
        (-1, 80, "fitted_readout"),
        (-1, 80, "neural_process"),
        (5, 5, "fitted_readout"),
        (5, 5, "neural_process"),
        (20, 20, "fitted_readout"),
        (20, 20, "neural_process"),
    ]
    for p in points:
        assert -1.0 <= p["correlation_to_average"] <= 1.0 and p["seconds_per_neuron"] > 0.0
        assert np.asarray(p["unit_correlation"]).shape == (3,)
        assert p["correlation_to_average"] == pytest.approx(np.asarray(p["unit_correlation"]).mean(), abs=1e-12)


def test_in_silico_experiments_run_on_a_neural_process_too(kshot):
    config = params.insert_config(twins.ExperimentConfig, "gratings", FAST["gratings"])
    assert twins.Tuning.populate(kshot, suppress_errors=True)["error_list"] == []
    assert len(twins.Tuning.Unit & kshot & config) == 9


def test_heldout_units_must_be_new_to_the_model():
    with pytest.raises(
        ValueError, match=r"heldout units \[3\] were used in training and \[99\] are not in the dataset"
    ):
        twins.heldout_units(np.arange(1, 13), {"neuron_ids": [1, 2, 3]}, [3, 99])
    with pytest.raises(ValueError, match=r"no held-out units"):
        twins.heldout_units(np.arange(1, 13), {"neuron_ids": None}, None)
    assert twins.heldout_units(np.arange(1, 6), {"neuron_ids": [1, 2, 3]}, None).tolist() == [4, 5]
