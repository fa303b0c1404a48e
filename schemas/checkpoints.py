"""Checkpoints of trained models in training, kept in the ``models`` object store by the job's key.

A ``TrainedModel`` job saves its training state every ``checkpoint_every()`` epochs to
``checkpoints/<schema>/<table>/<key hash>/epoch_<k>.pt`` in the ``models`` store (a folder for
the default file store; the same paths on S3/MinIO). A worker that takes the job again after
preemption, a SIGKILL or a lost machine resumes after epoch ``k`` instead of starting again;
the checkpoint is removed once the trained model is inserted. The folder is outside the
schema's own section of the store, so ``dj.gc`` never collects the checkpoint of a running
job; ``stale()`` lists checkpoints whose model is already trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePosixPath
from typing import Any

import datajoint as dj
from datajoint.storage import get_storage_backend

from pipeline.sysid.checkpoints import EpochFiles

STORE = "models"
# epochs between checkpoints unless PIPELINE_CHECKPOINT_EVERY says otherwise
DEFAULT_EVERY = 1


class StoreCheckpoint(EpochFiles):
    """Checkpoints in a folder of a DataJoint object store (file, S3, ...)."""

    def __init__(self, backend, path: str, every: int = 1, fingerprint: str = ""):
        super().__init__(every, fingerprint)
        self.backend = backend
        self.path = path

    def _names(self) -> list[str]:
        full = self.backend._full_path(self.path)
        if not self.backend.fs.exists(full):
            return []
        return [PurePosixPath(p).name for p in self.backend.fs.ls(full, detail=False)]

    def _write(self, name: str, data: bytes) -> None:
        # put_buffer writes a temporary file and renames it: a killed writer leaves no torn checkpoint
        self.backend.put_buffer(data, f"{self.path}/{name}")

    def _read(self, name: str) -> bytes:
        return self.backend.get_buffer(f"{self.path}/{name}")

    def _delete(self, name: str) -> None:
        self.backend.remove(f"{self.path}/{name}")

    def remove(self) -> int:
        """Remove every checkpoint and the job's folder; return how many checkpoints there were."""
        count = super().remove()
        full = self.backend._full_path(self.path)
        if self.backend.fs.exists(full):  # a file store's folder (object stores have none)
            self.backend.fs.rm(full, recursive=True)
        return count


def key_hash(key: dict[str, Any]) -> str:
    """32 hex digits identifying a job's primary key (values as text, attributes sorted)."""
    text = json.dumps({k: str(v) for k, v in key.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def checkpoint_every() -> int:
    """Epochs between checkpoints: ``PIPELINE_CHECKPOINT_EVERY`` or 1."""
    text = os.environ.get("PIPELINE_CHECKPOINT_EVERY", str(DEFAULT_EVERY))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"PIPELINE_CHECKPOINT_EVERY = {text!r} (expected a whole number of epochs)") from None


def folder(table: type[dj.Table] | dj.Table, key: dict[str, Any]) -> str:
    """The store path of the checkpoints of ``table``'s job at ``key`` (its primary key only)."""
    primary = {k: key[k] for k in table.primary_key}
    return f"checkpoints/{table.database}/{table.table_name.strip('_')}/{key_hash(primary)}"


def for_job(table: type[dj.Table] | dj.Table, key: dict[str, Any], every: int | None = None) -> StoreCheckpoint:
    """The checkpoints of ``table``'s job at ``key`` in the ``models`` store."""
    backend = get_storage_backend(dj.config.get_store_spec(STORE))
    path = folder(table, key)
    return StoreCheckpoint(backend, path, every or checkpoint_every(), fingerprint=path)


def stale(table: type[dj.Table] | dj.Table) -> list[str]:
    """Checkpoint folders of ``table`` whose job's row exists (a crash between the insert and the removal)."""
    backend = get_storage_backend(dj.config.get_store_spec(STORE))
    root = f"checkpoints/{table.database}/{table.table_name.strip('_')}"
    done = {folder(table, key) for key in table.keys()}
    full = backend._full_path(root)
    if not backend.fs.exists(full):
        return []
    present = {f"{root}/{PurePosixPath(p).name}" for p in backend.fs.ls(full, detail=False)}
    return sorted(present & done)


def remove_stale(table: type[dj.Table] | dj.Table) -> int:
    """Remove the checkpoints of ``table``'s jobs whose rows exist; return how many folders were removed."""
    backend = get_storage_backend(dj.config.get_store_spec(STORE))
    paths = stale(table)
    for path in paths:
        StoreCheckpoint(backend, path).remove()
    return len(paths)
