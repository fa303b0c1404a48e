"""A pinhole camera: 2D keypoints with confidence from 3D joints, and the lifting problem's coordinates.

``observe`` is what a keypoint detector would give: pixel positions with noise, and a
confidence that drops for occluded joints, whose positions are then guesses. ``normalize``
turns keypoints into the inputs of the pose models (root-relative, scale-free), and
``root_relative`` turns 3D joints into their targets; ``reprojection_residual`` is the
weak-perspective mismatch between a 3D pose and normalized keypoints that guides sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# keypoints below this confidence count as occluded (in scores and in reprojection weights)
OCCLUDED_BELOW = 0.5
# the simulated camera's confidence of an occluded keypoint: uniform below this
OCCLUDED_CONFIDENCE_MAX = 0.3


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics: focal length and principal point in pixels."""

    focal: float = 1000.0
    cx: float = 640.0
    cy: float = 360.0

    def to_dict(self) -> dict:
        return {"focal": self.focal, "cx": self.cx, "cy": self.cy}


def project(camera: Camera, joints: np.ndarray) -> np.ndarray:
    """Pixel coordinates ``(..., joints, 2)`` of 3D joints ``(..., joints, 3)`` in camera coordinates.

    Raises
    ------
    ValueError
        If a joint lies at or behind the camera (z <= 0).
    """
    joints = np.asarray(joints, dtype=np.float64)
    z = joints[..., 2]
    if np.any(z <= 0):
        raise ValueError(f"{int(np.sum(z <= 0))} joint(s) at z <= 0 (expected every joint in front of the camera)")
    return np.stack([camera.focal * joints[..., 0] / z + camera.cx, camera.focal * joints[..., 1] / z + camera.cy], -1)


@dataclass
class Observation:
    """What a 2D keypoint detector reports for every frame.

    Attributes
    ----------
    keypoints
        ``(..., joints, 2)`` pixel positions.
    confidence
        ``(..., joints)`` in [0, 1]; below ``OCCLUDED_BELOW`` for occluded joints.
    occluded
        ``(..., joints)`` the simulation's truth of which joints were hidden.
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    occluded: np.ndarray


def observe(
    camera: Camera,
    joints: np.ndarray,
    *,
    noise_px: float = 2.0,
    occlusion_rate: float = 0.1,
    occluded_noise_px: float = 25.0,
    occlusion_frames: int = 15,
    seed: int = 0,
) -> Observation:
    """Noisy 2D keypoints of ``joints`` ``(sequences, frames, joints, 3)`` with occlusions.

    Occlusions come in runs of about ``occlusion_frames`` frames (an arm behind the body hides
    for a while, not for one frame), covering a fraction ``occlusion_rate`` of the non-root
    joints' frames; the pelvis is never occluded because every pose is expressed relative to
    it. A visible joint has confidence in [0.7, 1] and ``noise_px`` pixel noise; an occluded one
    has confidence in [0, 0.3] and ``occluded_noise_px``.
    """
    if not 0 <= occlusion_rate < 1:
        raise ValueError(f"occlusion_rate={occlusion_rate} (expected in [0, 1))")
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 4 or joints.shape[-1] != 3:
        raise ValueError(f"joints has shape {joints.shape} (expected (sequences, frames, joints, 3))")
    rng = np.random.default_rng(seed)
    S, F, J, _ = joints.shape
    occluded = np.zeros((S, F, J), dtype=bool)
    if occlusion_rate > 0:
        # run starts at a rate that leaves occlusion_rate of frames covered by runs of the given length
        starts = rng.random((S, F, J)) < occlusion_rate / occlusion_frames
        for offset in range(min(occlusion_frames, F)):
            occluded[:, offset:] |= starts[:, : F - offset]
        occluded[..., 0] = False
    clean = project(camera, joints)
    noise = np.where(occluded[..., None], occluded_noise_px, noise_px) * rng.normal(size=clean.shape)
    confidence = np.where(
        occluded, rng.uniform(0.0, OCCLUDED_CONFIDENCE_MAX, (S, F, J)), rng.uniform(0.7, 1.0, (S, F, J))
    )
    return Observation(keypoints=clean + noise, confidence=confidence, occluded=occluded)


def normalize(keypoints: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Keypoints relative to the root (joint 0), divided by their confidence-weighted RMS spread.

    Dividing by the spread makes the inputs independent of the distance to the camera, so
    that a model learns shape, not size; the 3D targets keep their metric scale.

    Parameters
    ----------
    keypoints
        ``(..., joints, 2)`` pixel positions.
    confidence
        ``(..., joints)``.

    Returns
    -------
    ndarray
        ``(..., joints, 2)`` float32, the root at (0, 0).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    relative = keypoints - keypoints[..., :1, :]
    weight = (np.asarray(confidence) >= OCCLUDED_BELOW).astype(np.float64)
    spread = np.sqrt((weight * (relative**2).sum(-1)).sum(-1) / np.maximum(weight.sum(-1), 1.0))
    if np.any(spread <= 0):
        raise ValueError("a frame has all visible keypoints on its root (expected a spread above 0 pixels)")
    return (relative / spread[..., None, None]).astype(np.float32)


def root_relative(joints: np.ndarray) -> np.ndarray:
    """3D joints ``(..., joints, 3)`` minus the root's position: the targets of the pose models."""
    joints = np.asarray(joints)
    return joints - joints[..., :1, :]


def reprojection_residual(pose: torch.Tensor, keypoints: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted squared mismatch of root-relative poses and normalized keypoints, per pose.

    Under weak perspective a root-relative pose projects to ``s * pose[..., :2]``; the scale
    ``s`` that fits best (weighted least squares) is solved in closed form, so the residual
    measures shape only, as ``normalize`` does.

    Parameters
    ----------
    pose
        ``(..., joints, 3)`` root-relative 3D joints.
    keypoints
        ``(..., joints, 2)`` from ``normalize``.
    weight
        ``(..., joints)`` per-joint weights (e.g. 1 for visible, 0 for occluded).

    Returns
    -------
    Tensor
        ``(...,)`` sum over joints of ``weight * |keypoints - s * pose_xy|^2``.
    """
    xy = pose[..., :2]
    w = weight[..., None]
    scale = (w * xy * keypoints).sum((-1, -2)) / (w * xy * xy).sum((-1, -2)).clamp_min(1e-8)
    return (w * (keypoints - scale[..., None, None] * xy) ** 2).sum((-1, -2))
