"""Datasets, configs, trained models, scores and reproduce on a real database (both backends)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.simulation.population import simulate_population
from pipeline.sysid import data
from schemas import params, sysid, values

torch.set_num_threads(1)

SMALL = dict(n_neurons=20, n_train=60, n_validation=12, n_test_images=8, repeats=4, height=16, width=16)
TINY_MODEL = {"hidden_channels": 4, "layers": 1, "input_kernel": 5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return simulate_population(tmp_path_factory.mktemp("sim") / "population", seed=1, **SMALL)


@pytest.fixture
def trained(db, folder):
    """A dataset, one config of each kind, a seed; one TrainedModel and its Score populated."""
    dataset_id = f"sim_{db.backend}"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    key = {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 32}),
        **params.insert_config(sysid.ModelConfig, "cnn_factorized", TINY_MODEL),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2}),
        "seed": 0,
    }
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    result = sysid.TrainedModel.populate(key, suppress_errors=True)
    assert result["error_list"] == []
    sysid.Score.populate(key)
    return key


def test_equal_model_configs_written_differently_get_one_key(db):
    a = params.insert_config(sysid.ModelConfig, "cnn_factorized", {"gamma_input": 1, "hidden_channels": 8})
    b = params.insert_config(
        sysid.ModelConfig, "cnn_factorized", {"layers": 3, "hidden_channels": 8, "gamma_input": 1.0, "pad_input": False}
    )
    assert a == b
    row = (sysid.ModelConfig & a).fetch1()
    config = values.json_value(row["config"])
    assert config["gamma_input"] == 1.0 and isinstance(config["gamma_input"], float)
    c = params.insert_config(sysid.ModelConfig, "cnn_factorized", {"gamma_input": 2.0, "hidden_channels": 8})
    assert c != a


def test_equal_dataset_configs_with_and_without_defaults_get_one_key(db):
    a = params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 16})
    b = params.insert_config(
        sysid.DatasetConfig, "filetree", {"normalize": True, "tiers": ("train", "validation", "test"), "batch_size": 16}
    )
    assert a == b and len(sysid.DatasetConfig & a) == 1


def test_unknown_config_key_is_an_error_at_insert(db):
    before = len(sysid.TrainerConfig())
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['learning_rate'\]"):
        params.insert_config(sysid.TrainerConfig, "standard_trainer", {"learning_rate": 0.1})
    assert len(sysid.TrainerConfig()) == before


def test_builder_that_does_not_resolve_is_an_error_at_insert(db):
    before = len(sysid.ModelConfig())
    with pytest.raises(identity.UnknownBuilderError, match=r"model builder 'no_such_model' does not resolve"):
        params.insert_config(sysid.ModelConfig, "no_such_model", {})
    assert len(sysid.ModelConfig()) == before


def test_bad_filetree_is_rejected_before_anything_is_inserted(db, folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "bad")
    np.save(bad / "data" / "behavior" / "4.npy", np.zeros(2, np.float32))
    with pytest.raises(data.FileTreeError, match=r"data/behavior/4.npy has shape \(2,\) \(expected \(3,\)\)"):
        sysid.import_filetree(bad, "bad_folder")
    assert not sysid.Dataset & {"dataset_id": "bad_folder"}


def test_imported_dataset_exports_to_the_same_arrays(db, folder, tmp_path):
    sysid.import_filetree(folder, "export_me", note="round trip")
    row = (sysid.Dataset & {"dataset_id": "export_me"}).fetch1()
    assert (row["n_trials"], row["n_neurons"], row["height"], row["origin"]) == (104, 20, 16, "filetree")
    assert values.json_value(row["tiers"]) == {"test": 32, "train": 60, "validation": 12}
    out = data.read_filetree(sysid.export_dataset({"dataset_id": "export_me"}, tmp_path / "exported"))
    original = data.read_filetree(folder)
    assert np.array_equal(out.responses, original.responses) and np.array_equal(out.images, original.images)


def test_trained_model_records_provenance_and_cpu_weights(trained):
    row = (sysid.TrainedModel & trained).fetch1()
    provenance = values.json_value(row["provenance"])
    assert provenance["seed"] == 0 and provenance["torch"] == torch.__version__
    assert provenance["packages"]["datajoint"].startswith("2.3") and provenance["wall_time"] > 0
    assert {"cuda", "gpu", "host", "git_commit"} <= provenance.keys()
    state = torch.load(__import__("io").BytesIO(row["weights"].read()), map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    assert -1.0 <= row["score"] <= 1.0


def test_score_has_one_row_per_unit(trained):
    score = (sysid.Score & trained).fetch1()
    units = (sysid.Score.Unit & trained).to_arrays("unit_id", "correlation_to_average", order_by="unit_id")
    assert units[0].tolist() == list(range(1, 21))
    assert score["correlation_to_average"] == pytest.approx(units[1].mean(), abs=1e-12)


def test_reproduce_gives_the_stored_scores_back_on_cpu(trained):
    result = sysid.reproduce(trained, device="cpu")
    assert result["max_difference"] < 1e-5
    stored = (sysid.Score & trained).fetch1("single_trial_correlation")
    assert result["scores"]["single_trial_correlation"] == pytest.approx(stored, abs=1e-5)


def test_reproduce_command_reports_the_match(db, trained):
    command = [
        sys.executable,
        "-m",
        "schemas.cli",
        "reproduce",
        f"dataset_id={trained['dataset_id']}",
        "seed=0",
        "--device",
        "cpu",
    ]
    done = subprocess.run(
        command, env={**__import__("os").environ, **db.env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "reproduced: max difference" in done.stdout
    assert f"dataset_id={trained['dataset_id']}" in done.stdout


def test_nan_loss_fails_the_job_and_inserts_nothing(db, trained):
    key = {**trained, **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2, "lr": 1e20})}
    result = sysid.TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    assert not sysid.TrainedModel & key
    job = (sysid.TrainedModel().jobs & key).fetch1()
    assert job["status"] == "error"
    assert job["error_message"].startswith("TrainingDiverged: training diverged at epoch 1: loss is nan")


def test_deleting_a_trained_model_removes_its_weights(db, trained):
    ref = (sysid.TrainedModel & trained).fetch1("weights")
    path = Path(ref.full_path)
    assert path.is_file()
    (sysid.TrainedModel & trained).delete(prompt=False)
    assert not sysid.TrainedModel & trained and not sysid.Score & trained
    assert not path.exists()


def test_deleting_a_dataset_removes_its_folder(db, folder):
    sysid.import_filetree(folder, "delete_me")
    stored = Path((sysid.Dataset & {"dataset_id": "delete_me"}).fetch1("filetree").full_path)
    assert (stored / "meta" / "trials" / "tiers.npy").is_file()
    (sysid.Dataset & {"dataset_id": "delete_me"}).delete(prompt=False)
    assert not sysid.Dataset & {"dataset_id": "delete_me"}
    assert not stored.exists()
