"""Tiny FileTree datasets and a throwaway schema prefix for the modelling tests (sweeps, checkpoints, ensembles)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import datajoint as dj
import numpy as np

import schemas
from pipeline.sysid import data

# a model and a trainer that train in well under a second on the tiny dataset
TINY_MODEL = {"hidden_channels": 2, "layers": 1, "input_kernel": 3}
TINY_DATA = {"batch_size": 20}


def tiny_filetree(path: Path, seed: int = 0, n_units: int = 6, size: int = 10) -> Path:
    """A FileTree of ``n_units`` rectified linear neurons viewing white noise (milliseconds to build).

    40 images shown once (train and validation) and 4 test images shown 3 times each.
    """
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((n_units, size * size)).astype(np.float32) / size
    images = {i: rng.standard_normal((size, size)).astype(np.float32) for i in range(44)}
    image_ids = np.array(list(range(40)) + [40, 41, 42, 43] * 3, dtype=np.int64)
    stack = np.stack([images[int(i)].ravel() for i in image_ids])
    responses = rng.poisson(np.maximum(stack @ filters.T, 0) + 0.3).astype(np.float32)
    tree = data.trials_filetree(
        images,
        responses,
        image_ids,
        np.arange(len(image_ids)),
        np.arange(1, n_units + 1),
        seed=seed,
        behavior=rng.standard_normal((len(image_ids), 3)).astype(np.float32),
        pupil_center=rng.standard_normal((len(image_ids), 2)).astype(np.float32),
    )
    return data.write_filetree(path, tree)


@dataclasses.dataclass
class Prefix:
    """A fresh, activated schema prefix and the environment its worker subprocesses need."""

    prefix: str
    env: dict


def fresh_prefix(db):
    """Activate every stage under a new prefix (a database of its own); yield it; drop it; reactivate ``db``.

    Worker subprocesses populate whatever their prefix holds: a prefix of their own keeps the
    rows other tests left in the session's prefix out of their queues.
    """
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix, connection=db.connection)
    try:
        yield Prefix(prefix, {**db.env, "PIPELINE_PREFIX": prefix})
    finally:
        with dj.config.override(safemode=False):
            schemas.drop_all(prefix, db.connection)
        schemas.activate(db.prefix, connection=db.connection)
