"""Keypoint sequences with (optional) 3D ground truth; synthetic training sets (builders of kind ``pose_data``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import identity

from . import camera as cam
from . import skeleton as skel


@dataclass
class PoseData:
    """2D keypoint sequences and, where known, the 3D poses they come from.

    Attributes
    ----------
    keypoints
        ``(sequences, frames, joints, 2)`` pixel positions.
    confidence
        ``(sequences, frames, joints)`` detector confidence in [0, 1].
    poses
        ``(sequences, frames, joints, 3)`` root-relative 3D joints in metres, or None.
    occluded
        ``(sequences, frames, joints)`` bool truth of occlusion, or None.
    fps
        Frames per second.
    joint_names
        ``(joints,)`` names; joint 0 is the root.
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    poses: np.ndarray | None
    occluded: np.ndarray | None
    fps: float
    joint_names: tuple[str, ...]

    def __post_init__(self) -> None:
        S, F, J, two = self.keypoints.shape
        if two != 2 or self.confidence.shape != (S, F, J):
            raise ValueError(
                f"keypoints {self.keypoints.shape} and confidence {self.confidence.shape} "
                "(expected (sequences, frames, joints, 2) and (sequences, frames, joints))"
            )
        if self.poses is not None and self.poses.shape != (S, F, J, 3):
            raise ValueError(f"poses {self.poses.shape} (expected {(S, F, J, 3)})")
        if len(self.joint_names) != J:
            raise ValueError(f"{len(self.joint_names)} joint names for {J} joints (expected one per joint)")

    @property
    def n_joints(self) -> int:
        return self.keypoints.shape[2]


def simulate(
    n_sequences: int,
    n_frames: int,
    *,
    fps: float = 30.0,
    noise_px: float = 2.0,
    occlusion_rate: float = 0.1,
    seed: int = 0,
) -> PoseData:
    """Sequences of the stick figure (``skeleton.stick_figure``) seen by the default camera."""
    figure = skel.stick_figure()
    motion = skel.random_motion(figure, n_sequences, n_frames, fps=fps, seed=seed)
    seen = cam.observe(cam.Camera(), motion.joints, noise_px=noise_px, occlusion_rate=occlusion_rate, seed=seed + 1)
    return PoseData(
        keypoints=seen.keypoints.astype(np.float32),
        confidence=seen.confidence.astype(np.float32),
        poses=cam.root_relative(motion.joints).astype(np.float32),
        occluded=seen.occluded,
        fps=fps,
        joint_names=figure.names,
    )


@identity.register(
    "pose_data",
    validate=identity.bounds(
        minimum={"n_sequences": 1, "n_frames": 1, "noise_px": 0.0, "occlusion_rate": 0.0},
        above={"fps": 0.0},
        maximum={"occlusion_rate": 0.9},
    ),
)
def synthetic_skeleton(
    *,
    n_sequences: int = 200,
    n_frames: int = 64,
    fps: float = 30.0,
    noise_px: float = 2.0,
    occlusion_rate: float = 0.1,
    seed: int = 0,
) -> PoseData:
    """A training set of simulated stick-figure sequences with 3D ground truth (see ``simulate``)."""
    return simulate(n_sequences, n_frames, fps=fps, noise_px=noise_px, occlusion_rate=occlusion_rate, seed=seed)


def condition(keypoints: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Model inputs ``(..., 3 * joints)``: normalized keypoints (occluded ones zeroed) and confidences.

    Zeroing an occluded keypoint, rather than passing the detector's guess, tells a model that
    it knows nothing there, so that its distribution for that joint falls back on the prior.
    """
    normalized = cam.normalize(keypoints, confidence)
    visible = (np.asarray(confidence) >= cam.OCCLUDED_BELOW)[..., None]
    flat = (normalized * visible).reshape(*normalized.shape[:-2], -1)
    return np.concatenate([flat, np.asarray(confidence, dtype=np.float32)], -1).astype(np.float32)
