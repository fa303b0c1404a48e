"""The whole chain on video trials: a simulated two-photon scan of neurons watching movies to a scored latent model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.simulation.video import simulate_video_scan
from pipeline.sysid.responses import frames
from schemas import imaging, params, spikes, sysid

torch.set_num_threads(1)

SCAN = dict(n_cells=12, height=40, width=40, frames=20, n_train=16, n_validation=10, n_test_videos=2, test_repeats=3)


def test_frames_pairs_every_movie_frame_with_its_activity():
    activity = np.arange(2 * 50, dtype=np.float32).reshape(2, 50)
    behavior = {
        k: np.arange(50, dtype=np.float32) * (i + 1)
        for i, k in enumerate(("running", "pupil_radius", "pupil_x", "pupil_y"))
    }
    out = frames(activity, np.array([3, 20]), 10.0, behavior, np.array([5, 5]), lag=0.2)
    assert out["responses"].shape == (2, 5, 2)
    assert out["responses"][1, :, 0].tolist() == [22.0, 23.0, 24.0, 25.0, 26.0]  # onset 20, lag 2 frames
    assert out["behavior"][0, 0].tolist() == [10.0, 5.0]  # pupil radius then running, at frame 5
    assert out["pupil_center"].reshape(-1, 2).mean(0) == pytest.approx([0.0, 0.0], abs=1e-5)
    with pytest.raises(ValueError, match=r"trials last \[5, 6\] frames"):
        frames(activity, np.array([3, 20]), 10.0, None, np.array([5, 6]))
    with pytest.raises(ValueError, match="trial 1: frames 46..50 outside the recording"):
        frames(activity, np.array([3, 46]), 10.0, None, np.array([5, 5]))


@pytest.fixture(scope="module")
def video_scan():
    return simulate_video_scan(7, **SCAN)


def test_simulated_video_scan_shows_movies_back_to_back(video_scan):
    assert video_scan.movie.shape == (32 * 20, 40, 40)
    assert video_scan.images.shape == (16 + 10 + 2, 20, 18, 32)
    assert video_scan.trials["onset_frame"][:3].tolist() == [0, 20, 40]
    assert video_scan.rates.shape == (32, 20, 12)
    assert video_scan.spikes.shape == (12, 640)
    first = int(np.nonzero(video_scan.trials["image_id"] == 27)[0][0])
    assert np.array_equal(video_scan.images[27], video_scan.video.videos[first])


def test_video_scan_to_scored_latent_model(db, video_scan):
    key = {"animal_id": 9700, "session": 1, "scan_idx": 1}
    imaging.insert_simulated_scan(video_scan, key, image_id_offset=97000)
    defaults = imaging.insert_default_params()
    restriction = {**key, **{k: v for d in defaults.values() for k, v in d.items()}}
    for table in (imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised, imaging.Segmentation, imaging.Traces):
        assert table.populate(restriction, suppress_errors=True)["error_list"] == []
    method = spikes.SpikeMethod.insert_method("deconvolution", {"order": 1})
    window = params.insert_config(sysid.ResponseWindow, "frames", {"lag": 0.0})
    restriction = {**restriction, **method, **window}
    for table in (spikes.Activity, sysid.TrialResponses):
        assert table.populate(restriction, suppress_errors=True)["error_list"] == []
    source = (sysid.TrialResponses & restriction).fetch1()
    trial = (sysid.TrialResponses.Trial & restriction & {"trial_idx": 0}).fetch1()
    assert np.asarray(trial["responses"]).shape == (20, source["n_units"])
    assert np.asarray(trial["behavior"]).shape == (20, 2)

    dataset = sysid.dataset_from_responses(restriction, f"video_scan_{db.backend}")
    row = (sysid.Dataset & dataset).fetch1()
    assert row["origin"] == "video_trial_responses"
    assert (row["n_trials"], row["height"], row["width"]) == (32, 18, 32)
    assert row["tiers"]["test"] == 6  # the two movies shown three times

    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    model = {
        **dataset,
        **params.insert_config(sysid.DatasetConfig, "video_filetree", {"clip_frames": 10, "batch_size": 4}),
        **params.insert_config(
            sysid.ModelConfig,
            "video_latent",
            {"hidden_channels": 4, "layers": 1, "input_kernel": 3, "input_temporal": 4, "latent_dim": 2},
        ),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 1}),
        "seed": 0,
    }
    for table in (sysid.TrainedModel, sysid.Score, sysid.VideoScore):
        assert table.populate(model, suppress_errors=True)["error_list"] == []
    assert (sysid.Score & model).fetch1("n_units") == source["n_units"]
    scored = (sysid.VideoScore & model).fetch1()
    assert np.isfinite(scored["log_likelihood"])
    assert scored["latent_recovery"] is None  # a recorded dataset has no true latents
