"""A synthetic articulated stick figure with ground truth: joint angles, 3D joints, smooth motion.

Every bone points along a rest direction rotated by a flexion angle (about the body's
left-right axis) and an abduction angle (about its front-back axis), each inside a joint-angle
limit; joints are placed by forward kinematics from the pelvis, so bone lengths hold exactly in
every frame. The whole body turns about its vertical axis (yaw) and moves in front of a camera
(see ``pipeline.behavior.camera``). Coordinates are camera coordinates in metres: x right,
y down, z away from the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree: joint names, parents, bone lengths, rest directions and angle limits.

    Attributes
    ----------
    names
        ``(joints,)`` joint names; joint 0 is the root (pelvis).
    parents
        ``(joints,)`` index of each joint's parent (-1 for the root); parents come first.
    lengths
        ``(joints,)`` length of the bone from the parent to the joint in metres (0 for the root).
    rest
        ``(joints, 3)`` unit direction of each bone at zero angles, in the body frame
        (x left-right, y up, z forward).
    flexion, abduction
        ``(joints, 2)`` lower and upper limits of the two angles of each bone, in radians.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    lengths: np.ndarray
    rest: np.ndarray
    flexion: np.ndarray
    abduction: np.ndarray

    @property
    def n_joints(self) -> int:
        return len(self.names)

    @property
    def bones(self) -> list[tuple[int, int]]:
        """(parent, child) index pairs of every bone."""
        return [(int(p), j) for j, p in enumerate(self.parents) if p >= 0]


def _deg(lo: float, hi: float) -> tuple[float, float]:
    return (np.deg2rad(lo), np.deg2rad(hi))


def stick_figure() -> Skeleton:
    """A human-like stick figure of 11 joints (pelvis, chest, head, elbows, wrists, knees, ankles).

    The limits make the figure's prior asymmetric (knees bend backwards only, elbows forwards
    only), so that depth ambiguities of a single camera are partly resolved by the prior and
    partly not: the setting in which calibration of the posterior matters.
    """
    up, down = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0)
    # name, parent, length, rest direction, flexion limits, abduction limits (degrees)
    table = [
        ("pelvis", -1, 0.0, up, (0, 0), (0, 0)),
        ("chest", 0, 0.50, up, (-15, 35), (-15, 15)),
        ("head", 1, 0.25, up, (-20, 40), (-20, 20)),
        ("l_elbow", 1, 0.30, (-0.35, -0.94, 0.0), (-40, 150), (-10, 60)),
        ("l_wrist", 3, 0.27, down, (0, 140), (-20, 20)),
        ("r_elbow", 1, 0.30, (0.35, -0.94, 0.0), (-40, 150), (-60, 10)),
        ("r_wrist", 5, 0.27, down, (0, 140), (-20, 20)),
        ("l_knee", 0, 0.45, (-0.2, -0.98, 0.0), (-25, 90), (-5, 35)),
        ("l_ankle", 7, 0.42, down, (-120, 0), (-5, 5)),
        ("r_knee", 0, 0.45, (0.2, -0.98, 0.0), (-25, 90), (-35, 5)),
        ("r_ankle", 9, 0.42, down, (-120, 0), (-5, 5)),
    ]
    rest = np.array([r[3] for r in table], dtype=np.float64)
    rest /= np.linalg.norm(rest, axis=1, keepdims=True)
    return Skeleton(
        names=tuple(r[0] for r in table),
        parents=np.array([r[1] for r in table], dtype=np.int64),
        lengths=np.array([r[2] for r in table], dtype=np.float64),
        rest=rest,
        flexion=np.array([_deg(*r[4]) for r in table]),
        abduction=np.array([_deg(*r[5]) for r in table]),
    )


def _rot_x(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    # flexion: a positive angle turns a downward bone forwards (towards +z)
    return np.stack([one, zero, zero, zero, c, -s, zero, s, c], axis=-1).reshape(*angle.shape, 3, 3)


def _rot_z(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    return np.stack([c, -s, zero, s, c, zero, zero, zero, one], axis=-1).reshape(*angle.shape, 3, 3)


def _rot_y(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    return np.stack([c, zero, s, zero, one, zero, -s, zero, c], axis=-1).reshape(*angle.shape, 3, 3)


# body frame (y up, z forward) to camera frame (y down, z away): a rotation of 180 degrees about x
_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


def forward_kinematics(
    skeleton: Skeleton, flexion: np.ndarray, abduction: np.ndarray, yaw: np.ndarray, root: np.ndarray
) -> np.ndarray:
    """Joint positions in camera coordinates from joint angles, body yaw and root position.

    Parameters
    ----------
    skeleton
        The kinematic tree.
    flexion, abduction
        ``(..., joints)`` angles in radians (the root's are ignored).
    yaw
        ``(...,)`` rotation of the body about its vertical axis in radians; 0 faces the camera.
    root
        ``(..., 3)`` pelvis position in camera coordinates (metres).

    Returns
    -------
    ndarray
        ``(..., joints, 3)`` joint positions in metres.
    """
    # a yaw of 0 turns the body's front (+z, body frame) towards the camera (-z, camera frame)
    body = _BODY_TO_CAMERA @ _rot_y(np.asarray(yaw, dtype=np.float64))  # (..., 3, 3)
    local = _rot_z(abduction) @ _rot_x(flexion) @ skeleton.rest[..., None]  # (..., joints, 3, 1)
    directions = (body[..., None, :, :] @ local)[..., 0]  # (..., joints, 3)
    joints = np.zeros(directions.shape, dtype=np.float64)
    joints[..., 0, :] = root
    for j in range(1, skeleton.n_joints):
        joints[..., j, :] = joints[..., skeleton.parents[j], :] + skeleton.lengths[j] * directions[..., j, :]
    return joints


def smooth_signal(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_frames: int,
    fps: float,
    frequencies: tuple[float, float] = (0.1, 0.8),
    components: int = 3,
) -> np.ndarray:
    """Smooth random signals of unit scale: sums of sinusoids with random frequency and phase.

    Returns
    -------
    ndarray
        ``(*shape, n_frames)``, roughly in [-1.5, 1.5].
    """
    t = np.arange(n_frames) / fps
    freq = rng.uniform(*frequencies, size=(*shape, components, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(*shape, components, 1))
    amplitude = rng.normal(size=(*shape, components, 1)) / np.sqrt(components)
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).sum(axis=-2)


@dataclass
class Motion:
    """Ground truth of simulated sequences.

    Attributes
    ----------
    flexion, abduction
        ``(sequences, frames, joints)`` joint angles in radians, inside the limits.
    yaw
        ``(sequences, frames)`` body orientation in radians.
    root
        ``(sequences, frames, 3)`` pelvis position in camera coordinates (metres).
    joints
        ``(sequences, frames, joints, 3)`` joint positions in camera coordinates (metres).
    fps
        Frames per second.
    """

    flexion: np.ndarray
    abduction: np.ndarray
    yaw: np.ndarray
    root: np.ndarray
    joints: np.ndarray
    fps: float


def random_motion(
    skeleton: Skeleton,
    n_sequences: int,
    n_frames: int,
    *,
    fps: float = 30.0,
    distance: tuple[float, float] = (4.0, 6.0),
    seed: int = 0,
) -> Motion:
    """Smooth random motion of the figure in front of the camera.

    Each angle follows a smooth signal squashed into its limits (a logistic map, so that limits
    are never crossed); the body turns slowly through every orientation over the sequences
    and its pelvis drifts at ``distance`` metres from the camera.
    """
    if n_sequences < 1 or n_frames < 1:
        raise ValueError(f"n_sequences={n_sequences}, n_frames={n_frames} (expected both at least 1)")
    rng = np.random.default_rng(seed)
    J = skeleton.n_joints

    def within(limits: np.ndarray) -> np.ndarray:
        signal = smooth_signal(rng, (n_sequences, J), n_frames, fps) * 2.0 + rng.normal(size=(n_sequences, J, 1))
        squashed = 1.0 / (1.0 + np.exp(-signal))
        value = limits[:, 0, None] + (limits[:, 1] - limits[:, 0])[:, None] * squashed
        return np.moveaxis(value, -1, 1)  # (sequences, frames, joints)

    flexion, abduction = within(skeleton.flexion), within(skeleton.abduction)
    yaw = rng.uniform(-np.pi, np.pi, size=(n_sequences, 1)) + 1.5 * smooth_signal(
        rng, (n_sequences,), n_frames, fps, frequencies=(0.02, 0.1)
    )
    root = np.stack(
        [
            0.8 * smooth_signal(rng, (n_sequences,), n_frames, fps, frequencies=(0.02, 0.1)),
            0.1 + 0.05 * smooth_signal(rng, (n_sequences,), n_frames, fps),
            np.mean(distance)
            + (distance[1] - distance[0])
            / 3
            * smooth_signal(rng, (n_sequences,), n_frames, fps, frequencies=(0.02, 0.1)),
        ],
        axis=-1,
    )
    joints = forward_kinematics(skeleton, flexion, abduction, yaw, root)
    return Motion(flexion=flexion, abduction=abduction, yaw=yaw, root=root, joints=joints, fps=fps)


def bone_lengths(skeleton: Skeleton, joints: np.ndarray) -> np.ndarray:
    """``(..., bones)`` lengths of every bone of ``joints`` ``(..., joints, 3)``."""
    parent = np.array([p for p, _ in skeleton.bones])
    child = np.array([c for _, c in skeleton.bones])
    return np.linalg.norm(joints[..., child, :] - joints[..., parent, :], axis=-1)
