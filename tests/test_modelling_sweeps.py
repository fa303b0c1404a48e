"""Sweeps over configs and seeds on a real database: declared as one row, expanded, trained, the best found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.sysid import search
from schemas import modelling, params, sysid, values, workers
from tests.modelling_helpers import TINY_DATA, TINY_MODEL, fresh_prefix, tiny_filetree

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--poll",
    "0.2",
    "--heartbeat",
    "0.3",
    "--heartbeat-timeout",
    "5",
    "--controller-interval",
    "0.5",
    "--refresh-interval",
    "0.5",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny_filetree(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)


@pytest.fixture
def dataset(db, folder) -> str:
    dataset_id = "sweep_tiny"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    return dataset_id


@pytest.fixture
def own_prefix(db):
    yield from fresh_prefix(db)


def _grid(name: str, dataset: str, **changes) -> dict:
    declared = dict(
        strategy="grid",
        datasets=[dataset],
        seeds=[0, 1],
        model_builder="cnn_factorized",
        base={"dataset": TINY_DATA, "model": TINY_MODEL, "trainer": {"max_epochs": 1}},
        space={"model.hidden_channels": [2, 3], "model.gamma_input": [0.5, 1.0], "trainer.lr": [3e-3, 1e-2]},
    )
    return modelling.add_sweep(name, **{**declared, **changes})


def test_grid_sweep_has_a_trial_per_combination_and_a_member_per_dataset_and_seed(dataset):
    _grid("grid_rows", dataset)
    assert modelling.expand("grid_rows") == 8
    assert modelling.expand("grid_rows") == 0  # expanding again adds nothing
    trials = (modelling.Sweep.Trial & {"sweep_name": "grid_rows"}).to_dicts(order_by="trial")
    assert [values.json_value(t["params"]) for t in trials][:2] == [
        {"model.gamma_input": 0.5, "model.hidden_channels": 2, "trainer.lr": 0.003},
        {"model.gamma_input": 0.5, "model.hidden_channels": 2, "trainer.lr": 0.01},
    ]
    assert len({(t["model_hash"], t["trainer_hash"]) for t in trials}) == 8
    keys = modelling.members("grid_rows")
    assert len(keys) == 16 and sorted({k["seed"] for k in keys}) == [0, 1]
    config = values.json_value((sysid.ModelConfig & trials[-1]).fetch1("config"))
    assert (config["hidden_channels"], config["gamma_input"], config["layers"]) == (3, 1.0, 1)


def test_random_sweep_trains_its_trials_not_the_cross_product_of_its_configs(dataset):
    modelling.add_sweep(
        "random_rows",
        strategy="random",
        n_trials=3,
        search_seed=7,
        datasets=[dataset],
        seeds=[0, 1],
        model_builder="cnn_factorized",
        base={"dataset": TINY_DATA, "model": TINY_MODEL},
        space={
            "model.gamma_readout": {"low": 1e-5, "high": 1e-3, "log": True},
            "trainer.lr": {"low": 1e-3, "high": 1e-2},
        },
    )
    assert modelling.expand("random_rows") == 3
    owned = (modelling.Sweep.OwnModelConfig & {"sweep_name": "random_rows"}).proj()
    assert len(owned) == 3 and len(modelling.Sweep.OwnTrainerConfig & {"sweep_name": "random_rows"}) == 3
    # 3 model configs x 3 trainer configs x 2 seeds would be 18 models; the sweep asks for 6
    queued = (sysid.TrainedModel.key_source & owned).keys()
    assert sorted(map(_key, queued)) == sorted(map(_key, modelling.members("random_rows")))
    assert len(queued) == 6
    # the dataset config it did not sample keeps training everything else, as before
    assert len(modelling.Sweep.OwnDatasetConfig & {"sweep_name": "random_rows"}) == 0


def test_a_released_config_trains_with_the_labs_other_configs_again(dataset):
    modelling.add_sweep(
        "released",
        strategy="random",
        n_trials=2,
        search_seed=1,
        datasets=[dataset],
        seeds=[0],
        model_builder="cnn_factorized",
        base={"dataset": TINY_DATA, "model": TINY_MODEL},
        space={"model.gamma_readout": {"low": 1e-5, "high": 1e-3, "log": True}},
    )
    modelling.expand("released")
    chosen = {"model_hash": modelling.trial_values("released")[0]["model_hash"]}
    lab = {
        "dataset_id": dataset,
        **chosen,
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 3, "patience": 4}),
    }
    assert len(sysid.TrainedModel.key_source & lab) == 0  # owned by the sweep
    assert modelling.release(chosen) == 1
    # now the product: every dataset config and seed in the database, with the lab's trainer
    assert len(sysid.TrainedModel.key_source & lab) == len(sysid.DatasetConfig()) * len(sysid.Seed())
    assert len(sysid.TrainedModel.key_source & lab) > 0


def _key(key: dict) -> tuple:
    return tuple(sorted(key.items()))


def test_random_samples_are_drawn_again_the_same_from_their_seed():
    space = {
        "model.hidden_channels": [2, 4, 8],
        "trainer.lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "trainer.patience": {"low": 2, "high": 6},
    }
    first = search.random_samples(space, 20, seed=3)
    assert first == search.random_samples(space, 20, seed=3)
    assert {s["model.hidden_channels"] for s in first} == {2, 4, 8}
    assert all(1e-3 <= s["trainer.lr"] <= 1e-1 and isinstance(s["trainer.lr"], float) for s in first)
    assert all(2 <= s["trainer.patience"] <= 6 and isinstance(s["trainer.patience"], int) for s in first)


def test_a_space_key_the_builder_does_not_take_is_an_error_at_declaration(dataset):
    with pytest.raises(
        ValueError,
        match=r"model builder 'cnn_factorized' does not take 'channels' \(space key "
        r"'model.channels'; expected one of \[",
    ):
        _grid("bad_key", dataset, space={"model.channels": [2, 4]})
    assert not modelling.Sweep & {"sweep_name": "bad_key"}


def test_a_space_value_of_the_wrong_type_is_an_error_at_declaration(dataset):
    with pytest.raises(
        identity.ConfigError,
        match=r"cnn_factorized'.hidden_channels = 2.5 has type float "
        r"\(expected int\)",
    ):
        _grid("bad_value", dataset, space={"model.hidden_channels": [2, 2.5]})
    assert not modelling.Sweep & {"sweep_name": "bad_value"}


def test_a_grid_over_a_range_is_an_error_at_declaration(dataset):
    with pytest.raises(search.SpaceError, match=r"a grid needs a list of values for every parameter; \['trainer.lr'\]"):
        _grid("bad_grid", dataset, space={"trainer.lr": {"low": 1e-3, "high": 1e-2}})
    assert not modelling.Sweep & {"sweep_name": "bad_grid"}


def test_best_of_a_sweep_not_yet_scored_says_how_much_is_scored(dataset):
    _grid("unscored", dataset, space={"model.hidden_channels": [2, 3]}, seeds=[0])
    modelling.expand("unscored")
    with pytest.raises(LookupError, match=r"no trial has feve on all its members yet \(0 of 2 members scored\)"):
        modelling.best("unscored", score="feve")
    with pytest.raises(ValueError, match=r"score 'r2' \(expected one of \['score', 'single_trial_correlation'"):
        modelling.best("unscored", score="r2")


@pytest.mark.slow
def test_optuna_sweep_asks_in_rounds_told_the_stored_scores(dataset):
    space = {"model.hidden_channels": [2, 3], "trainer.lr": {"low": 1e-3, "high": 3e-2, "log": True}}
    modelling.add_sweep(
        "bayes",
        strategy="optuna",
        n_trials=4,
        batch=2,
        search_seed=11,
        datasets=[dataset],
        seeds=[0],
        model_builder="cnn_factorized",
        base={"dataset": TINY_DATA, "model": TINY_MODEL, "trainer": {"max_epochs": 1}},
        space=space,
        objective="correlation_to_average",
    )
    assert modelling.expand("bayes") == 2
    assert modelling.expand("bayes") == 0  # round 1 is not scored yet
    _train_and_score(modelling.members("bayes"))
    told = [(t["params"], t["value"]) for t in modelling.trial_values("bayes")]
    assert len(told) == 2 and all(isinstance(v, float) for _, v in told)
    assert modelling.expand("bayes") == 2
    asked = [t["params"] for t in modelling.trial_values("bayes")[2:]]
    assert asked == search.optuna_ask(space, told, 2, seed=11)  # rebuilt from the stored rows: the same asks
    _train_and_score(modelling.members("bayes"))
    assert modelling.expand("bayes") == 0  # n_trials reached
    values = [t["value"] for t in modelling.trial_values("bayes")]
    assert modelling.best("bayes")["value"] == max(values)


def test_optuna_sweep_goes_on_past_a_trial_whose_training_diverged(dataset):
    modelling.add_sweep(
        "diverging",
        strategy="optuna",
        n_trials=2,
        batch=1,
        datasets=[dataset],
        seeds=[0],
        model_builder="cnn_factorized",
        base={"dataset": TINY_DATA, "model": TINY_MODEL, "trainer": {"max_epochs": 1}},
        space={"trainer.lr": [1e20]},
    )
    assert modelling.expand("diverging") == 1
    keys = modelling.members("diverging")
    result = sysid.TrainedModel.populate(keys, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    (trial,) = modelling.trial_values("diverging")
    assert (trial["failed"], trial["value"], trial["n_scored"]) == (True, None, 0)
    assert modelling.expand("diverging") == 1  # told as failed, not waited for
    with pytest.raises(LookupError, match=r"no trial has correlation_to_average on all its members yet"):
        modelling.best("diverging")


def _train_and_score(keys: list[dict]) -> None:
    assert sysid.TrainedModel.populate(keys, suppress_errors=True)["error_list"] == []
    assert sysid.Score.populate(keys, suppress_errors=True)["error_list"] == []


@pytest.mark.slow
def test_sweep_of_8_configs_and_2_seeds_is_trained_by_two_workers_and_the_best_is_found(own_prefix, folder, tmp_path):
    sysid.import_filetree(folder, "tiny")
    _grid("eight", "tiny")
    assert modelling.expand("eight") == 8
    env = {**os.environ, **own_prefix.env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"worker{i}.out", "w") for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "schemas.cli",
                "worker",
                "--exit-when-idle",
                *FAST,
                "--tables",
                "TrainedModel",
                "Score",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    output = "\n".join((tmp_path / f"worker{i}.out").read_text()[-2000:] for i in range(2))
    assert codes == [0, 0], output
    keys = modelling.members("eight")
    assert len(sysid.TrainedModel & keys) == 16 and len(sysid.Score & keys) == 16
    assert len(sysid.TrainedModel()) == 16  # nothing but the sweep's members was trained
    assert int(workers.Worker().to_arrays("jobs_done").sum()) == 32
    # the best trial by hand: mean correlation to average over the two seeds, highest
    rows = (modelling.Sweep.Member * modelling.Sweep.Trial * sysid.Score & {"sweep_name": "eight"}).to_dicts()
    means = {t: np.mean([r["correlation_to_average"] for r in rows if r["trial"] == t]) for t in range(8)}
    best = modelling.best("eight", score="correlation_to_average")
    assert best["trial"] == max(means, key=means.get)
    assert best["value"] == pytest.approx(means[best["trial"]], abs=1e-12)
    assert len(best["members"]) == 2 and {k["seed"] for k in best["members"]} == {0, 1}
    by_validation = modelling.best("eight", score="score")
    validation = {t["trial"]: t["value"] for t in modelling.trial_values("eight", "score")}
    assert by_validation["value"] == max(validation.values())
