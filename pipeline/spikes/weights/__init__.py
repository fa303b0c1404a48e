"""Spike-inference weights shipped with the package, so that a lab without ground truth of its
own gets the supervised method without training.

``default.pt`` is a ``SpikeModel`` trained on the public ground truth of the spikefinder
challenge and the CASCADE database. It is written from the database by one command,
``pipeline spikes-pretrained --training-set NAME`` (see ``schemas.spikes.export_pretrained``),
which trains the ``SpikeModel`` of the ``supervised`` method with the default configuration
on that training set (or reuses the trained row) and saves it here with its provenance.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..supervised import SpikeModel

FOLDER = Path(__file__).resolve().parent


def path_of(name: str) -> Path:
    """The file of the pretrained weights called ``name``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"pretrained weights {name!r} (expected a plain name such as 'default')")
    return FOLDER / f"{name}.pt"


def save(model: SpikeModel, path: str | Path, provenance: dict) -> Path:
    """Write ``model`` and its ``provenance`` (training set, recordings, versions) to ``path``."""
    path = Path(path)
    payload = {
        "state_dict": model.state_dict(),
        "config": dict(model.config),
        "score": float(model.score),
        "provenance": dict(provenance),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    path.chmod(0o644)  # package data: readable by everyone who installs the package
    return path


def read(path: str | Path) -> tuple[SpikeModel, dict]:
    """The ``SpikeModel`` saved at ``path`` by :func:`save`, and its provenance."""
    payload = torch.load(io.BytesIO(Path(path).read_bytes()), map_location="cpu", weights_only=True)
    model = SpikeModel.from_state_dict(payload["state_dict"], payload["config"], payload["score"])
    return model, payload["provenance"]


def load(name: str = "default") -> tuple[SpikeModel, dict]:
    """The shipped ``SpikeModel`` called ``name`` and its provenance."""
    path = path_of(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained spike weights {name!r} not found at {path} (expected a file written by "
            f"'pipeline spikes-pretrained --training-set NAME --name {name}')"
        )
    return read(path)
