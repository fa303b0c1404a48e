"""The composed model: one shared core, one readout (and shifter, modulator) per dataset."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Encoder(nn.Module):
    """rates = modulator(elu(readout(core(images), shift=shifter(pupil))) + 1, behavior).

    Parameters
    ----------
    core : module (B, C_in, H, W) -> (B, C, H', W') with ``regularizer()``.
    readouts : data_key -> readout module (maps[, shift] -> (B, N_key)) with ``regularizer()``.
    shifters : data_key -> Shifter, or None.
    modulators : data_key -> BehaviorModulator, or None.

    ``forward(images, data_key=None, behavior=None, pupil_center=None)`` returns (B, N_key)
    non-negative rates; ``data_key`` may be left out when there is one dataset.
    """

    def __init__(self, core: nn.Module, readouts: dict, shifters: dict | None = None, modulators: dict | None = None):
        super().__init__()
        if not readouts:
            raise ValueError("an Encoder needs at least one readout (got none)")
        self.core = core
        self.readout = nn.ModuleDict(readouts)
        self.shifter = nn.ModuleDict(shifters) if shifters else None
        self.modulator = nn.ModuleDict(modulators) if modulators else None
        for name, extra in (("shifter", shifters), ("modulator", modulators)):
            if extra and set(extra) != set(readouts):
                raise ValueError(f"{name} data keys {sorted(extra)} differ from the readouts' {sorted(readouts)}")

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout)

    def _key(self, data_key: str | None) -> str:
        if data_key is None:
            if len(self.readout) != 1:
                raise ValueError(f"data_key is needed: this model has readouts for {self.data_keys}")
            return self.data_keys[0]
        if data_key not in self.readout:
            raise KeyError(f"data_key {data_key!r} has no readout (expected one of {self.data_keys})")
        return data_key

    def forward(
        self,
        images: torch.Tensor,
        data_key: str | None = None,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        key = self._key(data_key)
        shift = None
        if self.shifter is not None:
            if pupil_center is None:
                raise ValueError(f"data_key {key!r}: this model has a shifter and needs pupil_center (got None)")
            shift = self.shifter[key](pupil_center)
        x = self.readout[key](self.core(images), shift=shift)
        rates = F.elu(x) + 1.0
        if self.modulator is not None:
            if behavior is None:
                raise ValueError(f"data_key {key!r}: this model has a behaviour modulator and needs behavior (got None)")
            rates = self.modulator[key](rates, behavior)
        return rates

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        """Penalty of the core plus that of the readout of ``data_key`` (scalar, >= 0)."""
        return self.core.regularizer() + self.readout[self._key(data_key)].regularizer()
