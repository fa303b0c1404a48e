"""The one choice of a torch device: the one asked for, else CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import torch


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; by default ``cuda`` when a GPU is visible, else ``cpu``.

    Examples
    --------
    >>> choose_device("cpu")
    device(type='cpu')
    """
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
