"""Scores of 3D pose hypotheses: MPJPE of the mean, minMPJPE, calibration error, jitter.

Hypotheses are arrays ``(hypotheses, ..., joints, 3)`` and truth ``(..., joints, 3)``, in the
same (root-relative) coordinates; distances are in the units of the poses.

References
----------
.. [1] Pierzchlewicz, P. A., Cotton, R. J., Bashiri, M., Sinz, F. H. (2022). Multi-hypothesis
   3D human pose estimation metrics favor miscalibrated distributions. arXiv:2210.11179.
   https://doi.org/10.48550/arXiv.2210.11179
.. [2] Pierzchlewicz, P. A., da Silva, C. O., Cotton, R. J., Sinz, F. H. (2024). Platypose:
   Calibrated zero-shot multi-hypothesis 3D human motion estimation. arXiv:2403.06164.
   https://doi.org/10.48550/arXiv.2403.06164
"""

from __future__ import annotations

import numpy as np

# nominal coverages of the central intervals whose observed coverage the calibration error compares
LEVELS = np.round(np.linspace(0.05, 0.95, 19), 2)


def _check(hypotheses: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hypotheses = np.asarray(hypotheses, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if hypotheses.shape[1:] != truth.shape or truth.ndim < 2 or truth.shape[-1] != 3:
        raise ValueError(
            f"hypotheses {hypotheses.shape} and truth {truth.shape} (expected (hypotheses, ..., joints, 3) "
            "and (..., joints, 3))"
        )
    return hypotheses, truth


def mpjpe(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-joint position error: the mean Euclidean distance between matching joints.

    Parameters
    ----------
    prediction, truth
        ``(..., joints, 3)`` of equal shape.

    Examples
    --------
    >>> mpjpe(np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]]), np.zeros((1, 2, 3)))
    3.0
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} (expected equal shapes)")
    return float(np.linalg.norm(prediction - truth, axis=-1).mean())


def mean_mpjpe(hypotheses: np.ndarray, truth: np.ndarray) -> float:
    """MPJPE of the mean of the hypotheses (the single best guess of a distribution).

    Examples
    --------
    >>> truth = np.zeros((1, 2, 3))
    >>> hypotheses = np.stack([truth + [1.0, 0, 0], truth - [1.0, 0, 0]])
    >>> mean_mpjpe(hypotheses, truth)
    0.0
    """
    hypotheses, truth = _check(hypotheses, truth)
    return mpjpe(hypotheses.mean(0), truth)


def min_mpjpe(hypotheses: np.ndarray, truth: np.ndarray) -> float:
    """minMPJPE: per pose, the MPJPE of the best of the hypotheses, averaged over poses.

    Examples
    --------
    >>> truth = np.zeros((1, 2, 3))
    >>> hypotheses = np.stack([truth + [1.0, 0, 0], truth + [0.1, 0, 0]])
    >>> round(min_mpjpe(hypotheses, truth), 3)
    0.1
    """
    hypotheses, truth = _check(hypotheses, truth)
    per_pose = np.linalg.norm(hypotheses - truth, axis=-1).mean(-1)  # (hypotheses, ...)
    return float(per_pose.min(0).mean())


def calibration_curve(
    hypotheses: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, levels: np.ndarray = LEVELS
) -> np.ndarray:
    """Observed coverage of every joint's quantile balls around its median, at each nominal level.

    As in [1]_, each joint's distribution is judged by distances to its median: the truth lies
    in the ball of nominal coverage ``q`` when its distance to the median is below the
    ``q``-quantile of the hypotheses' distances. [1]_ takes the median of the hypotheses alone
    and ``np.quantile`` of their distances, which is biased when hypotheses are few: the median
    is fit to the hypotheses, so their distances run shorter than the truth's, and the
    quantiles of 20 values are coarse (a calibrated Gaussian scores 0.04 with 20 hypotheses and
    prefers too wide to too narrow). Here the median is that of the hypotheses and the truth
    together, so that for a calibrated distribution all ``hypotheses + 1`` distances are
    exchangeable and the truth's rank among them is uniform (a symmetric pre-rank, [2]_); the
    rank ``r`` places the probability integral transform ``u`` in ``[r, r + 1] / (hypotheses + 1)``
    and the fraction of that bin below ``q`` is counted (the randomized PIT in expectation), so
    that a calibrated distribution covers a fraction ``q`` whatever the number of hypotheses.

    Distances of whole 3D joints, rather than ranks of single coordinates, are what a
    winner-takes-all quantizer cannot match by spreading its hypotheses along each axis.

    Parameters
    ----------
    hypotheses
        ``(hypotheses, ..., joints, 3)`` samples of each pose's distribution.
    truth
        ``(..., joints, 3)``.
    mask
        ``(..., joints)`` bool, the joint instances to score (e.g. occluded ones); all if None.
    levels
        Nominal coverages in (0, 1).

    Returns
    -------
    ndarray
        ``(joints, levels)`` observed coverage; NaN for a joint with no instance in ``mask``.

    References
    ----------
    .. [2] Gneiting, T., Stanberry, L. I., Grimit, E. P., Held, L., Johnson, N. A. (2008).
       Assessing probabilistic forecasts of multivariate quantities, with an application to
       ensemble predictions of surface winds. Test 17, 211-235.
       https://doi.org/10.1007/s11749-008-0114-x

    Examples
    --------
    Hypotheses that all miss by the same offset never cover the truth:

    >>> truth = np.zeros((10, 1, 3))
    >>> rng = np.random.default_rng(0)
    >>> hypotheses = truth[None] + 5 + rng.normal(size=(99, 10, 1, 3))
    >>> calibration_curve(hypotheses, truth, levels=[0.5, 0.9]).tolist()
    [[0.0, 0.0]]
    """
    hypotheses, truth = _check(hypotheses, truth)
    n = hypotheses.shape[0]
    points = np.concatenate([hypotheses, truth[None]], 0)
    distance = np.linalg.norm(points - np.median(points, 0), axis=-1)  # (hypotheses + 1, ..., joints)
    rank = (distance[:-1] < distance[-1]).sum(0)  # (..., joints)
    levels = np.asarray(levels, dtype=np.float64)
    # fraction of the truth's PIT bin [rank, rank + 1] / (n + 1) below each level
    below = np.clip(levels * (n + 1) - rank[..., None], 0, 1)  # (..., joints, levels)
    joints = truth.shape[-2]
    below = below.reshape(-1, joints, len(levels))
    if mask is None:
        keep = np.ones(below.shape[:2], dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != truth.shape[:-1]:
            raise ValueError(f"mask {mask.shape} (expected truth's shape less its last axis, {truth.shape[:-1]})")
        keep = mask.reshape(-1, joints)
    covered = (below * keep[..., None]).sum(0)  # (joints, levels)
    with np.errstate(invalid="ignore", divide="ignore"):
        return covered / keep.sum(0)[:, None]


def expected_calibration_error(
    hypotheses: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, levels: np.ndarray = LEVELS
) -> float:
    """Mean absolute gap between observed and nominal coverage, averaged over levels and joints.

    Per joint, the absolute difference between the observed coverage of the quantile balls
    (``calibration_curve``) and their nominal level is averaged over ``levels``; the result is
    the mean over joints that have an instance in ``mask``. [1]_ takes the median over joints
    of the coverage before the difference, which lets one joint's overconfidence cancel
    another's underconfidence; here every joint counts. 0 is perfect calibration; a
    distribution that is too narrow or too wide scores up to 0.5.

    Returns
    -------
    float
        NaN if ``mask`` selects nothing.

    Examples
    --------
    A calibrated Gaussian scores about 0; one three times too wide does not:

    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(2000, 4, 3))
    >>> samples = rng.normal(size=(100, 2000, 4, 3))
    >>> expected_calibration_error(samples, truth) < 0.02
    True
    >>> round(expected_calibration_error(3 * samples, truth), 2)
    0.46
    """
    curve = calibration_curve(hypotheses, truth, mask, levels)
    per_joint = np.abs(curve - np.asarray(levels)).mean(-1)
    if np.all(np.isnan(per_joint)):
        return float("nan")
    return float(np.nanmean(per_joint))


def jitter(sequences: np.ndarray) -> float:
    """Mean norm of the second difference of joint positions between frames (acceleration per frame^2).

    Parameters
    ----------
    sequences
        ``(..., frames, joints, 3)`` with at least 3 frames; leading axes (hypotheses,
        sequences) are averaged over.

    Examples
    --------
    >>> line = np.linspace(0, 1, 10)[:, None, None] * np.ones((10, 2, 3))
    >>> jitter(line) < 1e-12
    True
    """
    sequences = np.asarray(sequences, dtype=np.float64)
    if sequences.ndim < 3 or sequences.shape[-3] < 3 or sequences.shape[-1] != 3:
        raise ValueError(f"sequences has shape {sequences.shape} (expected (..., frames >= 3, joints, 3))")
    second = sequences[..., 2:, :, :] - 2 * sequences[..., 1:-1, :, :] + sequences[..., :-2, :, :]
    return float(np.linalg.norm(second, axis=-1).mean())


def pose_scores(hypotheses: np.ndarray, truth: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
    """Every score of one recording's hypotheses, in millimetres, the root (always 0) left out.

    Parameters
    ----------
    hypotheses
        ``(hypotheses, frames, joints, 3)`` root-relative poses in metres.
    truth
        ``(frames, joints, 3)`` root-relative poses in metres.
    occluded
        ``(frames, joints)`` bool, the joint instances scored by ``ece_occluded``.

    Returns
    -------
    dict
        ``mpjpe_mean``, ``min_mpjpe`` (mm), ``ece``, ``ece_occluded`` (NaN without occluded
        joints), ``jitter`` (mm per frame squared, mean over hypotheses), ``jitter_truth``,
        ``n_hypotheses``, ``n_frames``, ``n_occluded``.
    """
    hypotheses, truth = _check(hypotheses, truth)
    occluded = np.asarray(occluded, dtype=bool)
    if occluded.shape != truth.shape[:-1]:
        raise ValueError(f"occluded {occluded.shape} (expected {truth.shape[:-1]})")
    h, t, o = hypotheses[..., 1:, :] * 1000, truth[..., 1:, :] * 1000, occluded[..., 1:]
    return {
        "mpjpe_mean": mean_mpjpe(h, t),
        "min_mpjpe": min_mpjpe(h, t),
        "ece": expected_calibration_error(h, t),
        "ece_occluded": expected_calibration_error(h, t, o) if o.any() else float("nan"),
        "jitter": jitter(h) if h.shape[1] >= 3 else float("nan"),
        "jitter_truth": jitter(t) if t.shape[0] >= 3 else float("nan"),
        "n_hypotheses": int(h.shape[0]),
        "n_frames": int(t.shape[0]),
        "n_occluded": int(o.sum()),
    }
