"""The optional behaviour stage on a real database: recordings -> trained pose models -> hypotheses -> scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import schemas
from schemas.values import json_value
from pipeline import identity

torch.set_num_threads(1)

# tiny models: the table logic is under test here, the models' quality in benchmarks/pose.py
CGNF = {"layers": 2, "hidden": 16, "steps": 40, "batch_size": 64, "hypotheses": 5}
DIFFUSION = {
    "frames": 8,
    "channels": 8,
    "blocks": 1,
    "diffusion_steps": 5,
    "steps": 20,
    "batch_size": 16,
    "hypotheses": 5,
}


@pytest.fixture
def behavior(db):
    """The behaviour stage activated on the test database; the core-only activation restored after."""
    schemas.activate(db.prefix, connection=db.connection, optional=["behavior"])
    from schemas import behavior as module

    yield module
    schemas.activate(db.prefix, connection=db.connection)


def test_optional_stage_is_declared_only_on_request(db):
    names = [cls.__name__ for cls in schemas.tables()]
    assert "TrainedPoseModel" not in names
    with pytest.raises(ValueError, match="optional stage\\(s\\) \\['pose'\\] \\(expected some of: \\['behavior'\\]\\)"):
        schemas.activate(db.prefix, connection=db.connection, optional=["pose"])


def test_behavior_stage_populates_end_to_end(db, behavior):
    from schemas import params

    assert [cls.__name__ for cls in schemas.auto_tables()][-3:] == ["TrainedPoseModel", "PoseHypotheses", "PoseScore"]
    for i in range(2):
        behavior.insert_simulated_recording(f"sim{i}", 24, seed=10 + i, occlusion_rate=0.2)
    params.insert_config(behavior.PoseTrainingSet, "synthetic_skeleton", {"n_sequences": 20, "n_frames": 16})
    params.insert_config(behavior.PoseModelConfig, "cgnf", CGNF)
    params.insert_config(behavior.PoseModelConfig, "motion_diffusion", DIFFUSION)
    behavior.PoseSeed.insert1({"seed": 0}, skip_duplicates=True)

    for table in (behavior.TrainedPoseModel, behavior.PoseHypotheses, behavior.PoseScore):
        result = table.populate(reserve_jobs=True, suppress_errors=True)
        assert result["error_list"] == [], result["error_list"]

    assert len(behavior.TrainedPoseModel()) == 2
    assert len(behavior.PoseHypotheses()) == 4
    assert len(behavior.PoseHypotheses.Frame()) == 4 * 24
    assert len(behavior.PoseScore()) == 4
    for row in behavior.PoseScore.to_dicts():
        assert 10 < row["mpjpe_mean"] < 2000  # mm: untrained-size models, but poses of a body
        assert 10 < row["min_mpjpe"] < 3000
        assert 0 <= row["ece"] <= 0.5
        assert row["jitter"] > 0 and 0 < row["jitter_truth"] < 20
        assert row["n_occluded"] > 0 and 0 <= row["ece_occluded"] <= 0.5
    for row in behavior.TrainedPoseModel.to_dicts():
        assert row["n_joints"] == 11 and np.isfinite(row["final_loss"])
        assert json_value(row["provenance"])["seed"] == 0


def test_stored_weights_resample_the_stored_hypotheses_and_go_with_their_row(db, behavior):
    from schemas import params

    behavior.insert_simulated_recording("sim_resample", 12, seed=7)
    data_key = params.insert_config(behavior.PoseTrainingSet, "synthetic_skeleton", {"n_sequences": 10, "n_frames": 8})
    model_key = params.insert_config(behavior.PoseModelConfig, "cgnf", {**CGNF, "steps": 10})
    behavior.PoseSeed.insert1({"seed": 1}, skip_duplicates=True)
    key = {**data_key, **model_key, "seed": 1, "recording_id": "sim_resample"}
    behavior.TrainedPoseModel.populate(key)
    behavior.PoseHypotheses.populate(key)

    stored = (behavior.PoseHypotheses & key).hypotheses()
    model = behavior.load_pose_model(key)
    recording = (behavior.Recording & key).fetch1()
    again = model.sample(recording["keypoints"], recording["confidence"], seed=behavior.sampling_seed(key))
    assert stored.shape == (5, 12, 11, 3)
    assert np.abs(again - stored).max() < 1e-5

    weights = Path((behavior.TrainedPoseModel & key).fetch1("weights").full_path)
    assert weights.is_file()
    (behavior.TrainedPoseModel & key).delete(prompt=False)
    assert not behavior.PoseHypotheses & key
    assert not weights.exists()


def test_a_pose_config_the_builder_does_not_take_is_rejected_at_insert(db, behavior):
    from schemas import params

    with pytest.raises(identity.ConfigError, match="does not take config key\\(s\\) \\['layer'\\]"):
        params.insert_config(behavior.PoseModelConfig, "cgnf", {"layer": 2})
    with pytest.raises(identity.ConfigError, match="hypotheses = 0 \\(expected >= 1\\)"):
        params.insert_config(behavior.PoseModelConfig, "min_mpjpe", {"hypotheses": 0})
    with pytest.raises(identity.UnknownBuilderError, match="pose_model builder 'glow' does not resolve"):
        params.insert_config(behavior.PoseModelConfig, "glow", {})
