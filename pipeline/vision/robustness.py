"""Accuracy of a classifier clean, under each distortion at each strength, under PGD, and out of domain."""

from __future__ import annotations

import numpy as np
import torch

from .attacks import pgd_attack
from .distortions import OUT_OF_DOMAIN, STRENGTHS, affine_transform, distort
from .training import accuracy

# the attack of every robustness score: L-inf PGD in [0, 1] pixel units
PGD = {"epsilon": 0.05, "steps": 5}


def robustness(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    strengths: dict[str, tuple[float, ...]] | None = None,
    pgd: dict | None = None,
    seed: int = 0,
) -> dict:
    """Accuracy clean, per distortion and strength, and under a PGD attack.

    Parameters
    ----------
    model : (B, C, H, W) -> (B, classes) logits
    images : (n, C, H, W) test images in [0, 1]
    labels : (n,) int64
    strengths : distortion -> strengths (default ``distortions.STRENGTHS``)
    pgd : keywords of ``pgd_attack`` (default ``PGD``)
    seed : seeds the random distortions

    Returns
    -------
    dict with ``clean`` (float), ``distortions`` (list of {distortion, strength, accuracy})
    and ``pgd`` ({epsilon, steps, accuracy})
    """
    strengths = STRENGTHS if strengths is None else strengths
    pgd = PGD if pgd is None else pgd
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    rows = [
        {"distortion": kind, "strength": float(s), "accuracy": accuracy(model, distort(images, kind, s, seed), labels)}
        for kind, levels in strengths.items()
        for s in levels
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    adversarial = pgd_attack(model, torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device), **pgd)
    model.train(was_training)
    return {
        "clean": accuracy(model, images, labels),
        "distortions": rows,
        "pgd": {**pgd, "accuracy": accuracy(model, adversarial, labels)},
    }


def out_of_domain(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy on the test images as they are (``in_domain``) and under each ``OUT_OF_DOMAIN`` transform."""
    out = {"in_domain": accuracy(model, images, labels)}
    for name, transform in OUT_OF_DOMAIN.items():
        out[name] = accuracy(model, affine_transform(images, **transform), labels)
    return out
