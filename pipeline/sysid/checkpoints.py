"""Training checkpoints: everything a trainer needs to go on after preemption exactly as if never stopped.

A checkpoint taken after epoch ``k`` holds the model and optimizer state, the trainer's
early-stopping state and history, and every random number generator a later epoch draws from
(Python, numpy, torch on the CPU and every GPU, and each data loader's own shuffling
generator). A trainer that resumes from it runs epochs ``k + 1, ...`` only, and ends with the
same weights, score and history (bar wall-clock fields) as one that never stopped.

Where checkpoints live is the caller's choice: ``FolderCheckpoint`` (a local folder) here,
``schemas.checkpoints.StoreCheckpoint`` (the ``models`` object store) for trained models.
Each checkpoint is one file ``epoch_<k>.pt``, written completely before the older ones are
removed, so a process killed while writing leaves the previous checkpoint usable.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"epoch_(\d{6})\.pt")


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the run asked to resume from it."""


class EpochFiles:
    """Checkpoints as files ``epoch_<k>.pt`` in one place; subclasses say where and how files are kept.

    Parameters
    ----------
    every
        Save after every ``every``-th epoch (1: after each). Not part of any config: it
        changes no result, only how much work a preemption costs.
    fingerprint
        What the run is (e.g. a hash of its key and configs). ``load`` refuses a checkpoint
        written under another fingerprint instead of resuming someone else's training.
    """

    def __init__(self, every: int = 1, fingerprint: str = ""):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"checkpoint every = {every!r} (expected an int >= 1 epochs)")
        self.every = every
        self.fingerprint = fingerprint

    # -- storage: overridden by subclasses ----------------------------------------------------

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def _read(self, name: str) -> bytes:
        raise NotImplementedError

    def _delete(self, name: str) -> None:
        raise NotImplementedError

    # -- the protocol a trainer uses ------------------------------------------------------------

    def epochs(self) -> list[int]:
        """Epochs of the checkpoints kept, ascending."""
        return sorted(int(m.group(1)) for m in map(_NAME.fullmatch, self._names()) if m)

    def due(self, epoch: int) -> bool:
        """Whether the state after ``epoch`` is to be saved."""
        return epoch >= 1 and epoch % self.every == 0

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Keep ``state`` (taken after ``epoch``) and then drop every older checkpoint."""
        buffer = io.BytesIO()
        torch.save({"epoch": int(epoch), "fingerprint": self.fingerprint, "state": state}, buffer)
        name = f"epoch_{int(epoch):06d}.pt"
        self._write(name, buffer.getvalue())
        for old in self.epochs():
            if old != epoch:
                self._delete(f"epoch_{old:06d}.pt")

    def load(self) -> tuple[int, dict[str, Any]] | None:
        """(epoch, state) of the latest checkpoint, or None when there is none.

        Raises
        ------
        CheckpointError
            If the checkpoint was written under another fingerprint.
        """
        epochs = self.epochs()
        if not epochs:
            return None
        data = self._read(f"epoch_{epochs[-1]:06d}.pt")
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if saved["fingerprint"] != self.fingerprint:
            raise CheckpointError(
                f"checkpoint of epoch {saved['epoch']} was written for run {saved['fingerprint']!r} "
                f"(expected {self.fingerprint!r}); remove it to train from scratch"
            )
        return int(saved["epoch"]), saved["state"]

    def remove(self) -> int:
        """Remove every checkpoint (after the result is safely stored); return how many."""
        epochs = self.epochs()
        for epoch in epochs:
            self._delete(f"epoch_{epoch:06d}.pt")
        return len(epochs)


class FolderCheckpoint(EpochFiles):
    """Checkpoints in a local folder (created on the first save)."""

    def __init__(self, folder: str | os.PathLike, every: int = 1, fingerprint: str = ""):
        super().__init__(every, fingerprint)
        self.folder = Path(folder)

    def _names(self) -> list[str]:
        return [p.name for p in self.folder.glob("epoch_*.pt")] if self.folder.is_dir() else []

    def _write(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, self.folder / name)  # atomic: a reader sees all of it or nothing

    def _read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def _delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- #
# random number generators
# ------------------------------------------------------------------------------------------- #


def rng_states(dataloaders: dict | None = None) -> dict[str, Any]:
    """The state of every generator training draws from, as tensors and plain values.

    Parameters
    ----------
    dataloaders
        ``{tier: {data_key: DataLoader}}``; the ``generator`` of each loader that has one
        (the shuffling order of the train tier) is included.
    """
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np.asarray(legacy["state"]["key"], dtype=np.int64)),
            "pos": int(legacy["state"]["pos"]),
            "has_gauss": int(legacy["has_gauss"]),
            "gauss": float(legacy["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "loaders": {
            tier: {key: loader.generator.get_state() for key, loader in loaders.items() if loader.generator is not None}
            for tier, loaders in (dataloaders or {}).items()
        },
    }


def restore_rng_states(states: dict[str, Any], dataloaders: dict | None = None) -> None:
    """Set every generator back to ``states`` (from ``rng_states``).

    Raises
    ------
    CheckpointError
        If a loader generator of ``states`` has no loader in ``dataloaders``.
    """
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for tier, generators in states["loaders"].items():
        for key, state in generators.items():
            loader = (dataloaders or {}).get(tier, {}).get(key)
            if loader is None or loader.generator is None:
                raise CheckpointError(
                    f"checkpoint has a shuffling generator for {tier}/{key} (expected a loader with a generator there)"
                )
            loader.generator.set_state(state)


# ------------------------------------------------------------------------------------------- #
# trainer state
# ------------------------------------------------------------------------------------------- #


def cpu_state(state_dict: dict) -> dict:
    """A copy of a model or optimizer state dict with every tensor on the CPU."""
    return {
        k: cpu_state(v) if isinstance(v, dict) else v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
        for k, v in state_dict.items()
    }


def trainer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataloaders: dict, progress: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint holds: model, optimizer, generators and the trainer's own ``progress``.

    ``progress`` is the trainer's loop state (best score and weights, epochs waited, history,
    ...): plain values and state dicts.
    """
    return {
        "model": cpu_state(model.state_dict()),
        "optimizer": cpu_state(optimizer.state_dict()),
        "rng": rng_states(dataloaders),
        "progress": progress,
    }


def resume(
    checkpoint: EpochFiles | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataloaders: dict
) -> tuple[int, dict[str, Any]] | None:
    """Load the latest checkpoint into ``model``, ``optimizer`` and the generators.

    Returns
    -------
    (epoch, the trainer's ``progress``), or None when there is nothing to resume from.
    """
    if checkpoint is None:
        return None
    loaded = checkpoint.load()
    if loaded is None:
        return None
    epoch, state = loaded
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
    optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
    restore_rng_states(state["rng"], dataloaders)
    return epoch, state["progress"]
