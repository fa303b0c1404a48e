"""Modulator: behaviour (running, pupil) -> a multiplicative gain per neuron."""

from __future__ import annotations

import torch
from torch import nn


class BehaviorModulator(nn.Module):
    """gain = exp(MLP(behavior)), (B, behavior_dims) -> (B, n_neurons); 1 at initialization.

    Parameters
    ----------
    n_neurons : neurons of the dataset it modulates.
    behavior_dims : behaviour variables per trial (3 in the Sensorium format: pupil
        dilation, its derivative, running speed).
    hidden : hidden units.
    """

    def __init__(self, n_neurons: int, behavior_dims: int = 3, hidden: int = 10):
        super().__init__()
        self.behavior_dims = behavior_dims
        self.mlp = nn.Sequential(nn.Linear(behavior_dims, hidden), nn.ELU(), nn.Linear(hidden, n_neurons))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, rates: torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
        """(B, N) rates times the gain of (B, behavior_dims) behaviour."""
        if behavior.ndim != 2 or behavior.shape[1] != self.behavior_dims:
            raise ValueError(f"behavior has shape {tuple(behavior.shape)} (expected (batch, {self.behavior_dims}))")
        return rates * torch.exp(self.mlp(behavior).clamp(max=10.0))
