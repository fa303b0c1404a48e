"""Fit, rebuild and score a model from its three builders and a seed (nnfabrik's contract).

``fit`` is what a trained model's row is computed with; ``rebuild`` + ``evaluate`` is what
its scores are computed with, and what ``reproduce`` runs again from the database key.
"""

from __future__ import annotations

import importlib.metadata
import io
import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.device import choose_device

from pipeline import identity

# packages whose versions every trained model records
PACKAGES = ("v1-pipeline", "torch", "numpy", "scipy", "datajoint", "scikit-image")


@dataclass
class Fit:
    """A trained model: trainer score and output, CPU weights, provenance."""

    score: float
    output: dict
    state_dict: dict
    provenance: dict = field(default_factory=dict)


def dataset_config_with_paths(config: dict[str, Any], paths: list[str], data_keys: list[str]) -> dict[str, Any]:
    """The dataset builder's config with the dataset folders filled in.

    A stored dataset config never names folders (the dataset row does); one that does is an
    error rather than silently overridden.
    """
    for name in ("paths", "data_keys"):
        if config.get(name) is not None:
            raise identity.ConfigError(
                f"dataset config sets {name} = {config[name]!r} (expected None: the Dataset row gives the folder "
                f"and data key)"
            )
    return {**config, "paths": [str(p) for p in paths], "data_keys": list(data_keys)}


def build(
    dataset_fn: Callable,
    dataset_config: dict,
    model_fn: Callable,
    model_config: dict,
    seed: int,
) -> tuple[torch.nn.Module, dict]:
    """Data loaders and an untrained model: ``model_fn(dataset_fn(seed, **c), seed, **c)``."""
    dataloaders = dataset_fn(int(seed), **dataset_config)
    model = model_fn(dataloaders, int(seed), **model_config)
    return model, dataloaders


def fit(
    dataset_fn: Callable,
    dataset_config: dict,
    model_fn: Callable,
    model_config: dict,
    trainer_fn: Callable,
    trainer_config: dict,
    seed: int,
    checkpoint: Any = None,
) -> Fit:
    """Build data and model, train, and return the result with its provenance.

    The trainer picks the device (CUDA when there is one); the weights come back on the CPU.
    A trainer's ``TrainingDiverged`` (NaN loss) propagates unchanged. ``checkpoint`` (a
    ``pipeline.sysid.checkpoints.EpochFiles``) is handed to a trainer that takes one, so that
    it saves its state as it goes and resumes from the latest checkpoint; a trainer without a
    ``checkpoint`` parameter trains from scratch.
    """
    started = time.perf_counter()
    model, dataloaders = build(dataset_fn, dataset_config, model_fn, model_config, seed)
    taken = _parameters(trainer_fn)
    extra = {"progress": False} if "progress" in taken else {}
    if checkpoint is not None and "checkpoint" in taken:
        extra["checkpoint"] = checkpoint
    result = trainer_fn(model, dataloaders, int(seed), **extra, **trainer_config)
    state = {k: v.detach().to("cpu").clone() for k, v in result.state_dict.items()}
    if not np.isfinite(result.score):
        raise ValueError(f"trainer returned score {result.score} (expected a finite validation correlation)")
    return Fit(
        score=float(result.score),
        output=identity.plain(_jsonable(result.output)),
        state_dict=state,
        provenance=provenance(int(seed), time.perf_counter() - started),
    )


def rebuild(
    dataset_fn: Callable,
    dataset_config: dict,
    model_fn: Callable,
    model_config: dict,
    seed: int,
    weights: bytes,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Data loaders and the trained model, its stored weights loaded onto ``device``.

    ``device`` defaults to CUDA when there is one, else the CPU; weights saved anywhere load
    anywhere (``map_location``).
    """
    device = choose_device(device)
    model, dataloaders = build(dataset_fn, dataset_config, model_fn, model_config, seed)
    model.load_state_dict(load_state_dict(weights, device))
    model.to(device).eval()
    return model, dataloaders


def evaluate(model: torch.nn.Module, dataloaders: dict, tier: str = "test") -> dict[str, dict]:
    """The three scores of every data key's ``tier`` (``metrics.test_scores``) by data key."""
    from pipeline.sysid import metrics

    loaders = dataloaders.get(tier) or {}
    if not loaders:
        raise ValueError(f"dataloaders have no {tier!r} tier (expected a tier of repeated test images)")
    out = {}
    for data_key, loader in loaders.items():
        responses, predictions, image_ids = metrics.predict(model, loader, data_key)
        scores = metrics.test_scores(responses, predictions, image_ids)
        scores["unit_ids"] = np.asarray(loader.dataset.unit_ids, dtype=np.int64)
        out[data_key] = scores
    return out


def state_dict_bytes(state_dict: dict) -> bytes:
    """A state dict serialized (``torch.save``), every tensor moved to the CPU first."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def load_state_dict(data: bytes, device: str | torch.device = "cpu") -> dict:
    """The state dict of ``state_dict_bytes`` output, on ``device`` (tensors only, no pickle code)."""
    return torch.load(io.BytesIO(data), map_location=torch.device(device), weights_only=True)


def provenance(seed: int, wall_time: float) -> dict[str, Any]:
    """Where and with what a model was trained: versions, commit, device, time, seed."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "seed": int(seed),
        "wall_time": float(wall_time),
        "packages": versions,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "host": socket.gethostname(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with ``-dirty``), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def _parameters(fn: Callable) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN; MySQL's json rejects it
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _jsonable(value.item())
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
