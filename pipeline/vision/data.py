"""The classification dataset builder: a stimulus set split into train / validation / test by seed."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import identity


class LabelledImages(Dataset):
    """Images with labels, their index in the stimulus set and (optionally) neural targets.

    Attributes
    ----------
    arrays : dict with ``images`` (n, C, H, W) float32, ``labels`` (n,) int64, ``index`` (n,)
        int64 rows of the stimulus set, and ``targets`` (n, neurons) float32 when given.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return int(len(self.arrays["labels"]))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v[i])) for k, v in self.arrays.items()}


def split_indices(n: int, seed: int, validation_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Disjoint random ``train`` / ``validation`` / ``test`` rows of ``n`` items, sorted, fixed by ``seed``."""
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(
            f"validation_fraction = {validation_fraction}, test_fraction = {test_fraction} "
            "(expected both in (0, 1) with a sum below 1)"
        )
    order = np.random.default_rng([int(seed), 7]).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * validation_fraction))
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise ValueError(f"{n} images are too few to split {validation_fraction}/{test_fraction} (a tier is empty)")
    return {
        "train": np.sort(order[n_test + n_val :]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "test": np.sort(order[:n_test]),
    }


@identity.register("vision_dataset", "stimulus_split")
def stimulus_split(
    seed: int,
    *,
    images: list | np.ndarray | None = None,
    labels: list | np.ndarray | None = None,
    targets: list | np.ndarray | None = None,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.25,
    batch_size: int = 64,
) -> dict[str, DataLoader]:
    """Loaders of a stimulus set's images and labels, split by ``seed``.

    Parameters
    ----------
    seed
        Fixes the split and the train shuffling: every method trained with one seed sees the
        same images.
    images, labels, targets
        (n, C, H, W) images in [0, 1], (n,) labels and optional (n, neurons) neural targets
        (predicted responses to the same images). ``TrainedClassifier`` fills them from the
        stimulus set and neural target of its key; a stored config leaves them None.
    validation_fraction, test_fraction
        Fractions of the images in the validation and test tiers.
    batch_size
        Images per batch.

    Returns
    -------
    dict
        ``{"train", "validation", "test"}`` -> DataLoader of dict batches (``images``,
        ``labels``, ``index`` and, with targets, ``targets``).
    """
    if images is None or labels is None:
        raise ValueError("stimulus_split: images and labels are None (expected the stimulus set's arrays)")
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(f"images {images.shape} and labels {labels.shape} (expected (n, C, H, W) and (n,))")
    arrays = {"images": images, "labels": labels, "index": np.arange(len(images), dtype=np.int64)}
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(images):
            raise ValueError(f"targets have shape {targets.shape} (expected ({len(images)}, neurons))")
        arrays["targets"] = targets
    loaders = {}
    for tier, rows in split_indices(len(images), seed, validation_fraction, test_fraction).items():
        generator = torch.Generator().manual_seed(int(seed))
        loaders[tier] = DataLoader(
            LabelledImages({k: v[rows] for k, v in arrays.items()}),
            batch_size=batch_size,
            shuffle=tier == "train",
            generator=generator,
        )
    return loaders


def tier_arrays(loaders: dict[str, DataLoader], tier: str) -> dict[str, np.ndarray]:
    """The arrays of one tier of ``stimulus_split`` loaders (``images``, ``labels``, ...)."""
    if tier not in loaders:
        raise KeyError(f"no tier {tier!r} (expected one of {sorted(loaders)})")
    return loaders[tier].dataset.arrays
