"""Tiny synthetic stimulus/response loaders for the model and training tests (no files, no DB)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class _Trials(Dataset):
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def __len__(self) -> int:
        return len(self.arrays["images"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.arrays.items()}


def synthetic_loaders(
    n_neurons=(6,), n_train=64, n_validation=32, repeats=4, height=16, width=16, batch_size=16, seed=0
) -> dict:
    """{"train", "validation", "test"} x {"d0", "d1", ...} loaders of dict batches.

    Neurons are rectified linear filters (oriented bars at random positions) of white-noise
    images; responses are Poisson draws of their rates. The test tier shows n_validation // 4
    images ``repeats`` times each.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    loaders: dict = {"train": {}, "validation": {}, "test": {}}
    for d, n in enumerate(n_neurons):
        filters = []
        for _ in range(n):
            cy, cx, theta = rng.uniform(4, height - 4), rng.uniform(4, width - 4), rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            env = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
            filters.append(np.cos(u) * env)
        filters = np.stack(filters).reshape(n, -1)
        n_test_images = max(n_validation // 4, 2)
        test_images = rng.standard_normal((n_test_images, 1, height, width)).astype(np.float32)
        tiers = {
            "train": (rng.standard_normal((n_train, 1, height, width)).astype(np.float32), np.arange(n_train)),
            "validation": (
                rng.standard_normal((n_validation, 1, height, width)).astype(np.float32),
                n_train + np.arange(n_validation),
            ),
            "test": (np.repeat(test_images, repeats, axis=0), 10_000 + np.repeat(np.arange(n_test_images), repeats)),
        }
        for tier, (images, ids) in tiers.items():
            rates = np.maximum(images.reshape(len(images), -1) @ filters.T, 0) * 0.5 + 0.2
            arrays = {
                "images": images,
                "responses": rng.poisson(rates).astype(np.float32),
                "behavior": rng.standard_normal((len(images), 3)).astype(np.float32),
                "pupil_center": rng.standard_normal((len(images), 2)).astype(np.float32),
                "image_id": ids.astype(np.int64),
                "trial_idx": np.arange(len(images), dtype=np.int64),
            }
            generator = torch.Generator().manual_seed(seed)
            loaders[tier][f"d{d}"] = DataLoader(
                _Trials(arrays), batch_size=batch_size, shuffle=tier == "train", generator=generator
            )
    return loaders
