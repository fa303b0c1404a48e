"""Spike inference as plain functions: the metric, deconvolution, the supervised network, readers."""

import numpy as np
import pytest
import scipy.io
import scipy.signal
import torch

from pipeline import identity
from pipeline.spikes import (
    deconvolve,
    estimate_ar,
    estimate_noise,
    infer_spikes,
    read_cascade,
    read_spikefinder,
    spikefinder_correlation,
    train_spike_model,
)
from pipeline.spikes.resampling import rebin, to_100hz
from tests.spikes_helpers import simulate_cell, simulate_recordings

torch.set_num_threads(1)
SMALL = {"channels": 8, "kernel": 5, "dilations": (1, 2, 4), "window": 64, "batch_size": 8}


@pytest.fixture(scope="module")
def small_model():
    return train_spike_model(simulate_recordings(4), steps=150, learning_rate=0.01, seed=0, **SMALL)


def test_spikefinder_correlation_sums_bins_of_four_before_correlating():
    truth = np.zeros(16)
    truth[[0, 5, 6, 13]] = 1  # per 40 ms bin: 1, 2, 0, 1
    prediction = np.zeros(16)
    prediction[[3, 4, 7, 12]] = 1  # moved within its bin: the same binned series
    assert spikefinder_correlation(prediction, truth) == pytest.approx(1.0)


def test_spikefinder_correlation_matches_pearson_of_binned_series():
    prediction = np.array([0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 0, 3], float)
    truth = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0], float)
    # bins: prediction 1, 3, 3; truth 1, 2, 1
    assert spikefinder_correlation(prediction, truth) == pytest.approx(np.corrcoef([1, 3, 3], [1, 2, 1])[0, 1])


def test_spikefinder_correlation_drops_samples_where_either_is_nan():
    truth = np.array([1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, np.nan, np.nan], float)
    prediction = np.array([1, 0, np.nan, 0, 0, 0, 2, 0, 0, 0, 0, 1, 5, 5], float)
    # kept samples: truth [1,0,0,0 | 0,2,0,0 | 0,0,1] -> 1, 2; prediction [1,0,0,0 | 0,2,0,0 | ...] -> 1, 2
    truth_kept = np.array([1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1], float)
    assert spikefinder_correlation(prediction, truth) == pytest.approx(
        spikefinder_correlation(np.array([1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1], float), truth_kept)
    )
    assert spikefinder_correlation(prediction, truth) == pytest.approx(1.0)


def test_spikefinder_correlation_of_a_constant_prediction_is_nan():
    assert np.isnan(spikefinder_correlation(np.ones(40), np.arange(40.0)))


def test_noise_is_estimated_from_the_power_spectrum():
    rng = np.random.default_rng(1)
    assert estimate_noise(0.3 * rng.standard_normal(20000)) == pytest.approx(0.3, rel=0.03)


def test_ar1_coefficient_is_recovered_from_a_noisy_trace():
    calcium, _ = simulate_cell(0, frames=20000, fps=30.0, tau=0.6, noise=0.2)
    (g,) = estimate_ar(calcium, 1, estimate_noise(calcium))
    assert g == pytest.approx(np.exp(-1 / (0.6 * 30)), abs=0.02)


def test_ar1_deconvolution_recovers_spikes_of_a_simulated_cell():
    calcium, counts = simulate_cell(2, frames=6000, fps=100.0, tau=0.6, noise=0.15)
    spikes = infer_spikes(calcium, 100.0)[0]
    assert spikes.min() >= 0
    assert spikefinder_correlation(spikes, counts) > 0.8


def test_ar2_deconvolution_recovers_spikes_of_a_simulated_cell():
    calcium, counts = simulate_cell(2, frames=6000, fps=100.0, tau=0.6, noise=0.15)
    spikes = infer_spikes(calcium, 100.0, order=2)[0]
    assert spikefinder_correlation(spikes, counts) > 0.75


def test_deconvolution_residual_matches_the_noise():
    calcium, _ = simulate_cell(3, frames=6000, fps=30.0, noise=0.2)
    spikes, fit = deconvolve(calcium, 30.0, fudge_factor=1.0)  # the AR model as estimated
    fitted = fit["baseline"] + scipy.signal.lfilter([1.0], np.concatenate([[1.0], -fit["g"]]), spikes)
    assert fit["noise"] == pytest.approx(0.2, rel=0.15)
    assert np.std(calcium - fitted) == pytest.approx(fit["noise"], rel=0.05)


def test_nan_gaps_are_missing_in_the_output_and_do_not_spread():
    calcium, counts = simulate_cell(4, frames=3000, fps=30.0)
    calcium[1000:1050] = np.nan
    calcium[2900:] = np.nan  # a shorter cell, as in the spikefinder files
    spikes = infer_spikes(calcium, 30.0)[0]
    assert np.flatnonzero(np.isnan(spikes)).tolist() == list(range(1000, 1050)) + list(range(2900, 3000))
    assert spikefinder_correlation(spikes, counts) > 0.6


def test_all_nan_trace_gives_all_nan_spikes():
    traces = np.vstack([np.full(300, np.nan), simulate_cell(5, frames=300)[0]])
    spikes = infer_spikes(traces, 30.0)
    assert np.isnan(spikes[0]).all() and np.isfinite(spikes[1]).all()


def test_constant_trace_has_no_spikes():
    assert np.array_equal(infer_spikes(np.full((2, 500), 3.0), 30.0), np.zeros((2, 500), np.float32))


def test_constant_trace_has_no_spikes_in_the_supervised_model(small_model):
    assert np.array_equal(infer_spikes(np.full((1, 500), 3.0), 30.0, "supervised", small_model), np.zeros((1, 500)))


@pytest.mark.parametrize("fps", [0, -30.0, float("nan"), "fast"])
def test_fps_that_is_not_positive_is_an_error(fps):
    with pytest.raises(ValueError, match=f"fps must be a positive number of frames per second, got {fps!r}"):
        infer_spikes(np.zeros((1, 100)), fps)


def test_trace_shorter_than_the_model_window_is_an_error(small_model):
    with pytest.raises(
        ValueError,
        match=r"trace has 20 samples at 30 Hz \(0.67 s\); the supervised model needs "
        r"at least 1.16 s \(29 bins at 25 Hz\)",
    ):
        infer_spikes(np.random.default_rng(0).standard_normal((1, 20)), 30.0, "supervised", small_model)


def test_supervised_method_without_a_model_is_an_error():
    with pytest.raises(ValueError, match="method 'supervised' needs a trained model"):
        infer_spikes(np.zeros((1, 100)), 30.0, "supervised")


def test_unknown_method_parameter_is_a_config_error():
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['lambda'\]"):
        infer_spikes(np.zeros((1, 100)), 30.0, order=1, **{"lambda": 2.0})


def test_ar_order_other_than_1_or_2_is_an_error():
    with pytest.raises(ValueError, match="order must be 1 or 2 \\(AR\\(1\\) or AR\\(2\\)\\), got 3"):
        infer_spikes(np.zeros((1, 100)), 30.0, order=3)


def test_rebin_keeps_spike_counts_when_changing_rate():
    counts = np.random.default_rng(0).poisson(0.3, 3000).astype(float)
    assert rebin(counts, 30.0, 25.0, 2500, "sum").sum() == pytest.approx(counts.sum())
    assert to_100hz(counts, 30.0).sum() == pytest.approx(counts.sum())


@pytest.mark.parametrize("fps", [11.6, 100.0])
def test_rebin_keeps_the_level_of_a_trace_when_changing_rate(fps):
    trace = np.full(500, 2.5)
    np.testing.assert_allclose(rebin(trace, fps, 25.0, int(500 * 25.0 / fps), "mean"), 2.5)


def test_training_is_deterministic_for_a_seed():
    recordings = simulate_recordings(2, frames=1000)
    first = train_spike_model(recordings, steps=5, seed=3, **SMALL).state_dict()
    second = train_spike_model(recordings, steps=5, seed=3, **SMALL).state_dict()
    other = train_spike_model(recordings, steps=5, seed=4, **SMALL).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_supervised_model_infers_spikes_of_unseen_cells(small_model):
    calcium, counts = simulate_cell(100, frames=3000, fps=30.0)
    spikes = infer_spikes(calcium, 30.0, "supervised", small_model)[0]
    assert spikefinder_correlation(to_100hz(spikes, 30.0), to_100hz(counts, 30.0)) > 0.6
    assert spikes.sum() == pytest.approx(counts.sum(), rel=0.3)  # in spikes, not arbitrary units


def test_model_survives_serialization(small_model):
    from pipeline.spikes import SpikeModel

    again = SpikeModel.from_bytes(small_model.to_bytes(), small_model.config)
    calcium, _ = simulate_cell(7, frames=600)
    assert np.array_equal(
        infer_spikes(calcium, 30.0, "supervised", again), infer_spikes(calcium, 30.0, "supervised", small_model)
    )


def test_training_takes_spike_times_instead_of_counts():
    calcium, counts = simulate_cell(0, frames=1000)
    times = np.repeat(np.arange(1000) / 30.0, counts.astype(int))
    with_times = train_spike_model([{"calcium": calcium, "spike_times": times, "fps": 30.0}], steps=3, **SMALL)
    with_counts = train_spike_model([{"calcium": calcium, "spikes": counts, "fps": 30.0}], steps=3, **SMALL)
    assert all(torch.equal(with_times.state_dict()[k], with_counts.state_dict()[k]) for k in with_counts.state_dict())


def test_spikefinder_reader_trims_each_cell_to_its_length(tmp_path):
    (tmp_path / "1.train.calcium.csv").write_text("0,1\n0.5,1.5\n0.25,2.5\n,3.5\n")
    (tmp_path / "1.train.spikes.csv").write_text("0,1\n0,1\n1,0\n,0\n")
    first, second = read_spikefinder(tmp_path / "1.train.calcium.csv", tmp_path / "1.train.spikes.csv")
    assert first.calcium.tolist() == [0.5, 0.25] and first.spikes.tolist() == [0, 1]
    assert second.calcium.tolist() == [1.5, 2.5, 3.5] and second.fps == 100.0
    assert (first.dataset, second.name) == ("1.train", "1.train.1")


def test_cascade_reader_bins_action_potentials_at_frame_times(tmp_path):
    struct = {
        "fluo_time": np.arange(10) / 10.0,
        "fluo_mean": np.arange(10.0),
        "events_AP": np.array([0.0, 1000.0, 1040.0, 4960.0]),
    }  # 1e-4 s: 0, 0.1, 0.104, 0.496 s
    scipy.io.savemat(tmp_path / "cell.mat", {"CAttached": struct})
    (recording,) = read_cascade(tmp_path / "cell.mat", dataset="DSx")
    assert recording.fps == pytest.approx(10.0)
    assert recording.spikes.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 0]
    assert (recording.dataset, recording.name) == ("DSx", "cell")


def test_cascade_reader_reads_real_ground_truth(shared_data):
    folder = shared_data / "cascade" / "DS17-GCaMP5k-m-V1"
    recordings = read_cascade(folder / "CAttached_Akerboom_GC5k_cell7_full_mini.mat")
    raw = scipy.io.loadmat(
        folder / "CAttached_Akerboom_GC5k_cell7_full_mini.mat", squeeze_me=True, struct_as_record=False
    )["CAttached"]
    assert recordings[0].fps == pytest.approx(50.0, rel=1e-3)
    assert recordings[0].spikes.sum() == np.size(raw.events_AP)


def test_cascade_reader_reads_matlab_v73_files(tmp_path):
    import h5py

    path = tmp_path / "cell.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        group = f.create_group("CAttached")
        group["fluo_time"] = (np.arange(20) / 20.0)[:, None]  # MATLAB stores column vectors
        group["fluo_mean"] = np.linspace(0, 1, 20)[:, None]
        group["events_AP"] = np.array([[500.0, 5100.0]])  # 1e-4 s: 0.05 s, 0.51 s
    with open(path, "r+b") as f:  # the MATLAB 7.3 header in the user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
        f.seek(124)
        f.write(b"\x00\x02IM")
    (recording,) = read_cascade(path, dataset="DSh5")
    assert recording.fps == pytest.approx(20.0)
    assert np.flatnonzero(recording.spikes).tolist() == [1, 10]


def test_shipped_weights_infer_spikes_of_a_simulated_cell():
    from pipeline.spikes import weights

    model, provenance = weights.load("default")
    assert provenance["n_recordings"] == 149 and "spikefinder-5" in provenance["datasets"]
    assert model.config["rate"] == 25.0
    calcium, counts = simulate_cell(7, frames=3000, fps=30.0)
    inferred = infer_spikes(calcium, 30.0, "pretrained")[0]
    assert inferred.shape == (3000,) and float(inferred.min()) >= 0.0
    # 0.542: trained on real indicators, the network meets this ideal AR(1) cell (the model the
    # deconvolution assumes: 0.96 there) with kinetics it never saw
    assert spikefinder_correlation(to_100hz(inferred, 30.0), to_100hz(counts, 30.0)) > 0.4


def test_unknown_shipped_weights_name_the_command_that_writes_them():
    with pytest.raises(
        FileNotFoundError, match=r"pretrained spike weights 'lab7' not found .*pipeline spikes-pretrained"
    ):
        infer_spikes(np.zeros(500), 30.0, "pretrained", weights="lab7")


def test_focus_draws_its_fraction_of_windows_and_the_rest_share_equally():
    from pipeline.spikes.supervised import _dataset_probabilities

    np.testing.assert_allclose(_dataset_probabilities(["a", "b", "c"], {"a": 0.5}), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(_dataset_probabilities(["a", "b"], {"a": 0.2, "b": 0.8}), [0.2, 0.8])
    assert _dataset_probabilities(["a", "b"], None) is None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"focus": {"sim7": 0.5}}, r"focus names datasets \['sim7'\]"),
        ({"focus": {"sim0": 0.7, "sim1": 0.6}}, "add up to at most 1"),
        ({"noise_level": 1.5}, "noise_level is a noise level in z units, between 0 and 1; got 1.5"),
        ({"objective": "poisson"}, r"objective is one of \['correlation', 'mse'\], got 'poisson'"),
    ],
)
def test_bad_training_options_are_errors_that_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        train_spike_model(simulate_recordings(2, frames=1000), steps=1, **options, **SMALL)


def test_correlation_objective_is_one_minus_pearson_per_window_plus_a_tenth_of_the_scaled_error():
    from pipeline.spikes.supervised import _correlation

    target = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    prediction = torch.tensor([[1.0, 2.0, 1.0, 3.0], [0.5, 0.5, 0.5, 0.5]])
    valid = torch.ones(2, 4, dtype=torch.bool)
    # window 1 correlates perfectly; window 2 has no spikes and only enters the squared error
    squared_error = (4 * 1.0 + 4 * 0.25) / 8
    scale = (1.0 + 4.0) / 8
    assert float(_correlation(prediction, target, valid)) == pytest.approx(0.1 * squared_error / scale, abs=1e-6)
    anti = torch.tensor([[2.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    error = float(((anti - target) ** 2).mean())
    assert float(_correlation(anti, target, valid)) == pytest.approx(2.0 + 0.1 * error / scale, abs=1e-6)


def test_training_with_noise_level_and_focus_infers_spikes_of_unseen_cells():
    model = train_spike_model(
        simulate_recordings(4), steps=150, learning_rate=0.01, noise_level=0.3, focus={"sim0": 0.6}, **SMALL
    )
    calcium, counts = simulate_cell(100, frames=3000, fps=30.0)
    spikes = infer_spikes(calcium, 30.0, "supervised", model)[0]
    assert spikefinder_correlation(to_100hz(spikes, 30.0), to_100hz(counts, 30.0)) > 0.6


def test_trace_noise_of_white_noise_is_one_z_unit():
    from pipeline.spikes.supervised import trace_noise

    noise = np.random.default_rng(0).standard_normal(20000)
    assert trace_noise(noise, 25.0) == pytest.approx(1.0, abs=0.03)
    assert trace_noise(np.full(100, 3.0), 25.0) == 0.0


def test_calibration_finds_the_delay_and_the_timing_jitter_of_a_preparation(small_model):
    from pipeline.spikes.supervised import calibrate_timing

    delayed, jittered = [], []
    rng = np.random.default_rng(7)
    for i in range(3):  # a preparation whose calcium arrives 0.1 s (3 frames) after the spikes
        calcium, counts = simulate_cell(200 + i, frames=3000, fps=30.0)
        delayed.append(
            {"calcium": np.concatenate([np.full(3, calcium[0]), calcium[:-3]]), "spikes": counts, "fps": 30.0}
        )
        # one whose recorded spike times scatter by 0.15 s around the calcium's
        frames = np.repeat(np.arange(counts.size), counts.astype(int))
        moved = np.clip(np.round(frames + rng.normal(0, 4.5, frames.size)), 0, counts.size - 1).astype(int)
        jittered.append({"calcium": calcium, "spikes": np.bincount(moved, minlength=counts.size), "fps": 30.0})
    timing = calibrate_timing(small_model, delayed)
    assert timing["shift"] == pytest.approx(0.1, abs=0.021) and timing["blur"] <= 0.02
    assert calibrate_timing(small_model, jittered)["blur"] >= 0.06
    aligned = calibrate_timing(small_model, [simulate_recordings(1, seed=300)[0]])
    assert aligned["shift"] == pytest.approx(0.0, abs=0.021) and aligned["blur"] <= 0.02
    with pytest.raises(ValueError, match=r"blurs are Gaussian widths in seconds, at least 0; got \[-0.1, 0.0\]"):
        calibrate_timing(small_model, delayed, blurs=(0.0, -0.1))


def test_a_blurred_model_keeps_the_spike_total_and_lowers_the_peaks(small_model):
    from pipeline.spikes.supervised import predict

    calcium, _ = simulate_cell(5, frames=3000, fps=30.0)
    sharp = predict(small_model, calcium, 30.0)
    smooth = predict(small_model.with_config(blur=0.08), calcium, 30.0)
    assert smooth.sum() == pytest.approx(sharp.sum(), rel=0.01)
    assert smooth.max() < 0.9 * sharp.max()


def test_calibrate_names_a_training_dataset_and_stores_its_shift():
    recordings = simulate_recordings(4, frames=1500)
    model = train_spike_model(recordings, steps=20, calibrate="sim1", **SMALL)
    assert abs(model.config["shift"]) <= 0.2 and round(model.config["shift"] / 0.02, 6) % 1 == 0
    assert model.config["blur"] in (0.0, 0.02, 0.04, 0.06, 0.08)
    assert model.config["gain"] > 0
    with pytest.raises(
        ValueError, match=r"calibrate names dataset 'sim9', which has no training recording: \['sim0', 'sim1'\]"
    ):
        train_spike_model(recordings, steps=1, calibrate="sim9", **SMALL)
