"""Ensembles of seeds scored as one model, and retraining from scratch, on a real database."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schemas import modelling, params, sysid, values
from tests.modelling_helpers import TINY_DATA, TINY_MODEL, tiny_filetree

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SCORES = ("single_trial_correlation", "correlation_to_average", "feve")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_filetree(tmp_path_factory.mktemp("tiny") / "tiny", seed=1)


@pytest.fixture
def config(db, folder) -> dict:
    """A tiny dataset and configs, trained and scored with seeds 0 and 1 (all but the seed of the keys)."""
    if not sysid.Dataset & {"dataset_id": "ensemble_tiny"}:
        sysid.import_filetree(folder, "ensemble_tiny")
    config = {
        "dataset_id": "ensemble_tiny",
        **params.insert_config(sysid.DatasetConfig, "filetree", TINY_DATA),
        # a model config no sweep of the session samples: sweeps own theirs (modelling.restrict_to_sweeps)
        **params.insert_config(sysid.ModelConfig, "cnn_factorized", {**TINY_MODEL, "hidden_channels": 4}),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2}),
    }
    keys = [{**config, "seed": seed} for seed in (0, 1)]
    sysid.Seed.insert(({"seed": seed} for seed in (0, 1, 5)), skip_duplicates=True)
    assert len(sysid.TrainedModel.key_source & keys) == 2
    assert sysid.TrainedModel.populate(keys, suppress_errors=True)["error_list"] == []
    assert sysid.Score.populate(keys, suppress_errors=True)["error_list"] == []
    return config


def test_an_ensemble_of_one_model_scores_exactly_as_the_model(config):
    key = modelling.add_ensemble(config, [0])
    modelling.EnsembleScore.populate(key)
    ensemble = (modelling.EnsembleScore & key).fetch1()
    single = (sysid.Score & {**config, "seed": 0}).fetch1()
    assert ensemble["n_models"] == 1 and ensemble["n_units"] == single["n_units"] == 6
    for name in SCORES:
        both_null = ensemble[name] is None and single[name] is None
        assert both_null or ensemble[name] == pytest.approx(single[name], abs=1e-12)
    units = (modelling.EnsembleScore.Unit & key).to_arrays("correlation_to_average", order_by="unit_id")
    single_units = (sysid.Score.Unit & {**config, "seed": 0}).to_arrays("correlation_to_average", order_by="unit_id")
    assert units.tolist() == pytest.approx(single_units.tolist(), abs=1e-12)


def test_an_ensemble_of_two_seeds_averages_their_predictions_into_one_score(config):
    key = modelling.add_ensemble(config, [1, 0])
    assert values.json_value((modelling.Ensemble & key).fetch1("seeds")) == [0, 1]
    modelling.EnsembleScore.populate(key)
    row = (modelling.EnsembleScore & key).fetch1()
    assert row["n_models"] == 2 and row["n_units"] == 6
    assert isinstance(row["correlation_to_average"], float) and math.isfinite(row["correlation_to_average"])
    assert -1.0 <= row["correlation_to_average"] <= 1.0
    members = [(sysid.Score & {**config, "seed": s}).fetch1("correlation_to_average") for s in (0, 1)]
    assert row["correlation_to_average"] not in members  # a score of its own, not a member's


def test_an_ensemble_waits_until_every_member_is_trained(config):
    key = modelling.add_ensemble(config, [0, 5])  # seed 5 is not trained
    assert not modelling.EnsembleScore.key_source & key
    assert modelling.EnsembleScore.populate(key)["success_count"] == 0


def test_an_ensemble_needs_distinct_int_seeds(config):
    with pytest.raises(ValueError, match=r"ensemble seeds \[0, 0\] \(expected distinct ints, at least one\)"):
        modelling.add_ensemble(config, [0, 0])


def test_retraining_from_scratch_gives_the_stored_weights_and_scores_back(config):
    result = modelling.retrain({**config, "seed": 1}, device="cpu")
    assert result["max_weight_difference"] == 0.0
    assert result["score"] == result["stored_score"]
    assert result["max_score_difference"] == 0.0
    assert result["stored"]["correlation_to_average"] == result["scores"]["correlation_to_average"]
    assert result["provenance"]["seed"] == result["stored_provenance"]["seed"] == 1


def test_retraining_a_key_that_matches_no_model_is_an_error(config):
    with pytest.raises(LookupError, match=r"retrain: .* matches 0 trained models \(expected exactly one\)"):
        modelling.retrain({**config, "seed": 5})


def test_retrain_command_reports_the_match(db, config):
    command = [
        sys.executable,
        "-m",
        "schemas.cli",
        "retrain",
        "dataset_id=ensemble_tiny",
        "seed=0",
        f"model_hash={config['model_hash']}",
        f"trainer_hash={config['trainer_hash']}",
        "--device",
        "cpu",
    ]
    env = {**os.environ, **db.env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "weights: max difference" in done.stdout
    assert "retrained: max difference 0 <= 1e-05" in done.stdout
