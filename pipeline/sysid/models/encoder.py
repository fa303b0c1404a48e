"""The composed model: one shared core, one readout (and shifter, modulator) per dataset."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


# instance attributes every nn.Module sets in __init__ ("training", "_parameters", ...)
_MODULE_ATTRIBUTES = frozenset(vars(nn.Module()))


class PerDataset(nn.Module):
    """Modules keyed by data_key, which may be any non-empty string.

    ``nn.ModuleDict`` refuses keys with a dot and keys that name one of its attributes
    (``pop``, ``keys``, ``train``, ...), and data keys are folder names. A key that is not
    safe as an attribute is stored as ``x_<hex of its UTF-8 bytes>``; the mapping is a pure
    function of the key, so a state dict saved under one model loads into another built from
    the same data keys.
    """

    _ESCAPE = "x_"

    def __init__(self, modules: dict):
        super().__init__()
        self._keys: list[str] = []
        for key, module in modules.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"data_key {key!r} (expected a non-empty string)")
            self.add_module(self.module_name(key), module)
            self._keys.append(key)

    @classmethod
    def module_name(cls, key: str) -> str:
        """The attribute name ``key``'s module is stored under (and its state-dict prefix)."""
        reserved = key.startswith(("_", cls._ESCAPE)) or hasattr(cls, key) or key in _MODULE_ATTRIBUTES
        if reserved or "." in key:
            return cls._ESCAPE + key.encode("utf-8").hex()
        return key

    def __getitem__(self, key: str) -> nn.Module:
        if key not in self._keys:
            raise KeyError(f"data_key {key!r} (expected one of {self._keys})")
        return getattr(self, self.module_name(key))

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Encoder(nn.Module):
    """rates = modulator(elu(readout(core(images), shift=shifter(pupil))) + 1, behavior).

    Parameters
    ----------
    core : module (B, C_in, H, W) -> (B, C, H', W') with ``regularizer()``.
    readouts : data_key (any non-empty string, see ``PerDataset``) -> readout module (maps[, shift] -> (B, N_key)) with ``regularizer()``.
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
        self.readout = PerDataset(readouts)
        self.shifter = PerDataset(shifters) if shifters else None
        self.modulator = PerDataset(modulators) if modulators else None
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
                raise ValueError(
                    f"data_key {key!r}: this model has a behaviour modulator and needs behavior (got None)"
                )
            rates = self.modulator[key](rates, behavior)
        return rates

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        """Penalty of the core plus that of the readout of ``data_key`` (scalar, >= 0)."""
        return self.core.regularizer() + self.readout[self._key(data_key)].regularizer()
