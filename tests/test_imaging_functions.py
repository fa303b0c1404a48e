"""The imaging chain's functions on plain arrays: readers, simulation, motion, PMD, cells, traces."""

import h5py
import numpy as np
import pytest
import tifffile
import torch

from pipeline.imaging import io, motion, pmd, segmentation, traces
from pipeline.simulation.experiment import simulate_experiment

torch.set_num_threads(1)

SMALL = dict(n_cells=20, height=48, width=48, n_frames=400, n_images=8)


@pytest.fixture(scope="module")
def experiment():
    return simulate_experiment(1, **SMALL, keep_clean=True)


# ----------------------------------------------------------------------------- readers


def test_scanimage_2016_tiff_round_trip_keeps_frames_rate_and_pixel_size(tmp_path):
    movie = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    path = io.write_scanimage_tiff(tmp_path / "scan.tif", movie, 30.0, um_per_pixel=1.5)
    info = io.movie_info(path)
    assert (info.nframes, info.height, info.width, info.fps, info.um_per_pixel) == (5, 6, 7, 30.0, 1.5)
    assert info.software == "ScanImage 2016b"
    assert np.array_equal(io.read_movie(path), movie)


def test_frames_stream_one_at_a_time(tmp_path):
    path = io.write_scanimage_tiff(tmp_path / "scan.tif", np.ones((4, 8, 8)), 10.0)
    frames = io.iter_frames(path)
    assert next(frames).shape == (8, 8)
    assert sum(1 for _ in frames) == 3


def test_real_scanimage_3_header_is_parsed(shared_data):
    path = shared_data / "movies" / "jefferis_scanimage38" / "Blank-IPA_1s_16r_032.tif"
    info = io.movie_info(path)
    assert (info.nframes, info.height, info.width, info.nchannels) == (30, 64, 64, 1)
    assert info.software == "ScanImage 3.8"
    assert info.fps == pytest.approx(8.138, abs=1e-3)


def test_real_imagej_tiff_equals_its_hdf5_copy(shared_data):
    folder = shared_data / "movies" / "sima_example"
    tiff = io.read_movie(folder / "example.tif")
    h5 = io.read_movie(folder / "example.h5", axes="yxt")
    assert tiff.shape == (20, 128, 256)
    assert np.array_equal(tiff, h5)


def test_labelled_hdf5_volume_selects_channel_and_field(shared_data):
    path = shared_data / "movies" / "sima_example" / "example-volume.h5"
    info = io.movie_info(path)
    assert (info.nframes, info.nfields, info.nchannels, info.height) == (10, 3, 2, 64)
    with h5py.File(path) as f:
        expected = f["imaging"][:, 2, :, :, 1]
    assert np.array_equal(io.read_movie(path, channel=1, field=2), expected)


def test_truncated_tiff_names_the_unreadable_frame(tmp_path):
    path = io.write_scanimage_tiff(tmp_path / "scan.tif", np.ones((20, 16, 16)), 10.0)
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 200])
    # found from the page offsets when the header is read, before any frame is decoded
    with pytest.raises(io.MovieFileError, match=r"page 19's pixel data ends at byte \d+, beyond the end of the file"):
        io.read_movie(tmp_path / "cut.tif")


def test_not_a_tiff_is_an_error(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(io.MovieFileError, match="not a readable TIFF"):
        io.movie_info(tmp_path / "bad.tif")


def test_nan_frame_is_an_error(tmp_path):
    movie = np.ones((6, 8, 8), dtype=np.float32)
    movie[4, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", movie)
    with pytest.raises(io.MovieFileError, match=r"frame 4 has 1 non-finite"):
        io.read_movie(tmp_path / "nan.tif")


def test_hdf5_without_frames_is_an_error(tmp_path):
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["mov"] = np.zeros((0, 8, 8), dtype=np.uint16)
    with pytest.raises(io.MovieFileError, match=r"0 frames \(expected at least 1\)"):
        io.movie_info(tmp_path / "empty.h5")


# ----------------------------------------------------------------------------- simulation


def test_simulation_is_deterministic_and_consistent(experiment):
    again = simulate_experiment(1, **SMALL, keep_clean=True)
    assert np.array_equal(again.movie, experiment.movie)
    assert experiment.movie.shape == (400, 48, 48) and experiment.movie.dtype == np.float32
    assert experiment.footprints.shape == (20, 48, 48)
    assert experiment.spikes.shape == experiment.calcium.shape == (20, 400)
    assert experiment.rates.shape == (len(experiment.trials["onset_frame"]), 20)
    ends = experiment.trials["onset_frame"] + experiment.trials["duration_frames"]
    assert ends.max() <= 400
    assert experiment.masks.sum(0).max() == 1  # somata never overlap


# ----------------------------------------------------------------------------- motion


def test_motion_correction_recovers_the_simulated_shifts(experiment):
    template, shifts = motion.motion_correction(experiment.movie)
    offset = np.median(shifts - experiment.shifts, axis=0)
    assert np.abs(experiment.shifts).max() > 0
    assert np.abs(shifts - experiment.shifts - offset).max() <= 0.5


# ----------------------------------------------------------------------------- PMD


@pytest.fixture(scope="module")
def denoised(experiment):
    corrected = motion.correct(experiment.movie, experiment.shifts)
    return corrected, pmd.denoise(corrected, seed=0)


def test_pmd_reduces_the_error_against_the_noiseless_movie(experiment, denoised):
    corrected, result = denoised
    clean = motion.correct(experiment.clean, experiment.shifts)
    out = result.reconstruct()
    assert out.shape == corrected.shape and out.dtype == np.float32
    gain = np.sqrt(np.mean((corrected - clean) ** 2) / np.mean((out - clean) ** 2))
    assert gain > 2.5
    assert result.snr_gain_estimate > 2.0


def test_pmd_compresses_and_reports_rank(denoised):
    corrected, result = denoised
    assert result.rank == int(result.blocks[:, 4].sum()) > 0
    assert result.compression_ratio == pytest.approx(corrected.nbytes / result.stored_nbytes)
    assert result.compression_ratio > 4


def test_pmd_is_bit_for_bit_reproducible(denoised):
    corrected, result = denoised
    again = pmd.denoise(corrected, seed=0)
    assert np.array_equal(again.temporal, result.temporal) and np.array_equal(again.spatial, result.spatial)


def test_pmd_keeps_nothing_of_pure_noise():
    noise = np.random.default_rng(0).normal(100.0, 5.0, size=(300, 32, 32)).astype(np.float32)
    result = pmd.denoise(noise)
    assert result.rank <= 1
    assert np.abs(result.reconstruct() - noise.mean(0)).max() < 3.0


def test_pmd_factors_round_trip_through_arrays(denoised):
    _, result = denoised
    again = pmd.PMDResult.from_arrays(result.to_arrays())
    assert np.array_equal(again.reconstruct(slice(0, 10)), result.reconstruct(slice(0, 10)))


def test_pmd_projection_equals_reconstruction(denoised):
    _, result = denoised
    weights = np.random.default_rng(0).random((3,) + result.shape[1:]).astype(np.float32)
    direct = np.einsum("nhw,thw->nt", weights, result.reconstruct())
    assert np.allclose(result.project(weights), direct, rtol=1e-4, atol=1e-2)


def test_pmd_rejects_nan():
    movie = np.ones((10, 8, 8), dtype=np.float32)
    movie[3, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        pmd.denoise(movie)


# ----------------------------------------------------------------------------- cells and traces


def test_segmentation_finds_the_simulated_somata(experiment, denoised):
    _, result = denoised
    found = segmentation.segment(result.reconstruct())
    match = segmentation.match_masks(found.masks, experiment.masks)
    assert match["recall"] >= 0.8
    assert match["precision"] >= 0.8


def test_match_masks_counts_iou_of_one_half():
    truth = np.zeros((1, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 pixels
    found = np.zeros((2, 4, 4), bool)
    found[0, :2, :3] = True  # IoU 4/6
    found[1, 2:, 2:] = True  # IoU 0
    match = segmentation.match_masks(found, truth)
    assert (match["recall"], match["precision"]) == (1.0, 0.5)


def test_neuropil_correction_removes_the_surround_signal():
    rng = np.random.default_rng(0)
    t = 500
    cell = np.maximum(0, rng.standard_normal(t)).cumsum() % 5
    surround = np.sin(np.arange(t) / 20.0) + 2
    movie = np.zeros((t, 30, 30), dtype=np.float32) + 0.7 * surround[:, None, None]
    weights = np.zeros((1, 30, 30), dtype=np.float32)
    weights[0, 13:17, 13:17] = 1.0
    movie[:, 13:17, 13:17] += cell[:, None, None]
    out = traces.extract_traces(movie, weights, fps=10.0, neuropil_ratio=1.0)
    assert np.allclose(out["fluorescence"][0], cell, atol=1e-4)
    assert out["dff"].shape == (1, t)


def test_dff_is_zero_on_a_flat_trace():
    movie = np.full((100, 10, 10), 5.0, dtype=np.float32)
    weights = np.zeros((1, 10, 10), dtype=np.float32)
    weights[0, 4:6, 4:6] = 1
    out = traces.extract_traces(movie, weights, fps=10.0, neuropil_ratio=0.0)
    assert np.allclose(out["dff"], 0.0)
