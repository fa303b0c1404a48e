"""Behaviour: calibrated 3D pose from 2D keypoints (cGNF-style flow), multi-hypothesis motion (Platypose-style).

- ``skeleton``: a synthetic stick figure with joint-angle limits and smooth motion (ground truth).
- ``camera``: pinhole projection, keypoints with noise, confidence and occlusions; the
  normalized inputs and root-relative targets of the models; the reprojection residual.
- ``data``: ``PoseData`` and the synthetic training sets (builders of kind ``pose_data``).
- ``flow``, ``hypotheses``, ``diffusion``: the conditional flow, the minMPJPE baseline and
  the sequence diffusion model; ``estimators`` puts them behind one contract (builders of
  kind ``pose_model``: ``cgnf``, ``min_mpjpe``, ``motion_diffusion``).
- ``metrics``: MPJPE of the mean, minMPJPE, expected calibration error, jitter.

Nothing outside this package and ``schemas.behavior`` imports it.
"""
