"""The vision stage on a real database (both backends): stimulus set -> predicted responses ->
classifiers with and without neural targets -> robustness scores -> a distilled student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.simulation.population import simulate_population
from pipeline.vision import stimuli
from schemas import params, sysid, values, vision

torch.set_num_threads(1)

SIZE = 12
SIMULATION = dict(n_neurons=10, n_train=60, n_validation=12, n_test_images=6, repeats=2, height=SIZE, width=SIZE)
N_IMAGES = 200
TINY_CNN = {"channels": [4, 8]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return simulate_population(tmp_path_factory.mktemp("vision_sim") / "population", seed=2, **SIMULATION)


@pytest.fixture
def v1_model(db, folder):
    """A tiny trained model of V1 (sysid.TrainedModel) whose predictions are the neural targets."""
    dataset_id = f"vision_sim_{db.backend}"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    sysid.Seed.insert([{"seed": 0}, {"seed": 1}], skip_duplicates=True)
    key = {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 32}),
        **params.insert_config(
            sysid.ModelConfig, "cnn_factorized", {"hidden_channels": 4, "layers": 1, "input_kernel": 5}
        ),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1}),
        "seed": 0,
    }
    assert sysid.TrainedModel.populate(key, suppress_errors=True)["error_list"] == []
    return key


@pytest.fixture
def predicted(db, v1_model):
    name = f"digits{SIZE}"
    if not vision.StimulusSet & {"stimulus_set": name}:
        vision.insert_stimulus_set(name, "digits", {"height": SIZE, "width": SIZE, "n_images": N_IMAGES})
    restriction = {**v1_model, "stimulus_set": name}
    result = vision.PredictedResponses.populate(restriction, suppress_errors=True)
    assert result["error_list"] == []
    if not vision.NeuralTarget & {"stimulus_set": name, "target": "none"}:
        vision.add_neural_target(name, "none")
        vision.add_neural_target(name, "v1", {**v1_model, "model_state": "trained"})
        vision.add_neural_target(name, "v1_untrained", {**v1_model, "model_state": "untrained"})
    return restriction


@pytest.fixture
def classifiers(db, predicted):
    """Plain (no targets), similarity-regularized and co-trained (V1 targets) classifiers, seed 0."""
    data = params.insert_config(vision.ClassifierDataConfig, "stimulus_split", {"batch_size": 32})
    plain_cnn = params.insert_config(vision.ClassifierConfig, "digit_cnn", TINY_CNN)
    head_cnn = params.insert_config(vision.ClassifierConfig, "digit_cnn", {**TINY_CNN, "response_head": True})
    trainers = {
        name: params.insert_config(vision.ClassifierTrainerConfig, name, {"epochs": 6, "lr": 1e-2})
        for name in ("plain_classifier", "similarity_regularized", "cotrained")
    }
    base = {"stimulus_set": predicted["stimulus_set"], "seed": 0, **data}
    keys = {
        "plain": {**base, "target": "none", **plain_cnn, **trainers["plain_classifier"]},
        "similarity": {**base, "target": "v1", **plain_cnn, **trainers["similarity_regularized"]},
        "cotrained": {**base, "target": "v1", **head_cnn, **trainers["cotrained"]},
    }
    for key in keys.values():
        result = vision.TrainedClassifier.populate(key, suppress_errors=True)
        assert result["error_list"] == []
    return keys


def test_stimulus_set_stores_digits_fitted_to_the_model_input(predicted):
    row = (vision.StimulusSet & predicted).fetch1()
    assert (row["n_images"], row["height"], row["width"]) == (N_IMAGES, SIZE, SIZE)
    images, labels = vision.stimulus_arrays(predicted)
    expected = stimuli.digits_stimuli(height=SIZE, width=SIZE, n_images=N_IMAGES)
    assert np.array_equal(images, expected["images"]) and labels[:10].tolist() == list(range(10))


def test_predicted_responses_one_row_per_model_state_with_one_response_per_image_and_neuron(predicted):
    rows = (vision.PredictedResponses & predicted).to_dicts(order_by="model_state")
    assert [r["model_state"] for r in rows] == ["trained", "untrained"]
    trained, untrained = (np.asarray(r["responses"]) for r in rows)
    assert trained.shape == untrained.shape == (N_IMAGES, SIMULATION["n_neurons"])
    assert rows[0]["unit_ids"].tolist() == list(range(1, 11))
    assert (trained > 0).all()  # elu + 1 rates
    assert not np.allclose(trained, untrained)


def test_predicted_responses_equal_a_recomputation_from_the_trained_model(predicted, v1_model):
    from pipeline.vision import neural

    model, loaders = sysid.load_model(v1_model, device="cpu")
    images, _ = vision.stimulus_arrays(predicted)
    again = neural.encoder_predictions(model, loaders, v1_model["dataset_id"], images)
    stored = np.asarray((vision.PredictedResponses & predicted & {"model_state": "trained"}).fetch1("responses"))
    assert np.abs(again - stored).max() < 1e-5


def test_neural_target_without_predictions_has_none(predicted):
    assert vision.target_responses({"stimulus_set": predicted["stimulus_set"], "target": "none"}) is None
    v1 = vision.target_responses({"stimulus_set": predicted["stimulus_set"], "target": "v1"})
    assert v1.shape == (N_IMAGES, SIMULATION["n_neurons"])


def test_neural_target_of_missing_predictions_is_refused(predicted, v1_model):
    with pytest.raises(LookupError, match=r"matches 0 PredictedResponses rows of stimulus set 'digits12'"):
        vision.add_neural_target(predicted["stimulus_set"], "bad", {**v1_model, "seed": 1, "model_state": "trained"})
    assert not vision.NeuralTarget & {"target": "bad"}


def test_trained_classifiers_one_row_each_with_accuracy_and_history(classifiers):
    for name, key in classifiers.items():
        row = (vision.TrainedClassifier & key).fetch1()
        output = values.json_value(row["output"])
        assert len(output["history"]) == 6, name
        assert 0.25 < row["accuracy"] <= 1.0, (name, row["accuracy"])  # chance: 0.1
        assert values.json_value(row["provenance"])["seed"] == 0
    history = values.json_value((vision.TrainedClassifier & classifiers["similarity"]).fetch1("output"))["history"]
    assert all(h["similarity_penalty"] > 0 for h in history)
    history = values.json_value((vision.TrainedClassifier & classifiers["cotrained"]).fetch1("output"))["history"]
    assert history[-1]["response_mse"] < history[0]["response_mse"]


def test_a_trainer_that_needs_targets_fails_on_a_target_without(db, classifiers):
    key = {**classifiers["similarity"], "target": "none"}
    result = vision.TrainedClassifier.populate(key, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    assert "needs neural targets in the batches" in str(result["error_list"][0])
    assert not vision.TrainedClassifier & key


def test_robustness_score_has_every_distortion_at_three_strengths(classifiers):
    key = classifiers["plain"]
    assert vision.RobustnessScore.populate(key, suppress_errors=True)["error_list"] == []
    score = (vision.RobustnessScore & key).fetch1()
    model, loaders = vision.load_classifier(key, device="cpu")
    test = loaders["test"].dataset.arrays
    from pipeline.vision import training

    assert score["n_images"] == 50  # 25% of 200
    assert score["clean_accuracy"] == pytest.approx(training.accuracy(model, test["images"], test["labels"]))
    assert score["pgd_accuracy"] < score["clean_accuracy"]
    rows = (vision.RobustnessScore.Distortion & key).to_dicts(order_by=("distortion", "level"))
    assert [(r["distortion"], r["level"]) for r in rows][:3] == [("blur", 1), ("blur", 2), ("blur", 3)]
    assert len(rows) == 12 and {r["distortion"] for r in rows} == {
        "blur",
        "contrast",
        "gaussian_noise",
        "salt_and_pepper",
    }
    noise = [r["accuracy"] for r in rows if r["distortion"] == "gaussian_noise"]
    assert noise[-1] <= score["clean_accuracy"]


def test_distilled_student_counts_teacher_queries_and_scores_out_of_domain(classifiers):
    student = params.insert_config(vision.ClassifierConfig, "digit_mlp", {"hidden": 16})
    hard = params.insert_config(vision.ClassifierTrainerConfig, "hard_distillation", {"epochs": 2})
    key = {
        **classifiers["plain"],
        "student_hash": student["classifier_hash"],
        "distillation_hash": hard["classifier_trainer_hash"],
    }
    assert len(vision.DistilledClassifier.key_source & key) == 1
    assert vision.DistilledClassifier.populate(key, suppress_errors=True)["error_list"] == []
    row = (vision.DistilledClassifier & key).fetch1()
    assert row["teacher_queries"] == 2 * 2 * 120  # two queries per train image per epoch, 60% of 200
    domains = (vision.DistilledClassifier.Domain & key).to_dicts(order_by="domain")
    assert [d["domain"] for d in domains] == ["in_domain", "rotated_30", "scaled_70", "shifted_25"]
    teacher = (vision.RobustnessScore & classifiers["plain"]).fetch1("clean_accuracy")
    assert domains[0]["teacher_accuracy"] == pytest.approx(teacher)


def test_distillation_trainers_are_not_classifier_trainers(classifiers):
    hard = params.insert_config(vision.ClassifierTrainerConfig, "hard_distillation", {"epochs": 2})
    assert not vision.TrainedClassifier.key_source & hard


def test_unknown_trainer_is_refused_at_insert(db):
    with pytest.raises(identity.UnknownBuilderError, match=r"vision_trainer builder 'no_such' does not resolve"):
        params.insert_config(vision.ClassifierTrainerConfig, "no_such", {})


def test_deleting_a_classifier_removes_its_weights_and_its_students(db, classifiers):
    from pathlib import Path

    key = classifiers["cotrained"]
    student = params.insert_config(vision.ClassifierConfig, "digit_mlp", {"hidden": 8})
    kd = params.insert_config(vision.ClassifierTrainerConfig, "knowledge_distillation", {"epochs": 1})
    distilled = {**key, "student_hash": student["classifier_hash"], "distillation_hash": kd["classifier_trainer_hash"]}
    assert vision.DistilledClassifier.populate(distilled, suppress_errors=True)["error_list"] == []
    paths = [
        Path((vision.TrainedClassifier & key).fetch1("weights").full_path),
        Path((vision.DistilledClassifier & distilled).fetch1("weights").full_path),
    ]
    assert all(p.is_file() for p in paths)
    (vision.TrainedClassifier & key).delete(prompt=False)
    assert not vision.TrainedClassifier & key and not vision.DistilledClassifier & distilled
    assert [p.exists() for p in paths] == [False, False]


def test_status_reads_the_vision_tables(classifiers):
    from schemas.workers.status import table_status

    rows = {
        r["table"]: r
        for r in table_status(
            [vision.PredictedResponses, vision.TrainedClassifier, vision.RobustnessScore, vision.DistilledClassifier]
        )
    }
    trained = rows["vision.TrainedClassifier"]
    assert trained["rows"] >= 3 and trained["total"] - trained["remaining"] == trained["rows"]
    assert rows["vision.PredictedResponses"]["rows"] == 2
