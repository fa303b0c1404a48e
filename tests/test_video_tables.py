"""Video datasets and models in the tables, on a real database (both backends)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.simulation.video import simulate_video
from pipeline.sysid import video
from schemas import params, sysid, twins

torch.set_num_threads(1)

SMALL = dict(n_neurons=10, n_train=12, n_validation=10, n_test_videos=2, test_repeats=3, frames=16, height=10, width=12)
TINY = {"hidden_channels": 4, "layers": 1, "input_kernel": 3, "input_temporal": 4}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    experiment = simulate_video(5, kernel_frames=4, **SMALL)
    return video.write_video_filetree(tmp_path_factory.mktemp("video") / "movies", experiment.filetree())


def _model(db, folder, builder: str, config: dict) -> dict:
    dataset_id = f"movies_{db.backend}"
    if not sysid.Dataset & {"dataset_id": dataset_id}:
        sysid.import_filetree(folder, dataset_id)
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    return {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "video_filetree", {"clip_frames": 8, "batch_size": 4}),
        **params.insert_config(sysid.ModelConfig, builder, config),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1}),
        "seed": 0,
    }


def test_video_folder_is_a_dataset_with_its_frame_size(db, folder, tmp_path):
    key = _model(db, folder, "video_gaussian", TINY)
    row = (sysid.Dataset & {"dataset_id": key["dataset_id"]}).fetch1()
    assert (row["origin"], row["n_trials"], row["n_neurons"], row["height"], row["width"]) == (
        "video_filetree",
        28,
        10,
        10,
        12,
    )
    assert row["tiers"] == {"test": 6, "train": 12, "validation": 10}
    exported = sysid.export_dataset({"dataset_id": key["dataset_id"]}, tmp_path / "exported")
    assert np.array_equal(video.read_video_filetree(exported).responses, video.read_video_filetree(folder).responses)


def test_video_models_train_and_score_through_the_tables(db, folder):
    plain = _model(db, folder, "video_gaussian", TINY)
    latent = _model(db, folder, "video_latent", {**TINY, "latent_dim": 2, "encoder_hidden": 8})
    for key in (plain, latent):
        result = sysid.TrainedModel.populate(key, suppress_errors=True)
        assert result["error_list"] == []
        assert sysid.Score.populate(key, suppress_errors=True)["error_list"] == []
        assert (sysid.Score & key).fetch1("n_units") == 10
        assert len(sysid.Score.Unit & key) == 10
    # only the latent model has a likelihood to score; image stimuli drive neither of them
    assert len(sysid.VideoScore.key_source & plain) == 0
    assert len(sysid.image_models() & plain) == 0 and len(sysid.image_models() & latent) == 0
    mei = params.insert_config(twins.ExperimentConfig, "mei", {"steps": 5})
    assert len(twins.MEI.key_source & mei & plain) == 0 and len(twins.MEI.key_source & mei & latent) == 0
    assert sysid.VideoScore.populate(latent, suppress_errors=True)["error_list"] == []
    row = (sysid.VideoScore & latent).fetch1()
    assert row["n_observed"] == 5 and row["samples"] == sysid.VideoScore.SAMPLES
    assert np.isfinite(row["log_likelihood_conditioned"])
    assert [r["kind"] for r in row["latent_recovery"]] == ["running", "pupil", "hidden", "hidden"]
    assert set(row["behavior_correlation"]) == {"pupil_dilation", "running_speed"}
    # the stored weights reproduce the stored scores
    assert sysid.reproduce(latent, device="cpu")["max_difference"] < 1e-5


def test_movies_and_images_are_never_paired_with_the_other_kind_of_builder(db, folder, tmp_path):
    from pipeline.simulation.population import simulate_population

    video_key = _model(db, folder, "video_latent", TINY)
    static = simulate_population(
        tmp_path / "static",
        seed=0,
        n_neurons=4,
        n_train=20,
        n_validation=4,
        n_test_images=2,
        repeats=2,
        height=8,
        width=8,
    )
    image_id = f"images_{db.backend}"
    sysid.import_filetree(static, image_id)
    image_data = params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 16})
    image_model = params.insert_config(sysid.ModelConfig, "linear_nonlinear", {})
    params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2})  # as other modules add theirs
    # one trainer config and seed
    source = sysid.TrainedModel.key_source & {"seed": 0, "trainer_hash": video_key["trainer_hash"]}
    assert len(source & video_key) == 1
    assert len(source & {"dataset_id": image_id} & image_data & image_model) == 1
    # no image builder on the movies, no video builder on the images
    assert len(source & {"dataset_id": video_key["dataset_id"]} & image_data) == 0
    assert len(source & {"dataset_id": video_key["dataset_id"]} & image_model) == 0
    assert len(source & {"dataset_id": image_id} & {"model_hash": video_key["model_hash"]}) == 0
    assert len(source & {"dataset_id": image_id} & {"dataset_config_hash": video_key["dataset_config_hash"]}) == 0
