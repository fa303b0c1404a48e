"""Configs a builder cannot take fail at insert, explosions fail as TrainingDiverged, tiny
validation sets are loud (issue 11, item 9)."""

from __future__ import annotations

import pytest
import torch

from models_helpers import synthetic_loaders
from pipeline import identity
from pipeline.simulation.population import simulate_population
from pipeline.sysid import models, training
from schemas import imaging, params, spikes, sysid, values

torch.set_num_threads(1)

TINY = {"hidden_channels": 4, "layers": 1, "input_kernel": 5, "gamma_readout": 1e-5}
POPULATION = dict(n_neurons=8, n_train=40, n_test_images=4, repeats=3, height=16, width=16)


def _train(loaders, **trainer):
    model = models.cnn_factorized(loaders, 0, **identity.normalize(models.cnn_factorized, TINY))
    config = identity.normalize(training.standard_trainer, {"max_epochs": 2, **trainer})
    return training.standard_trainer(model, loaders, 0, progress=False, **config)


# ------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------


def test_finite_explosion_raises_training_diverged():
    """lr=1e6 takes the loss from ~255 to ~1e21 in one step, finite all the way."""
    with pytest.raises(training.TrainingDiverged) as raised:
        _train(synthetic_loaders(n_train=64, n_validation=16), lr=1e6)
    message = str(raised.value)
    assert message.startswith("training diverged at epoch 1: loss is ")
    assert "(1e+06 x the first batch's 255; data_key 'd0', lr 1e+06)" in message


def test_healthy_training_is_not_called_diverged():
    result = _train(synthetic_loaders(n_train=64, n_validation=16), lr=0.01)
    assert result.output["epochs"] == 2 and result.output["warnings"] == []


def test_two_validation_trials_warn_and_are_recorded():
    loaders = synthetic_loaders(n_train=32, n_validation=2)
    expected = r"data_key 'd0' has only 2 trials \(expected at least 10\)"
    with pytest.warns(training.SmallValidationWarning, match=expected):
        result = _train(loaders)
    assert result.output["warnings"] == [
        "validation set of data_key 'd0' has only 2 trials (expected at least 10): its correlation is too noisy "
        "to choose the best epoch"
    ]


def test_one_validation_trial_is_an_error():
    with pytest.raises(ValueError, match=r"validation set of data_key 'd0' has 1 trial\(s\) \(expected at least 2"):
        _train(synthetic_loaders(n_train=32, n_validation=1))


# ------------------------------------------------------------------------------------------
# validation hooks of the registry
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, builder, config, message",
    [
        ("model", "cnn_factorized", {"layers": -1}, "model builder 'cnn_factorized': layers = -1 (expected >= 1)"),
        ("model", "cnn_gaussian", {"init_sigma": 0.0}, "builder 'cnn_gaussian': init_sigma = 0.0 (expected > 0.0)"),
        ("model", "rotation_factorized", {"rotations": 0}, "rotation_factorized': rotations = 0 (expected >= 1)"),
        ("model", "linear_nonlinear", {"gamma_l2": -1.0}, "linear_nonlinear': gamma_l2 = -1.0 (expected >= 0.0)"),
        ("trainer", "standard_trainer", {"lr": 0.0}, "trainer builder 'standard_trainer': lr = 0.0 (expected > 0.0)"),
        ("trainer", "standard_trainer", {"lr": float("inf")}, "lr = inf (expected > 0.0)"),
        ("dataset", "filetree", {"batch_size": 0}, "dataset builder 'filetree': batch_size = 0 (expected >= 1)"),
        ("imaging", "pmd", {"overlap": 32}, "imaging builder 'pmd': overlap = 32 (expected < block_size = 32)"),
        ("spikes", "deconvolution", {"order": 3}, "deconvolution': order must be 1 or 2 (AR(1) or AR(2)), got 3"),
        ("response", "window_mean", {"start": 0.5, "stop": 0.1}, "start = 0.5, stop = 0.1 s (expected 0 <= start"),
    ],
)
def test_builder_validation_hook_rejects_the_value(kind, builder, config, message):
    with pytest.raises(identity.ConfigError) as raised:
        identity.normalize(identity.resolve(kind, builder), config, name=f"{kind} builder {builder!r}")
    assert message in str(raised.value)


def test_a_users_builder_registers_its_own_hook():
    def my_model(dataloaders, seed, *, depth: int = 2):
        return None

    identity.register("model", "test_inputs_my_model", validate=identity.bounds(minimum={"depth": 1}))(my_model)
    with pytest.raises(identity.ConfigError, match=r"^my_model: depth = 0 \(expected >= 1\)$"):
        identity.normalize(my_model, {"depth": 0})
    assert identity.normalize(my_model, {"depth": 3}) == {"depth": 3}


# ------------------------------------------------------------------------------------------
# the tables
# ------------------------------------------------------------------------------------------


def test_layers_minus_one_fails_at_insert_config(db):
    before = len(sysid.ModelConfig())
    with pytest.raises(identity.ConfigError) as raised:
        params.insert_config(sysid.ModelConfig, "cnn_factorized", {"layers": -1})
    assert str(raised.value) == "model builder 'cnn_factorized': layers = -1 (expected >= 1)"
    assert len(sysid.ModelConfig()) == before


def test_direct_insert_with_unresolvable_builder_is_rejected(db):
    before = len(sysid.ModelConfig())
    with pytest.raises(identity.UnknownBuilderError, match=r"model builder 'no_such_model' does not resolve"):
        sysid.ModelConfig.insert1({"model_hash": "0" * 32, "builder": "no_such_model", "config": {}})
    assert len(sysid.ModelConfig()) == before


def test_direct_insert_of_a_bad_value_is_rejected(db):
    config_hash, config = params.make_config(sysid.ModelConfig, "cnn_factorized", {})
    with pytest.raises(identity.ConfigError, match=r"layers = -1 \(expected >= 1\)"):
        sysid.ModelConfig.insert1(
            {"model_hash": config_hash, "builder": "cnn_factorized", "config": {**config, "layers": -1}}
        )
    assert len(sysid.ModelConfig & {"model_hash": config_hash}) == 0


def test_direct_insert_needs_the_normalized_config_and_its_hash(db):
    config_hash, config = params.make_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 3})
    with pytest.raises(identity.ConfigError, match=r"which is not normalized \(expected \{'lr': 0.005"):
        sysid.TrainerConfig.insert1(
            {"trainer_hash": config_hash, "builder": "standard_trainer", "config": {"max_epochs": 3}}
        )
    with pytest.raises(identity.ConfigError, match=r"TrainerConfig.trainer_hash = 'f+' is not the hash of builder"):
        sysid.TrainerConfig.insert1({"trainer_hash": "f" * 32, "builder": "standard_trainer", "config": config})
    assert len(sysid.TrainerConfig & {"trainer_hash": config_hash}) == 0
    sysid.TrainerConfig.insert1({"trainer_hash": config_hash, "builder": "standard_trainer", "config": config})
    assert (sysid.TrainerConfig & {"trainer_hash": config_hash}).fetch1("builder") == "standard_trainer"


def test_every_parameter_table_checks_direct_inserts(db):
    tables = (imaging.PMDParams, imaging.MotionParams, spikes.SpikeMethod, sysid.ResponseWindow, sysid.DatasetConfig)
    for table in tables:
        attr = params.hash_attribute(table)
        with pytest.raises(identity.UnknownBuilderError, match=r"builder 'nope' does not resolve"):
            table.insert1({attr: "0" * 32, "builder": "nope", "config": {}})
        assert len(table & {attr: "0" * 32}) == 0


def test_a_generator_with_one_bad_row_inserts_nothing(db):
    good_hash, good = params.make_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 7})
    rows = (
        row
        for row in [
            {"trainer_hash": good_hash, "builder": "standard_trainer", "config": good},
            {"trainer_hash": "1" * 32, "builder": "standard_trainer", "config": {**good, "patience": 0}},
        ]
    )
    with pytest.raises(identity.ConfigError, match=r"patience = 0 \(expected >= 1\)"):
        sysid.TrainerConfig.insert(rows)
    assert len(sysid.TrainerConfig & {"trainer_hash": good_hash}) == 0
    one = [{"trainer_hash": good_hash, "builder": "standard_trainer", "config": good}]
    sysid.TrainerConfig.insert(row for row in one)
    assert len(sysid.TrainerConfig & {"trainer_hash": good_hash}) == 1


@pytest.fixture(scope="module")
def dataset(db, tmp_path_factory) -> dict:
    folder = simulate_population(tmp_path_factory.mktemp("pop") / "population", seed=2, n_validation=12, **POPULATION)
    dataset_id = f"inputs_{db.backend}"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    return {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 16}),
        **params.insert_config(sysid.ModelConfig, "cnn_factorized", TINY),
        "seed": 0,
    }


def test_exploding_training_fails_the_job_and_stores_no_model(db, dataset):
    key = {**dataset, **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2, "lr": 1e6})}
    result = sysid.TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    assert not sysid.TrainedModel & key
    message = (sysid.TrainedModel().jobs & key).fetch1("error_message")
    assert message.startswith("TrainingDiverged: training diverged at epoch 1: loss is ")
    assert "x the first batch's" in message and "lr 1e+06)" in message


def test_tiny_validation_set_is_recorded_in_the_trained_model(db, dataset, tmp_path):
    folder = simulate_population(tmp_path / "tiny", seed=3, n_validation=2, **POPULATION)
    dataset_id = f"inputs_tiny_{db.backend}"
    sysid.import_filetree(folder, dataset_id)
    assert values.json_value((sysid.Dataset & {"dataset_id": dataset_id}).fetch1("tiers"))["validation"] == 2
    trainer = params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1})
    key = {**dataset, "dataset_id": dataset_id, **trainer}
    with pytest.warns(training.SmallValidationWarning):
        result = sysid.TrainedModel.populate(key, suppress_errors=True)
    assert result["error_list"] == []
    output = values.json_value((sysid.TrainedModel & key).fetch1("output"))
    assert output["warnings"] == [
        f"validation set of data_key '{dataset_id}' has only 2 trials (expected at least 10): its correlation is too "
        "noisy to choose the best epoch"
    ]
