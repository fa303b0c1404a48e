"""Synthetic ground truth for the spike tests: Poisson spikes through an AR(1) calcium model."""

from __future__ import annotations

import numpy as np


def simulate_cell(
    seed: int = 0,
    frames: int = 3000,
    fps: float = 30.0,
    rate: float = 0.8,
    tau: float = 0.6,
    amplitude: float = 1.0,
    noise: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """(calcium (frames,), spike counts (frames,)) of one cell, float64, deterministic in seed."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rate / fps, size=frames).astype(float)
    g = np.exp(-1.0 / (tau * fps))
    calcium = np.zeros(frames)
    level = 0.0
    for t in range(frames):
        level = g * level + amplitude * counts[t]
        calcium[t] = level
    return calcium + 0.5 + noise * rng.standard_normal(frames), counts


def simulate_recordings(n: int, seed: int = 0, **kwargs) -> list[dict]:
    """``n`` recordings as mappings that ``train_spike_model`` takes, in two datasets."""
    out = []
    for i in range(n):
        calcium, counts = simulate_cell(seed + i, **kwargs)
        out.append(
            {
                "calcium": calcium,
                "spikes": counts,
                "fps": kwargs.get("fps", 30.0),
                "dataset": f"sim{i % 2}",
                "name": f"cell{i}",
            }
        )
    return out
