"""Movies streamed from their files a block of frames at a time: same results as in memory."""

import numpy as np
import pytest
import torch

from pipeline.imaging import frames, io, motion, pmd
from pipeline.simulation.experiment import simulate_experiment

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    """A simulated scan with motion as a ScanImage TIFF (48x48, 300 frames), and its frames as read."""
    exp = simulate_experiment(3, n_cells=15, height=48, width=48, n_frames=300, n_images=6)
    path = tmp_path_factory.mktemp("scan") / "scan.tif"
    io.write_scanimage_tiff(path, exp.movie, fps=15.0)
    return path, io.read_movie(path)


def test_file_source_gives_the_files_frames_in_blocks_of_the_set_size(scan_file):
    path, movie = scan_file
    source = frames.FileSource(path, block_bytes=48 * 48 * 4 * 40)  # 40 frames per block
    starts, sizes, got = [], [], []
    for start, block in source.blocks():
        starts.append(start)
        sizes.append(len(block))
        got.append(block.copy())
    assert source.shape == (300, 48, 48) and source.nbytes == 300 * 48 * 48 * 4
    assert starts == [0, 40, 80, 120, 160, 200, 240, 280]
    assert sizes == [40] * 7 + [20]
    assert np.array_equal(np.concatenate(got), movie)
    assert np.array_equal(source.take([0, 150, 299]), movie[[0, 150, 299]])


def test_motion_correction_streamed_equals_in_memory(scan_file):
    path, movie = scan_file
    streamed = motion.motion_correction(frames.FileSource(path, block_bytes=48 * 48 * 4 * 32))
    in_memory = motion.motion_correction(movie)
    assert np.array_equal(streamed[0], in_memory[0])
    assert np.array_equal(streamed[1], in_memory[1])
    assert np.abs(in_memory[1]).max() > 0  # the simulation moves the field of view


def test_pmd_streamed_from_the_file_has_bit_identical_factors_and_leaves_no_file(scan_file, tmp_path):
    path, movie = scan_file
    shifts = motion.motion_correction(movie)[1]
    corrected = np.stack([motion.apply_shift(f, s) for f, s in zip(movie, shifts)])
    source = frames.FileSource(path, shifts=shifts, block_bytes=48 * 48 * 4 * 25, scratch=tmp_path)
    streamed = pmd.denoise(source, block_size=24, overlap=6)
    in_memory = pmd.denoise(corrected, block_size=24, overlap=6)
    assert streamed.rank == in_memory.rank and streamed.rank > 0
    for name, value in in_memory.to_arrays().items():
        assert np.array_equal(streamed.to_arrays()[name], value), name
    assert streamed.snr_gain_estimate == in_memory.snr_gain_estimate
    assert streamed.compression_ratio == in_memory.compression_ratio
    assert list(tmp_path.iterdir()) == []  # the tile file is gone


class _Generated(frames.FrameSource):
    """Frames made on the fly (a NaN at frame ``bad``)."""

    def __init__(self, n, bad=None, given=None, **settings):
        super().__init__((n, 16, 16), **settings)
        self.bad, self.given = bad, n if given is None else given

    def frames(self):
        rng = np.random.default_rng(0)
        for t in range(self.given):
            frame = rng.normal(size=(16, 16)).astype(np.float32)
            if t == self.bad:
                frame[3, 4] = np.nan
            yield frame


def test_streamed_nan_names_the_frame_and_removes_the_tile_file(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite values in frame 37 \(expected finite values\)"):
        pmd.denoise(_Generated(60, bad=37, block_bytes=16 * 16 * 4 * 10, scratch=tmp_path), block_size=8, overlap=2)
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_ends_early_is_an_error(tmp_path):
    source = _Generated(25, given=20, scratch=tmp_path)  # says 25 frames, gives 20
    with pytest.raises(ValueError, match=r"movie gave 20 frames \(expected 25\)"):
        pmd.denoise(source, block_size=8, overlap=2)
    assert list(tmp_path.iterdir()) == []


def test_block_size_setting_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_BLOCK_MB", "0.5")
    monkeypatch.setenv("PIPELINE_SCRATCH", str(tmp_path))
    assert frames.settings_from_environment() == {"block_bytes": 524288, "scratch": str(tmp_path)}
    monkeypatch.setenv("PIPELINE_BLOCK_MB", "lots")
    with pytest.raises(ValueError, match=r"PIPELINE_BLOCK_MB='lots' \(expected a positive number of MiB\)"):
        frames.settings_from_environment()


def test_segmentation_from_the_factors_in_blocks_equals_the_whole_movie(scan_file):
    from pipeline.imaging import segmentation

    path, movie = scan_file
    shifts = motion.motion_correction(movie)[1]
    corrected = np.stack([motion.apply_shift(f, s) for f, s in zip(movie, shifts)])
    result = pmd.denoise(corrected, block_size=24, overlap=6)
    whole = segmentation.segment(result.reconstruct())
    streamed = segmentation.segment(result.frames(block_bytes=48 * 48 * 4 * 30))  # 10 blocks of 30 frames
    assert len(whole) == len(streamed) and len(whole) >= 5
    assert np.array_equal(whole.masks, streamed.masks)
    assert np.abs(whole.weights - streamed.weights).max() < 1e-5
    assert np.abs(whole.correlation_image - streamed.correlation_image).max() < 1e-5
