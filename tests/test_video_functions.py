"""Video experiments without a database: simulation, the dynamic FileTree, clip loaders, models, likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.simulation.video import simulate_video
from pipeline.sysid import fitting, metrics, video
from pipeline.sysid.data import FileTreeError
from pipeline.sysid.models.video import Factorized3dCore, zig_log_prob

torch.set_num_threads(1)

SMALL = dict(n_neurons=10, n_train=12, n_validation=4, n_test_videos=2, test_repeats=3, frames=16, height=10, width=12)


@pytest.fixture(scope="module")
def experiment():
    return simulate_video(3, kernel_frames=4, **SMALL)


@pytest.fixture(scope="module")
def folder(experiment, tmp_path_factory):
    return video.write_video_filetree(tmp_path_factory.mktemp("video") / "movies", experiment.filetree())


def test_simulation_repeats_share_movies_and_behaviour_follows_its_latent(experiment):
    assert experiment.videos.shape == (12 + 4 + 6, 16, 10, 12)
    assert experiment.responses.shape == (22, 16, 10)
    assert sorted(np.unique(experiment.tiers, return_counts=True)[1].tolist()) == [4, 6, 12]
    test = np.nonzero(experiment.tiers == "test")[0]
    ids, counts = np.unique(experiment.video_ids[test], return_counts=True)
    assert counts.tolist() == [3, 3]
    same = test[experiment.video_ids[test] == ids[0]]
    assert np.array_equal(experiment.videos[same[0]], experiment.videos[same[1]])
    # but each repeat has its own latent state, so its own rates
    assert not np.allclose(experiment.rates[same[0]], experiment.rates[same[1]])
    big = simulate_video(1, n_neurons=5, n_train=40, frames=60, height=8, width=8, kernel_frames=4)
    kinds = big.latent_kinds.tolist()
    running = np.corrcoef(big.latents[..., kinds.index("running")].ravel(), big.behavior[..., 1].ravel())[0, 1]
    pupil = np.corrcoef(big.latents[..., kinds.index("pupil")].ravel(), big.behavior[..., 0].ravel())[0, 1]
    hidden = np.corrcoef(big.latents[..., kinds.index("hidden")].ravel(), big.behavior[..., 1].ravel())[0, 1]
    assert running > 0.6 and pupil > 0.9 and abs(hidden) < 0.2


def test_simulation_rejects_unknown_latent_kind():
    with pytest.raises(ValueError, match=r"latent_kinds \['arousal'\]"):
        simulate_video(0, latent_kinds=("running", "arousal"), **SMALL)


def test_filetree_round_trip_in_the_sensorium_2023_axes(experiment, folder):
    # time last on disk, as the public dynamic folders
    assert np.load(folder / "data" / "videos" / "0.npy").shape == (10, 12, 16)
    assert np.load(folder / "data" / "responses" / "0.npy").shape == (10, 16)
    assert np.load(folder / "data" / "behavior" / "0.npy").shape == (2, 16)
    tree = video.read_video_filetree(folder)
    assert np.array_equal(tree.responses, experiment.responses)
    assert np.array_equal(tree.videos, experiment.videos)
    assert np.array_equal(tree.video_ids, experiment.video_ids)
    assert tree.meta["ground_truth/latents"].shape == (22, 16, 4)
    assert tree.frame_shape == (10, 12)


def test_missing_video_ids_come_from_content_and_lengths_are_cut(experiment, folder, tmp_path):
    copy = video.write_video_filetree(tmp_path / "copy", video.read_video_filetree(folder))
    (copy / "meta" / "trials" / "video_id.npy").unlink()
    longer = np.load(copy / "data" / "responses" / "0.npy")
    np.save(copy / "data" / "responses" / "0.npy", np.concatenate([longer, longer[:, :3]], 1))
    tree = video.read_video_filetree(copy)
    assert tree.frames == 16
    # repeats of a movie share the id computed from its content, other trials do not
    for a in range(tree.n_trials):
        for b in range(tree.n_trials):
            assert (tree.video_ids[a] == tree.video_ids[b]) == (experiment.video_ids[a] == experiment.video_ids[b])


def test_bad_folders_name_the_file(folder, tmp_path):
    copy = video.write_video_filetree(tmp_path / "bad", video.read_video_filetree(folder))
    responses = np.load(copy / "data" / "responses" / "5.npy")
    responses[2, 3] = np.nan
    np.save(copy / "data" / "responses" / "5.npy", responses)
    with pytest.raises(FileTreeError, match="responses of trial 5 has NaN"):
        video.read_video_filetree(copy)
    np.save(copy / "data" / "behavior" / "1.npy", np.zeros((3, 16)))
    with pytest.raises(FileTreeError, match=r"data/behavior/1.npy has shape \(3, 16\) \(expected \(2, T\)\)"):
        video.read_video_filetree(copy)


def test_loaders_give_clips_for_training_and_whole_trials_otherwise(folder):
    loaders = identity.resolve("dataset", "video_filetree")(0, paths=[str(folder)], clip_frames=5, batch_size=4)
    train = loaders["train"]["movies"]
    assert len(train.dataset) == 12 * 3  # 16 frames give 3 clips of 5
    batch = next(iter(train))
    assert tuple(batch["videos"].shape) == (4, 1, 5, 10, 12)
    assert tuple(batch["responses"].shape) == (4, 5, 10)
    assert tuple(batch["behavior"].shape) == (4, 5, 2)
    assert set(batch["start"].tolist()) <= {0, 5, 10}
    test = loaders["test"]["movies"]
    assert len(test.dataset) == 6 and test.dataset.window_frames == 16
    # responses are scaled by the train tier's per-neuron standard deviation
    stacked = np.concatenate([train.dataset.arrays["responses"].reshape(-1, 10)])
    assert np.allclose(stacked.std(0), 1.0, atol=1e-5)


def test_predict_flattens_frames_with_one_id_per_movie_frame(folder):
    loaders = identity.resolve("dataset", "video_filetree")(0, paths=[str(folder)])
    model = identity.resolve("model", "video_gaussian")(loaders, 0, hidden_channels=4, layers=1, input_kernel=3)
    responses, predictions, ids = metrics.predict(model, loaders["test"]["movies"], "movies")
    assert responses.shape == predictions.shape == (6 * 16, 10)
    assert len(np.unique(ids)) == 2 * 16  # two movies of 16 frames, each seen three times
    scores = metrics.test_scores(responses, predictions, ids)
    assert scores["unit_fev"].shape == (10,)


def test_core_is_causal_in_time():
    core = Factorized3dCore(1, 3, 2, 3, 3, 4, 2).eval()
    clip = torch.randn(1, 1, 12, 8, 8)
    later = clip.clone()
    later[:, :, 7:] += 1.0
    with torch.no_grad():
        a, b = core(clip), core(later)
    assert torch.equal(a[:, :, :7], b[:, :, :7])
    assert (a[:, :, 7:] - b[:, :, 7:]).abs().max() > 0.01


def test_zero_inflated_gamma_is_a_density():
    loc = 0.01
    log_mean, q_logit, shape = torch.tensor(0.3), torch.tensor(0.4), torch.tensor(1.7)
    below = math.exp(float(zig_log_prob(torch.tensor(0.0), log_mean, q_logit, shape, loc))) * loc
    y = torch.linspace(loc, loc + 60.0, 600001)
    density = torch.exp(zig_log_prob(y, log_mean.expand_as(y), q_logit.expand_as(y), shape.expand_as(y), loc))
    above = float(torch.trapezoid(density, y))
    assert below == pytest.approx(1 - torch.sigmoid(q_logit).item(), abs=1e-6)
    assert below + above == pytest.approx(1.0, abs=2e-3)


def test_latent_model_trains_through_fit_and_scores(experiment, folder):
    config = {"paths": [str(folder)], "data_keys": ["movies"], "clip_frames": 8, "batch_size": 4}
    model_config = {"hidden_channels": 4, "layers": 1, "input_kernel": 3, "latent_dim": 2, "encoder_hidden": 8}
    fit = fitting.fit(
        identity.resolve("dataset", "video_filetree"),
        config,
        identity.resolve("model", "video_latent"),
        model_config,
        identity.resolve("trainer", "standard_trainer"),
        {"max_epochs": 2},
        0,
    )
    assert fit.output["epochs"] == 2 and np.isfinite(fit.score)
    model, loaders = fitting.rebuild(
        identity.resolve("dataset", "video_filetree"),
        config,
        identity.resolve("model", "video_latent"),
        model_config,
        0,
        fitting.state_dict_bytes(fit.state_dict),
        device="cpu",
    )
    scores = video.video_scores(
        model,
        loaders,
        "movies",
        samples=4,
        true_latents=experiment.latents,
        latent_kinds=experiment.latent_kinds.tolist(),
    )
    assert scores["n_observed"] == 5 and scores["samples"] == 4
    assert np.isfinite([scores[k] for k in ("log_likelihood", "log_likelihood_conditioned")]).all()
    assert [r["kind"] for r in scores["latent_recovery"]] == ["running", "pupil", "hidden", "hidden"]
    assert set(scores["behavior_correlation"]) == {"pupil_dilation", "running_speed"}
    # the same weights give the same likelihood (seeded Monte Carlo)
    again = video.video_scores(model, loaders, "movies", samples=4)
    assert again["log_likelihood"] == pytest.approx(scores["log_likelihood"], abs=1e-6)
    with pytest.raises(TypeError, match="VideoModel has no likelihood"):
        video.video_scores(model.video, loaders, "movies")


def test_video_model_needs_a_video_dataset(tmp_path):
    from pipeline.simulation.population import simulate_population

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
    loaders = identity.resolve("dataset", "filetree")(0, paths=[str(static)])
    with pytest.raises(ValueError, match="batches have no 'videos'"):
        identity.resolve("model", "video_latent")(loaders, 0)
    with pytest.raises(identity.ConfigError, match="mask_fraction"):
        identity.normalize(identity.resolve("model", "video_latent"), {"mask_fraction": 1.0})
