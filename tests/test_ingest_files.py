"""A lab's experiment files and a scan's frame timing, read without a database."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.imaging import io, timing
from pipeline.imaging.experiment_files import ExperimentFileError, read_behavior, read_images, read_trials


def _write(path, text):
    path.write_text(text)
    return path


def test_onsets_in_seconds_fall_in_the_first_frame_starting_at_or_after_them():
    times = np.arange(10) * 0.1
    assert timing.onset_frames(np.array([0.0, 0.1, 0.15, 0.9]), times).tolist() == [0, 1, 2, 9]


def test_onset_after_the_last_frame_is_an_error():
    with pytest.raises(ValueError, match=r"onset 1.5 s is after the last frame's start \(0.9 s"):
        timing.onset_frames(np.array([0.2, 1.5]), np.arange(10) * 0.1)


def test_durations_in_seconds_become_frames_shown():
    times = np.arange(10) * 0.1
    assert timing.duration_frames(np.array([0.0, 0.25]), np.array([0.3, 0.01]), times).tolist() == [3, 1]


def test_scanimage_2016_frame_timestamps_are_read_per_page(tmp_path):
    path = io.write_scanimage_tiff(tmp_path / "si.tif", np.zeros((4, 8, 8)), 4.0)
    found = timing.frame_times(path)
    assert found.source == "ScanImage frame timestamps"
    assert found.times.tolist() == [0.0, 0.25, 0.5, 0.75]


def test_real_scanimage_3_8_file_is_timed_by_its_header(shared_data):
    path = shared_data / "movies" / "jefferis_scanimage38" / "Blank-IPA_1s_16r_032.tif"
    found = timing.frame_times(path)
    assert found.source == "ScanImage 3.x header"
    assert len(found.times) == 30
    assert found.times[1] == pytest.approx(1 / 8.13802083333333)


def test_file_without_timing_needs_a_frame_rate(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 4, 5), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="no frame timing in the file's header and frame rate None"):
        timing.frame_times(tmp_path / "plain.tif")
    assert timing.frame_times(tmp_path / "plain.tif", frame_rate=2.0).times.tolist() == [0.0, 0.5, 1.0]


def test_csv_trials_with_seconds_and_tiers(tmp_path):
    path = _write(
        tmp_path / "t.csv", "trial_idx,image_id,onset_time,duration_time,tier\n0,5,0.5,0.2,train\n1,6,1.5,0.2,test\n"
    )
    trials = read_trials(path)
    assert trials.trial_idx.tolist() == [0, 1] and trials.image_id.tolist() == [5, 6]
    assert trials.onset.tolist() == [0.5, 1.5] and trials.onset_unit == "seconds"
    assert trials.tier.tolist() == ["train", "test"]


def test_json_trials_in_frames(tmp_path):
    path = _write(
        tmp_path / "t.json",
        json.dumps({"trials": [{"trial_idx": 3, "image_id": 9, "onset_frame": 4, "duration_frames": 2}]}),
    )
    trials = read_trials(path)
    assert (trials.onset.tolist(), trials.duration.tolist()) == ([4], [2])
    assert (trials.onset_unit, trials.tier) == ("frames", None)


def test_trial_file_errors_name_row_value_and_expectation(tmp_path):
    bad_tier = _write(tmp_path / "a.csv", "trial_idx,image_id,onset_frame,duration_frames,tier\n0,1,0,1,holdout\n")
    with pytest.raises(ExperimentFileError, match=r"trial row 0: tier = 'holdout' \(expected one of"):
        read_trials(bad_tier)
    both = _write(tmp_path / "b.csv", "trial_idx,image_id,onset_frame,onset_time,duration_frames\n0,1,0,0.0,1\n")
    with pytest.raises(ExperimentFileError, match=r"has \['onset_frame', 'onset_time'\] .* \(expected exactly one\)"):
        read_trials(both)
    mixed = _write(tmp_path / "m.csv", "trial_idx,image_id,onset_frame,duration_time\n0,1,0,0.5\n")
    with pytest.raises(ExperimentFileError, match=r"duration_time with onset_frame \(expected duration_time with"):
        read_trials(mixed)
    repeated = _write(tmp_path / "c.csv", "trial_idx,image_id,onset_frame,duration_frames\n0,1,0,1\n0,2,3,1\n")
    with pytest.raises(ExperimentFileError, match=r"trial_idx \[0\] repeated"):
        read_trials(repeated)
    text = _write(tmp_path / "d.csv", "trial_idx,image_id,onset_frame,duration_frames\n0,cat,0,1\n")
    with pytest.raises(ExperimentFileError, match=r"trial row 0: image_id = 'cat' \(expected a number\)"):
        read_trials(text)


def test_images_folder_reads_npy_and_colour_png_as_grey(tmp_path):
    np.save(tmp_path / "12.npy", np.full((1, 3, 4), 7, np.uint8))
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 100  # pure red: luminance 0.299 * 100
    Image.fromarray(rgb).save(tmp_path / "13.png")
    images = read_images(tmp_path)
    assert sorted(images) == [12, 13]
    assert images[12].shape == (3, 4) and images[12][0, 0] == 7.0
    assert images[13].dtype == np.float32 and images[13][0, 0] == 30.0


def test_image_file_named_other_than_an_id_is_an_error(tmp_path):
    np.save(tmp_path / "cat.npy", np.zeros((2, 2)))
    with pytest.raises(ExperimentFileError, match=r"file name 'cat' is not an image id"):
        read_images(tmp_path)


def test_behaviour_with_time_is_interpolated_onto_frames(tmp_path):
    path = _write(tmp_path / "b.csv", "time,running,pupil_radius,pupil_x,pupil_y\n0,0,10,1,2\n1,10,20,1,2\n")
    behavior = read_behavior(path, np.array([0.0, 0.25, 0.5]))
    assert behavior["running"].tolist() == [0.0, 2.5, 5.0]
    assert behavior["pupil_radius"].dtype == np.float32 and behavior["pupil_radius"].tolist() == [10.0, 12.5, 15.0]


def test_behaviour_without_time_needs_one_row_per_frame(tmp_path):
    path = _write(tmp_path / "b.csv", "running,pupil_radius,pupil_x,pupil_y\n0,10,1,2\n")
    with pytest.raises(ExperimentFileError, match=r"1 rows \(expected 3, one per frame, or a 'time' column\)"):
        read_behavior(path, np.zeros(3))
