"""A trained model as a response function of images, for the in-silico experiments."""

from __future__ import annotations

from typing import Callable

import torch

ResponseFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def mean_behavior(loader) -> dict[str, torch.Tensor]:
    """Mean ``behavior`` (3,) and ``pupil_center`` (2,) over the batches of ``loader``.

    The in-silico experiments hold behaviour at its mean, so a model with a behaviour
    modulator or a shifter sees an average animal.
    """
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in loader:
        for name in ("behavior", "pupil_center"):
            if batch.get(name) is not None:
                value = batch[name].double().sum(0)
                sums[name] = sums[name] + value if name in sums else value
        count += batch["images"].shape[0]
    if count == 0:
        raise ValueError("loader yields no trials (expected at least one to average behaviour over)")
    return {name: (value / count).float() for name, value in sums.items()}


def response_function(
    model: torch.nn.Module,
    data_key: str | None = None,
    behavior: dict[str, torch.Tensor] | None = None,
) -> ResponseFn:
    """``f(images (B, C, H, W)) -> rates (B, N)`` of ``model`` for one data key, differentiable.

    Parameters
    ----------
    model : an ``Encoder``-like module, ``model(images, data_key=..., behavior=..., pupil_center=...)``;
        it is put in eval mode.
    data_key : which readout (None when the model has one).
    behavior : ``{"behavior": (3,), "pupil_center": (2,)}`` held fixed for every image
        (``mean_behavior``), or None.
    """
    model.eval()
    device = next(model.parameters()).device
    fixed = {k: v.to(device) for k, v in (behavior or {}).items()}

    def respond(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device)
        extra = {k: v.expand(images.shape[0], -1) for k, v in fixed.items()}
        return model(images, data_key=data_key, **extra)

    return respond
