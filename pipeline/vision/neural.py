"""Predicted responses of a model of visual cortex to a stimulus set, and neural targets from them."""

from __future__ import annotations

import numpy as np
import torch


def match_intensity(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``images`` shifted and scaled to a global ``mean`` and ``std`` (those of a model's training images).

    Parameters
    ----------
    images : (n, C, H, W)

    Returns
    -------
    (n, C, H, W) float32
    """
    images = np.asarray(images, dtype=np.float32)
    spread = float(images.std())
    if spread == 0:
        raise ValueError("stimulus images have no contrast (std 0): cannot match them to a model's inputs")
    return ((images - images.mean()) / spread * std + mean).astype(np.float32)


def _repeat(state: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor | None:
    """One state of the animal, (k,), as an (n, k) batch on ``device``."""
    return None if state is None else torch.as_tensor(state, dtype=torch.float32, device=device).expand(n, -1)


@torch.no_grad()
def predict_responses(
    model: torch.nn.Module,
    images: np.ndarray,
    data_key: str | None = None,
    *,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """A model of visual cortex's responses to ``images``.

    Parameters
    ----------
    model : ``Encoder``-like, ``forward(images, data_key, behavior, pupil_center)``
    images : (n, C, H, W) in the model's input units (see ``match_intensity``)
    data_key : the readout to use
    behavior, pupil_center : (3,) and (2,) one state of the animal, used for every image (a
        model with a modulator or a shifter needs them)
    batch_size : images per forward pass

    Returns
    -------
    (n, neurons) float32
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        rates = model(x, data_key, _repeat(behavior, len(x), device), _repeat(pupil_center, len(x), device))
        out.append(rates.cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def shuffled_targets(targets: np.ndarray, seed: int) -> np.ndarray:
    """The control of neural targets: rows permuted, so that responses no longer belong to their images.

    Every response vector (and so the marginal statistics) is kept; only the pairing with
    images is destroyed.

    Parameters
    ----------
    targets : (n, neurons)

    Returns
    -------
    (n, neurons), a row permutation of ``targets`` fixed by ``seed``
    """
    order = np.random.default_rng([int(seed), 11]).permutation(len(targets))
    return np.asarray(targets)[order]


def encoder_predictions(model: torch.nn.Module, dataloaders: dict, data_key: str, images: np.ndarray) -> np.ndarray:
    """Responses of a trained (or untrained) model of visual cortex to stimulus-set images.

    The images are matched to the global mean and std of the model's own training images,
    and every image is shown at the animal's mean behaviour and eye position over the
    training trials (models without a modulator or shifter ignore them).

    Parameters
    ----------
    model : ``Encoder`` with a readout ``data_key``
    dataloaders : the model's ``{"train": {data_key: DataLoader}, ...}`` (``pipeline.sysid.data``)
    data_key : the readout (the dataset the model was trained on)
    images : (n, 1, H, W) stimulus images, H x W the model's input size

    Returns
    -------
    (n, neurons) float32
    """
    loaders = dataloaders.get("train") or {}
    if data_key not in loaders:
        raise KeyError(f"data_key {data_key!r} has no train loader (expected one of {sorted(loaders)})")
    arrays = loaders[data_key].dataset.arrays
    expected = tuple(arrays["images"].shape[1:])
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"stimulus images are {tuple(images.shape[1:])} (expected the model's input shape {expected}: "
            "define the stimulus set with the model's height and width)"
        )
    matched = match_intensity(images, float(arrays["images"].mean()), float(arrays["images"].std()))
    return predict_responses(
        model,
        matched,
        data_key,
        behavior=arrays["behavior"].mean(0),
        pupil_center=arrays["pupil_center"].mean(0),
    )
