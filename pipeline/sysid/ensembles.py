"""Ensembles of trained models: predictions averaged over members, scored like one model."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.sysid import fitting, metrics


def ensemble_predictions(
    models: Sequence[torch.nn.Module], loader, data_key: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Responses, mean prediction of ``models`` and image ids of every trial in ``loader``.

    Returns
    -------
    responses, predictions : (trials, neurons) float32
    image_ids : (trials,) int64

    Raises
    ------
    ValueError
        If ``models`` is empty, or the loader hands the members different trials.
    """
    if not models:
        raise ValueError("an ensemble of 0 models (expected at least one)")
    responses, predictions, image_ids = metrics.predict(models[0], loader, data_key)
    total = predictions.astype(np.float64)
    for i, model in enumerate(models[1:], start=1):
        r, p, ids = metrics.predict(model, loader, data_key)
        if not (np.array_equal(r, responses) and np.array_equal(ids, image_ids)):
            raise ValueError(f"member {i} saw other trials of {data_key!r} than member 0 (expected the same test tier)")
        total += p
    return responses, (total / len(models)).astype(np.float32), image_ids


def score_ensemble(
    dataset_fn: Callable,
    dataset_config: dict,
    model_fn: Callable,
    model_config: dict,
    members: Sequence[tuple[int, bytes]],
    device: str | torch.device | None = None,
    tier: str = "test",
) -> dict[str, dict]:
    """The scores (``metrics.test_scores`` plus ``unit_ids``) of an ensemble, by data key.

    Parameters
    ----------
    dataset_fn, dataset_config, model_fn, model_config
        The builders and configs the members were trained with.
    members
        ``(seed, weights)`` of every member: its seed and its ``fitting.state_dict_bytes``.
    device
        Where the models run (default: CUDA when there is one).

    An ensemble of one model scores exactly as that model does (``fitting.evaluate``).
    """
    if not members:
        raise ValueError("an ensemble of 0 models (expected at least one)")
    models, dataloaders = [], None
    for seed, weights in members:
        model, loaders = fitting.rebuild(dataset_fn, dataset_config, model_fn, model_config, seed, weights, device)
        models.append(model)
        dataloaders = dataloaders or loaders  # the test tier is not shuffled: any member's loaders serve
    loaders = dataloaders.get(tier) or {}
    if not loaders:
        raise ValueError(f"dataloaders have no {tier!r} tier (expected a tier of repeated test images)")
    out = {}
    for data_key, loader in loaders.items():
        responses, predictions, image_ids = ensemble_predictions(models, loader, data_key)
        scores = metrics.test_scores(responses, predictions, image_ids)
        scores["unit_ids"] = np.asarray(loader.dataset.unit_ids, dtype=np.int64)
        out[data_key] = scores
    return out
