"""The pipeline's stored files: local copies, raw-file fingerprints, file modes, garbage collection.

- ``local_path(ref)``: a local path of a stored file or folder. A file store gives its own
  path; a remote store (S3/MinIO, ...) gives one cached copy per object under the pipeline
  home, downloaded once and re-downloaded only when the remote object changed.
- ``file_fingerprint(path)``: size and digest that ``ScanInfo`` records of a raw file, so that
  a file replaced or cut after ingest is detected instead of read as if it were the same.
- ``apply_permissions()``: files written by this process are private (0600, folders 0700) by
  default, like the embedded database; ``PIPELINE_STORE_PERMISSIONS`` relaxes it.
- ``collect_garbage()``: removes files of every stage's schema, in every store, that no row
  references and that are older than a grace period (and than every reserved job).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import datajoint as dj
from datajoint.hash_registry import delete_path

# --------------------------------------------------------------------------------------- #
# file modes
# --------------------------------------------------------------------------------------- #

PERMISSIONS_ENV = "PIPELINE_STORE_PERMISSIONS"
# mode name -> (umask, folder mode); files get 0666 & ~umask, folders 0777 & ~umask
PERMISSIONS = {
    "private": (0o077, 0o700),  # the owner only, like the embedded database's data directory
    "group": (0o027, 0o750),  # a lab group on a shared file system reads, only the owner writes
    "shared": (0o022, 0o755),  # everyone reads
}


def store_permissions() -> str:
    """The file-mode policy of the stores: ``$PIPELINE_STORE_PERMISSIONS``, default ``"private"``.

    Raises
    ------
    ValueError
        If the variable names no policy of ``PERMISSIONS``.
    """
    name = os.environ.get(PERMISSIONS_ENV, "").strip().lower() or "private"
    if name not in PERMISSIONS:
        raise ValueError(
            f"{PERMISSIONS_ENV}={os.environ[PERMISSIONS_ENV]!r} is not a store permission policy "
            f"(expected one of: {', '.join(PERMISSIONS)})"
        )
    return name


def apply_permissions(own_folders: list[Path]) -> str:
    """Make files this process writes follow the store policy; return the policy's name.

    DataJoint writes store files itself (``open``, ``shutil.copyfile``), so the process umask
    is the one place that governs every file of every store, the raw files the demo writes
    and the cached copies alike. ``own_folders`` (the default stores in the pipeline home)
    are also chmod-ed, which closes files written before the policy; folders configured by
    the user may be a lab's shared tree and are never chmod-ed.
    """
    name = store_permissions()
    umask, folder_mode = PERMISSIONS[name]
    os.umask(umask)
    for folder in own_folders:
        folder.chmod(folder_mode)
    return name


def follow_permissions(ref) -> None:
    """Give the files and folders of a stored folder object the modes of the store policy.

    DataJoint copies a folder into a file store with ``shutil.copy2``/``copytree``, which keep
    the source's modes (a 0644 FileTree stays 0644) instead of the umask's; call this after
    inserting one. Objects in other stores have no modes and are left alone.
    """
    backend = ref._backend
    if backend.protocol != "file" or not ref.is_dir:
        return
    umask, folder_mode = PERMISSIONS[store_permissions()]
    for folder, _dirs, files in os.walk(backend._full_path(ref.path)):
        os.chmod(folder, folder_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)


# --------------------------------------------------------------------------------------- #
# raw-file fingerprints
# --------------------------------------------------------------------------------------- #

FINGERPRINT_WINDOW = 1 << 20  # bytes read at the start, middle and end of a file


def file_fingerprint(path: str | os.PathLike) -> tuple[int, str]:
    """``(size in bytes, digest)`` of a file: BLAKE2b-128 of its size and three 1 MiB windows.

    The windows are the first, middle and last MiB. Reading 3 MiB keeps this cheap enough to
    check on every job that reads a scan (movies are 100 MB to tens of GB; a full hash would
    read each movie once more per job). What it must catch, a file replaced by another
    recording or simulation, cut short or appended to, changes the size, the header or the
    frames at the ends; an edit in place of a few bytes in the middle can escape it.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as file:
        for start in sorted({0, max(0, size // 2 - FINGERPRINT_WINDOW // 2), max(0, size - FINGERPRINT_WINDOW)}):
            file.seek(start)
            digest.update(file.read(FINGERPRINT_WINDOW))
    return size, digest.hexdigest()


def database_folder(schema: dj.Schema) -> str:
    """A folder name unique to a schema on its server: ``<schema>-<8 hex of server address>``.

    Files that code writes into a shared store for one database (the demo's simulated raw
    movie) go under it, so that databases with other servers or prefixes never collide.
    """
    info = schema.connection.conn_info
    address = f"{info['host']}:{info['port']}/{schema.database}"
    return f"{schema.database}-{hashlib.sha256(address.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------- #
# local copies of stored objects
# --------------------------------------------------------------------------------------- #


def cache_root() -> Path:
    """Where copies of remote objects are cached: ``<pipeline home>/cache/stores``."""
    from . import database

    return database.home() / "cache" / "stores"


def local_path(ref) -> Path:
    """A local path of a stored file or folder (a DataJoint ``ObjectRef``).

    A file store gives the object's own path. Any other store gives one cached copy per
    object, the same path on every call: DataJoint calls ``make_fetch`` twice and compares the
    results, and every job of a scan reads the same movie. The copy is downloaded when absent
    or when the remote object's size or ETag differs from the copy's; it is downloaded aside
    and renamed into place, so that a killed download is never taken for a copy.

    Raises
    ------
    FileNotFoundError
        Naming the object, if it is not in its store.
    """
    backend = ref._backend
    if backend.protocol == "file":
        return Path(backend._full_path(ref.path))
    url = backend.get_url(ref.path)
    entry = cache_root() / hashlib.sha256(url.encode()).hexdigest()[:24]
    target = entry / (ref.path.rstrip("/").rsplit("/", 1)[-1] or "object")
    stamp = _remote_stamp(backend, ref)
    stamp_file = entry / "stamp.json"
    if target.exists() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    _download(ref, entry, target)
    # written aside and renamed: a stamp is whole or absent, never half-written
    partial = entry / f".stamp-{os.getpid()}-{time.monotonic_ns()}"
    partial.write_text(json.dumps(stamp))
    os.replace(partial, stamp_file)
    return target


def _remote_stamp(backend, ref) -> dict[str, Any]:
    """What identifies the current version of a remote object: its url, size and ETag."""
    full = backend._full_path(ref.path)
    backend.fs.invalidate_cache(full)  # s3fs caches listings: a replaced file must be seen
    if not backend.fs.exists(full):
        raise FileNotFoundError(f"{ref.path!r} is not in store {ref.store!r} (expected at {backend.get_url(ref.path)})")
    if ref.is_dir:
        # a folder object lives at a path with a unique token and never changes
        return {"url": backend.get_url(ref.path), "is_dir": True}
    info = backend.fs.info(full)
    return {"url": backend.get_url(ref.path), "size": int(info.get("size") or 0), "etag": str(info.get("ETag", ""))}


def _download(ref, entry: Path, target: Path) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "stamp.json").unlink(missing_ok=True)
    staging = entry / f".partial-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if ref.is_dir:
            # fsspec copies a folder *into* an existing destination (which DataJoint creates)
            ref.download(staging)
            copy = staging / target.name if (staging / target.name).is_dir() else staging
        else:
            copy = ref.download(staging / target.name)
        if not target.is_dir():  # a folder object never changes: a copy in place is complete
            os.replace(copy, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------- #
# garbage collection
# --------------------------------------------------------------------------------------- #

GRACE_ENV = "PIPELINE_GC_GRACE"
DEFAULT_GRACE = 24 * 3600.0  # seconds: longer than any single upload of a row's files
RESERVATION_MARGIN = 300.0  # seconds: clock differences between the database and the stores


def gc_grace() -> float:
    """Seconds an unreferenced file is kept: ``$PIPELINE_GC_GRACE``, default one day."""
    value = os.environ.get(GRACE_ENV, "").strip()
    if not value:
        return DEFAULT_GRACE
    try:
        grace = float(value)
    except ValueError:
        grace = -1.0
    if not grace >= 0:
        raise ValueError(f"{GRACE_ENV}={value!r} is not a grace period (expected seconds >= 0)")
    return grace


def collect_garbage(
    *, grace: float | None = None, dry_run: bool = False, stores: tuple[str, ...] | None = None
) -> dict[str, dict]:
    """Remove stored files that no row of any stage references, once they are old enough.

    An insert writes its files first and its row after (DataJoint), and a killed insert or
    write leaves files (``.saving`` / ``.copying`` temporaries among them) that no row will
    ever reference. Such files are removed only when older than ``grace`` seconds *and* older
    than the oldest job now reserved (plus a margin): a file younger than that may belong to
    an insert in progress. Deleted rows' files (``Denoised`` factors in ``movies``, weights in
    ``models``, datasets in ``raw``) go the same way.

    Parameters
    ----------
    grace
        Seconds; default ``gc_grace()`` (``$PIPELINE_GC_GRACE``, else one day).
    dry_run
        Report without deleting.
    stores
        Store names; default every store of the pipeline (``raw``, ``movies``, ``models``).

    Returns
    -------
    dict
        Per store: ``orphaned`` (paths no row references), ``deleted`` (paths removed, or that
        would be with ``dry_run``), ``kept`` (orphans kept as too young), ``bytes_freed``,
        ``min_age`` (the age in seconds an orphan needed).
    """
    import schemas

    from . import database

    if schemas.active_prefix() is None:
        raise RuntimeError("collect_garbage: the schemas are not activated (call schemas.activate(prefix) first)")
    min_age = max(gc_grace() if grace is None else float(grace), _reservation_age())
    modules = schemas.stage_modules()
    report = {}
    for store in stores or database.STORES:
        collector = dj.gc.GarbageCollector(*[m.schema for m in modules], store=store)
        report[store] = _collect_store(collector, min_age, dry_run)
    return report


def _reservation_age() -> float:
    """Seconds since the oldest job now reserved was reserved (plus a margin), else 0."""
    import schemas

    oldest = 0.0
    for table in schemas.auto_tables():
        jobs = table().jobs
        if not jobs.is_declared:
            continue
        times = [t for t in jobs.reserved.to_arrays("reserved_time") if t is not None]
        if times:
            now = jobs.connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0]
            # PostgreSQL answers in the session's time zone, aware; the column holds that
            # zone's wall time, naive (as DataJoint's reserve() writes it)
            now = now.replace(tzinfo=None)
            oldest = max(oldest, (now - min(times)).total_seconds())
    return oldest + RESERVATION_MARGIN if oldest else 0.0


def _collect_store(collector: dj.gc.GarbageCollector, min_age: float, dry_run: bool) -> dict:
    scan = collector.collect(dry_run=True)
    if scan["scan_errors"]:
        raise RuntimeError(
            f"store {collector.store!r}: listing failed ({'; '.join(scan['scan_errors'])}); "
            "nothing deleted (expected a complete listing before deleting)"
        )
    backend = collector.backend
    out = {"orphaned": [], "deleted": [], "kept": [], "bytes_freed": 0, "min_age": min_age}
    now = time.time()
    orphans = [(p, "hash") for p in scan["orphaned_hash_paths"]] + [
        (p, "schema") for p in scan["orphaned_schema_paths"]
    ]
    for path, section in orphans:
        out["orphaned"].append(path)
        try:
            info = backend.fs.info(backend._full_path(path))
        except FileNotFoundError:  # renamed or removed since the listing (a finished write)
            continue
        if now - _modified(info) < min_age:
            out["kept"].append(path)
            continue
        if not dry_run:
            removed = (
                collector.delete_schema_path(path)
                if section == "schema"
                else delete_path(path, collector.store, config=collector.config)
            )
            if not removed:
                continue
            out["bytes_freed"] += int(info.get("size") or 0)
        out["deleted"].append(path)
    return out


def _modified(info: dict) -> float:
    """Modification time (seconds since the epoch) from an fsspec ``info()`` of any store."""
    if "mtime" in info:
        return float(info["mtime"])
    for name in ("LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value is not None:
            return value.timestamp() if hasattr(value, "timestamp") else float(value)
    # an unknown store type: treat as new, so that nothing of unknown age is deleted
    return time.time()


def stored_refs(expression, attribute: str) -> list:
    """The stored objects that ``attribute`` of the rows of ``expression`` references (before a delete)."""
    return [row[attribute] for row in expression.to_dicts()] if len(expression) else []


def remove_unreferenced(schema: dj.Schema, refs: list) -> None:
    """Remove the stored objects of ``refs`` that no row of ``schema`` references any more.

    Called after a delete with the refs taken before it: a declined delete keeps its rows, and
    so its files. Folders (FileTree datasets) and files alike.
    """
    by_store: dict[str | None, list] = {}
    for ref in refs:
        by_store.setdefault(ref.store, []).append(ref)
    for store, group in by_store.items():
        collector = dj.gc.GarbageCollector(schema, store=store)
        referenced = collector.schema_references()
        for ref in group:
            if ref.path in referenced:
                continue
            if ref.is_dir:
                ref._backend.remove_folder(ref.path)
            else:
                collector.delete_schema_path(ref.path)
