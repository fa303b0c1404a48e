"""Shifter: pupil position -> shift of every receptive field (eye movements)."""

from __future__ import annotations

import torch
from torch import nn


class Shifter(nn.Module):
    """A small MLP from pupil centre (B, 2) to a shift (B, 2) in readout coordinates ([-1, 1]).

    Parameters
    ----------
    hidden : units per hidden layer.
    layers : number of linear layers (>= 1); tanh between and after them.
    """

    def __init__(self, hidden: int = 5, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"shifter layers = {layers} (expected at least 1)")
        sizes = [2] + [hidden] * (layers - 1) + [2]
        modules = []
        for i in range(layers):
            modules += [nn.Linear(sizes[i], sizes[i + 1]), nn.Tanh()]
        self.mlp = nn.Sequential(*modules)
        # starts with no shift at all
        nn.init.zeros_(self.mlp[-2].weight)
        nn.init.zeros_(self.mlp[-2].bias)

    def forward(self, pupil_center: torch.Tensor) -> torch.Tensor:
        if pupil_center.ndim != 2 or pupil_center.shape[1] != 2:
            raise ValueError(f"pupil_center has shape {tuple(pupil_center.shape)} (expected (batch, 2))")
        return self.mlp(pupil_center)
