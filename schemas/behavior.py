"""Behaviour (optional stage): 2D keypoint recordings -> trained pose models -> 3D pose hypotheses -> scores.

Activated only on request (``schemas.activate(prefix, optional=["behavior"])``); the core
stages never import it. A ``Recording`` is keyed by its own id; linking it to the
``imaging.Scan`` it was filmed during (so that 3D pose joins running and pupil as behaviour of
a scan) is left for when real keypoints arrive. Pose models are trained on 3D data alone
(``PoseTrainingSet``, a simulated stick figure here) and applied to any recording's keypoints.

Deleting a ``TrainedPoseModel`` through its ``delete()`` removes its weights; rows removed by
a cascade from further upstream leave them behind: ``schemas.stores.collect_garbage()`` (``pipeline
gc``), run where this stage is activated, removes every stored file that no row references.
"""

from __future__ import annotations

import zlib

import datajoint as dj
import numpy as np

from . import params, stores
from .values import array_as_text, bytes_as_text, json_value, text_as_array, text_as_bytes

schema = dj.Schema()


@schema
class Recording(dj.Manual):
    definition = """
    # 2D keypoints of the animal in one camera recording, as a keypoint detector reports them
    recording_id  : varchar(64)   # explicit name (linking to imaging.Scan is future work)
    ---
    n_frames      : int32
    n_joints      : int32
    fps           : float64
    joint_names   : json          # (joints,) names; joint 0 is the root
    keypoints     : <blob>        # (frames, joints, 2) float32 pixel positions
    confidence    : <blob>        # (frames, joints) float32 in [0, 1]; below 0.5 = occluded
    camera = null : json          # pinhole intrinsics {focal, cx, cy} where known
    note = ""     : varchar(255)
    """


@schema
class RecordingTruth(dj.Manual):
    definition = """
    # 3D ground truth of a recording where it is known (simulations, motion capture)
    -> Recording
    ---
    poses : <blob>   # (frames, joints, 3) float32 root-relative joint positions in metres
    """


def insert_simulated_recording(
    recording_id: str,
    n_frames: int,
    *,
    seed: int = 0,
    noise_px: float = 2.0,
    occlusion_rate: float = 0.1,
    note: str = "",
) -> dict:
    """Simulate the stick figure for ``n_frames`` and insert its keypoints and 3D truth.

    Returns the recording's key.
    """
    from pipeline.behavior import camera, data

    sequence = data.simulate(1, n_frames, noise_px=noise_px, occlusion_rate=occlusion_rate, seed=seed)
    key = {"recording_id": recording_id}
    with Recording.connection.transaction:
        Recording.insert1(
            {
                **key,
                "n_frames": n_frames,
                "n_joints": sequence.n_joints,
                "fps": sequence.fps,
                "joint_names": list(sequence.joint_names),
                "keypoints": sequence.keypoints[0],
                "confidence": sequence.confidence[0],
                "camera": camera.Camera().to_dict(),
                "note": note or f"simulated stick figure, seed {seed}",
            }
        )
        RecordingTruth.insert1({**key, "poses": sequence.poses[0]})
    return key


@schema
class PoseTrainingSet(dj.Lookup):
    definition = params.config_definition("pose_data", "3D pose sequences a pose model learns from")
    builder_kind = "pose_data"


@schema
class PoseModelConfig(dj.Lookup):
    definition = params.config_definition("pose_model", "a pose model, its hyperparameters and training")
    builder_kind = "pose_model"


@schema
class PoseSeed(dj.Lookup):
    definition = """
    # seeds of trained pose models
    seed : int32
    """


@schema
class TrainedPoseModel(dj.Computed):
    definition = """
    # a pose model trained on a training set with a seed
    -> PoseTrainingSet
    -> PoseModelConfig
    -> PoseSeed
    ---
    n_joints    : int32            # joints of the skeleton it was trained on
    final_loss  : float64          # training loss, mean of the last 50 steps
    history     : json             # loss every 50 steps
    weights     : <object@models>  # torch state dict of CPU tensors (.pt)
    provenance  : json             # packages, git commit, torch / CUDA, host, GPU, wall time, seed
    """

    def make_fetch(self, key):
        data_row = (PoseTrainingSet & key).fetch1()
        model_row = (PoseModelConfig & key).fetch1()
        return (
            data_row["builder"],
            json_value(data_row["config"]),
            model_row["builder"],
            json_value(model_row["config"]),
            int(key["seed"]),
        )

    def make_compute(self, key, data_builder, data_config, model_builder, model_config, seed):
        from pipeline import identity
        from pipeline.behavior import estimators
        from pipeline.sysid.fitting import provenance

        training = identity.resolve("pose_data", data_builder)(**data_config)
        fit = estimators.train(model_builder, model_config, training, seed=seed)
        return training.n_joints, fit.history["final_loss"], fit.history, fit.weights, provenance(seed, fit.wall_time)

    def make_insert(self, key, n_joints, final_loss, history, weights, provenance):
        self.insert1(
            {
                **key,
                "n_joints": n_joints,
                "final_loss": final_loss,
                "history": history,
                "weights": (".pt", weights),
                "provenance": provenance,
            }
        )

    def delete(self, *args, **kwargs):
        """Delete rows (and their hypotheses and scores) and their stored weights."""
        refs = stores.stored_refs(self, "weights")
        count = super().delete(*args, **kwargs)
        stores.remove_unreferenced(schema, refs)
        return count


def load_pose_model(key: dict):
    """The trained pose model at ``key`` (exactly one row) with its stored weights loaded."""
    from pipeline.behavior import estimators

    rows = (TrainedPoseModel & key).keys()
    if len(rows) != 1:
        raise LookupError(f"{key} matches {len(rows)} trained pose models (expected exactly one)")
    (full,) = rows
    model_row = (PoseModelConfig & full).fetch1()
    row = (TrainedPoseModel & full).fetch1()
    config = json_value(model_row["config"])
    return estimators.rebuild(model_row["builder"], config, row["n_joints"], row["weights"].read())


def sampling_seed(key: dict) -> int:
    """The seed of a recording's hypotheses, from its id and the model's seed: a recomputed row is the same row."""
    return zlib.crc32(key["recording_id"].encode()) + int(key["seed"])


@schema
class PoseHypotheses(dj.Computed):
    definition = """
    # 3D pose hypotheses of every frame of a recording, sampled from a trained pose model
    -> TrainedPoseModel
    -> Recording
    ---
    n_hypotheses : int32
    n_frames     : int32
    mean_pose    : <blob>    # (frames, joints, 3) float32 mean of the hypotheses (metres, root-relative)
    """

    class Frame(dj.Part):
        definition = """
        -> master
        frame_idx  : int32
        ---
        hypotheses : <blob>  # (hypotheses, joints, 3) float32 root-relative poses in metres
        """

    def make_fetch(self, key):
        model_row = (PoseModelConfig & key).fetch1()
        weights = (TrainedPoseModel & key).fetch1("weights").read()
        recording = (Recording & key).fetch1()
        shape = (int(recording["n_frames"]), int(recording["n_joints"]))
        # arrays cross as text: populate hashes the fetched data, element by element for an array
        return (
            model_row["builder"],
            json_value(model_row["config"]),
            bytes_as_text(weights),
            shape,
            array_as_text(np.ravel(recording["keypoints"])),
            array_as_text(np.ravel(recording["confidence"])),
        )

    def make_compute(self, key, builder, config, weights, shape, keypoints, confidence):
        from pipeline.behavior import estimators

        keypoints, confidence = text_as_array(keypoints).reshape(*shape, 2), text_as_array(confidence).reshape(shape)
        model = estimators.rebuild(builder, config, shape[1], text_as_bytes(weights))
        return (model.sample(keypoints, confidence, seed=sampling_seed(key)).astype(np.float32),)

    def make_insert(self, key, hypotheses):
        n, frames = hypotheses.shape[:2]
        self.insert1({**key, "n_hypotheses": n, "n_frames": frames, "mean_pose": hypotheses.mean(0)})
        self.Frame.insert({**key, "frame_idx": f, "hypotheses": hypotheses[:, f]} for f in range(frames))

    def hypotheses(self) -> np.ndarray:
        """``(hypotheses, frames, joints, 3)`` of the one row of this restriction."""
        if len(self) != 1:
            raise LookupError(f"this restriction holds {len(self)} PoseHypotheses rows (expected exactly one)")
        frames = (self.Frame & self.proj()).to_dicts(order_by="frame_idx")
        if not frames:
            raise LookupError("the PoseHypotheses row has no frames (expected one Frame row per frame)")
        return np.stack([np.asarray(f["hypotheses"]) for f in frames], axis=1)


@schema
class PoseScore(dj.Computed):
    definition = """
    # scores of a recording's pose hypotheses against its 3D ground truth (joints except the root)
    -> PoseHypotheses
    ---
    mpjpe_mean          : float64  # mm, MPJPE of the mean of the hypotheses
    min_mpjpe           : float64  # mm, mean over frames of the best hypothesis' MPJPE
    ece                 : float64  # expected calibration error of the per-joint distributions
    ece_occluded = null : float64  # the same over occluded joints (confidence < 0.5); null if none
    jitter              : float64  # mm / frame^2, mean norm of the second difference of the hypotheses
    jitter_truth        : float64  # the same of the ground truth
    n_occluded          : int32    # occluded joint instances
    """

    @property
    def key_source(self):
        return PoseHypotheses & RecordingTruth

    def make(self, key):
        from pipeline.behavior import camera, metrics

        hypotheses = (PoseHypotheses & key).hypotheses()
        truth = np.asarray((RecordingTruth & key).fetch1("poses"))
        confidence = np.asarray((Recording & key).fetch1("confidence"))
        scores = metrics.pose_scores(hypotheses, truth, confidence < camera.OCCLUDED_BELOW)
        self.insert1(
            {
                **key,
                **{k: float(scores[k]) for k in ("mpjpe_mean", "min_mpjpe", "ece", "jitter", "jitter_truth")},
                "ece_occluded": None if np.isnan(scores["ece_occluded"]) else float(scores["ece_occluded"]),
                "n_occluded": scores["n_occluded"],
            }
        )
