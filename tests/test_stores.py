"""Stored files on real servers: raw-file identity, remote (S3) copies, garbage collection, file modes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import datajoint as dj
import numpy as np
import pytest

from pipeline.imaging import io
from pipeline.simulation.population import simulate_population
from schemas import database, imaging, stores, sysid
from tests.imaging_helpers import populate_small_scan

POPULATION = {
    "n_neurons": 6,
    "n_train": 20,
    "n_validation": 6,
    "n_test_images": 4,
    "repeats": 2,
    "height": 8,
    "width": 8,
}
DAY = 24 * 3600


def _movie(seed: int, frames: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 5, (frames, 16, 16)).astype(np.float32)


def _register_tiff(relative: str, key: dict, movie: np.ndarray) -> Path:
    """Write ``movie`` as a ScanImage TIFF at ``relative`` in the (local) raw store; insert its Scan."""
    path = imaging.raw_store_location() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_scanimage_tiff(path, movie, 10.0)
    imaging.ensure_session(key)
    imaging.Scan.insert1({**key, "filename": relative})
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    """A small FileTree whose files are world-readable (0644, folders 0755), as a lab's often are."""
    folder = simulate_population(tmp_path_factory.mktemp("stores") / "population", seed=3, **POPULATION)
    for root, _dirs, names in os.walk(folder):
        os.chmod(root, 0o755)
        for name in names:
            os.chmod(os.path.join(root, name), 0o644)
    return folder


# --------------------------------------------------------------------------------------- #
# 12: raw files of different databases never collide; a changed raw file is detected
# --------------------------------------------------------------------------------------- #


def test_simulated_scan_is_written_in_a_folder_of_its_server_and_prefix(db):
    from tests.imaging_helpers import small_experiment

    key = {"animal_id": 9301, "session": 1, "scan_idx": 1}
    imaging.insert_simulated_scan(small_experiment(0), key)
    folder = stores.database_folder(imaging.schema)
    assert (imaging.Scan & key).fetch1("filename").path == f"simulated/{folder}/9301_1_1.tif"
    assert folder.startswith(f"{db.prefix}imaging-") and len(folder) == len(f"{db.prefix}imaging-") + 8
    other = dj.Schema(f"{db.prefix}other", connection=db.connection)
    try:
        assert stores.database_folder(other).startswith(f"{db.prefix}other-")
    finally:
        other.drop(prompt=False)


def test_scaninfo_records_the_raw_file_size_and_digest(db):
    key = {"animal_id": 9302, "session": 1, "scan_idx": 1}
    path = _register_tiff(f"stores_{db.backend}/recorded.tif", key, _movie(0))
    imaging.ScanInfo.populate(key, suppress_errors=False)
    size, digest = (imaging.ScanInfo & key).fetch1("file_size", "file_digest")
    assert size == path.stat().st_size
    assert digest == stores.file_fingerprint(path)[1] and len(digest) == 32


def test_raw_file_replaced_after_scaninfo_fails_the_job_naming_scan_and_file(db):
    key = {"animal_id": 9303, "session": 1, "scan_idx": 1}
    relative = f"stores_{db.backend}/replaced.tif"
    path = _register_tiff(relative, key, _movie(0))
    imaging.ScanInfo.populate(key, suppress_errors=False)
    size, digest = (imaging.ScanInfo & key).fetch1("file_size", "file_digest")
    io.write_scanimage_tiff(path, _movie(1), 10.0)  # another recording of the same shape: same size
    assert path.stat().st_size == size
    imaging.insert_default_params()
    result = imaging.MotionCorrection.populate(key, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    message = (imaging.MotionCorrection().jobs.errors & key).fetch1("error_message")
    new_digest = stores.file_fingerprint(path)[1]
    assert message.startswith(
        f"RawFileChanged: Scan 9303/1/1: raw file '{relative}' changed since ScanInfo read it "
        f"(size {size} bytes, digest {new_digest}; expected {size} bytes, digest {digest})"
    )


def test_raw_file_cut_after_scaninfo_is_reported_with_both_sizes(db):
    key = {"animal_id": 9304, "session": 1, "scan_idx": 1}
    path = _register_tiff(f"stores_{db.backend}/cut.tif", key, _movie(2))
    imaging.ScanInfo.populate(key, suppress_errors=False)
    size = int((imaging.ScanInfo & key).fetch1("file_size"))
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(imaging.RawFileChanged, match=rf"size {size // 2} bytes, .*expected {size} bytes"):
        imaging._scan_file(key)


def test_fingerprint_reads_the_ends_and_the_middle_of_a_large_file(tmp_path):
    """The digest covers size, first, middle and last MiB (documented: not the bytes between)."""
    path = tmp_path / "large.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    size, original = stores.file_fingerprint(path)
    assert size == 8 << 20
    for offset, seen in ((0, True), (4 << 20, True), ((8 << 20) - 1, True), (2 << 20, False)):
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert (stores.file_fingerprint(path)[1] != original) is seen, offset


# --------------------------------------------------------------------------------------- #
# 13: a remote (S3) raw store: one cached copy per file, make_fetch twice gives the same
# --------------------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 server on localhost (moto's server) with a bucket ``lab-raw``: (s3fs, store spec)."""
    server_module = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    spec = {
        "protocol": "s3",
        "endpoint": f"{host}:{port}",
        "bucket": "lab-raw",
        "location": "v1",
        "access_key": "test",
        "secret_key": "test",
        "secure": False,
    }
    fs = s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": f"http://{host}:{port}"})
    fs.makedirs("lab-raw", exist_ok=True)  # moto keeps buckets in-process across server restarts
    yield fs, spec
    server.stop()


@pytest.fixture
def s3_raw_store(db, s3_server):
    """The ``raw`` store on the S3 server for one test; the local one is restored afterwards."""
    fs, spec = s3_server
    before = dict(dj.config.stores)
    dj.config.stores = {**before, "raw": spec}
    try:
        yield fs
    finally:
        dj.config.stores = before


def _upload_tiff(fs, tmp_path: Path, relative: str, movie: np.ndarray) -> None:
    local = tmp_path / "upload.tif"
    io.write_scanimage_tiff(local, movie, 10.0)
    fs.invalidate_cache()
    fs.put_file(str(local), f"lab-raw/v1/{relative}")


def test_scan_in_an_s3_store_populates_from_one_cached_copy(db, s3_raw_store, tmp_path):
    key = {"animal_id": 9310, "session": 1, "scan_idx": 1}
    relative = f"scans/{db.prefix}/remote.tif"
    _upload_tiff(s3_raw_store, tmp_path, relative, _movie(3))
    try:
        imaging.ensure_session(key)
        imaging.Scan.insert1({**key, "filename": relative})
        params = imaging.insert_default_params()
        assert imaging.ScanInfo.populate(key, reserve_jobs=True, suppress_errors=True)["error_list"] == []
        # DataJoint calls make_fetch twice and compares: a fresh download per call failed here
        result = imaging.MotionCorrection.populate({**key, **params["motion"]}, reserve_jobs=True, suppress_errors=True)
        assert result["error_list"] == [] and result["success_count"] == 1
        assert len(imaging.MotionCorrection & key) == 1

        ref = (imaging.Scan & key).fetch1("filename")
        first = stores.local_path(ref)
        assert first.parent.parent == stores.cache_root() and first.name == "remote.tif"
        assert sorted(p.name for p in first.parent.iterdir()) == ["remote.tif", "stamp.json"]
        inode = first.stat().st_ino
        assert stores.local_path(ref) == first and first.stat().st_ino == inode  # not downloaded again

        # the remote object replaced: a new copy is fetched, and it is not the file ScanInfo read
        _upload_tiff(s3_raw_store, tmp_path, relative, _movie(4))
        with pytest.raises(
            imaging.RawFileChanged, match=rf"Scan {key['animal_id']}/1/1: raw file '{relative}' changed"
        ):
            imaging._scan_file(key)
        assert stores.local_path(ref) == first and first.stat().st_ino != inode
    finally:
        with dj.config.override(safemode=False):
            (imaging.Scan & key).delete(prompt=False)


def test_dataset_folder_in_an_s3_store_is_cached_whole(db, s3_raw_store, population):
    dataset_id = f"s3_{db.backend}"
    sysid.import_filetree(population, dataset_id)
    try:
        ref = (sysid.Dataset & {"dataset_id": dataset_id}).fetch1("filetree")
        folder = stores.local_path(ref)
        assert folder.parent.parent == stores.cache_root()
        tiers = np.load(folder / "meta" / "trials" / "tiers.npy")
        assert np.array_equal(tiers, np.load(population / "meta" / "trials" / "tiers.npy"))
        assert stores.local_path(ref) == folder
    finally:
        (sysid.Dataset & {"dataset_id": dataset_id}).delete(prompt=False)


# --------------------------------------------------------------------------------------- #
# 14: garbage collection that is safe while workers run and covers every store
# --------------------------------------------------------------------------------------- #


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _store_root(store: str) -> Path:
    return Path(dj.config.get_store_spec(store)["location"])


@pytest.fixture
def garbage(db, tmp_path):
    """Files no row references: a deleted Denoised row's factors, killed inserts' leftovers."""
    traces_key = populate_small_scan(db, tmp_path, seed=7)
    denoised_key = (imaging.Denoised & traces_key).fetch1("KEY")
    row = (imaging.Denoised & denoised_key).fetch1()
    factors = sorted(row[name].path for name in ("spatial", "temporal", "mean_image", "noise_image"))
    with dj.config.override(safemode=False):
        (imaging.Denoised & denoised_key).delete(prompt=False)
    movies, models = _store_root("movies"), _store_root("models")
    for path in factors:
        _age(movies / path, 2 * DAY)
    section = f"_schema/{db.prefix}sysid/trainedmodel/dataset_id=gone"
    leftovers = {
        "old": f"{section}/weights_OLD12345.pt",
        "saving": f"{section}/weights_TMP12345.pt.saving",
        "young": f"{section}/weights_NEW12345.pt",
    }
    for name, path in leftovers.items():
        (models / path).parent.mkdir(parents=True, exist_ok=True)
        (models / path).write_bytes(b"weights")
        _age(models / path, 0 if name == "young" else 2 * DAY)
    yield {"factors": factors, "leftovers": leftovers, "key": denoised_key}
    for path in leftovers.values():
        (models / path).unlink(missing_ok=True)


def test_garbage_of_every_store_is_reclaimed_and_fresh_files_are_kept(db, garbage):
    report = stores.collect_garbage(grace=DAY)
    movies, models = _store_root("movies"), _store_root("models")
    assert sorted(report["movies"]["deleted"]) == garbage["factors"]
    assert not any((movies / p).exists() for p in garbage["factors"])
    leftovers = garbage["leftovers"]
    assert sorted(report["models"]["deleted"]) == sorted([leftovers["old"], leftovers["saving"]])
    assert report["models"]["kept"] == [leftovers["young"]]
    assert (models / leftovers["young"]).read_bytes() == b"weights"
    assert report["models"]["bytes_freed"] == 2 * len(b"weights")
    assert report["raw"]["deleted"] == []


def test_garbage_younger_than_the_oldest_reserved_job_is_kept(db, garbage):
    """A job reserved 3 h ago may be inserting now: its files may be 3 h old, so keep them."""
    jobs = imaging.Denoised().jobs
    jobs.refresh(garbage["key"])
    assert jobs.reserve(garbage["key"])
    qi = jobs.adapter.quote_identifier
    db.connection.query(
        f"UPDATE {jobs.full_table_name} SET {qi('reserved_time')} = CURRENT_TIMESTAMP - INTERVAL '3' HOUR "
        f"WHERE {qi('animal_id')} = {garbage['key']['animal_id']}"
    )
    movies = _store_root("movies")
    for path in garbage["factors"]:
        _age(movies / path, 2 * 3600)
    try:
        held = stores.collect_garbage(grace=0, stores=("movies",))["movies"]
        assert 3 * 3600 < held["min_age"] < 3 * 3600 + 2 * stores.RESERVATION_MARGIN
        assert held["deleted"] == [] and sorted(held["kept"]) == garbage["factors"]
    finally:
        (jobs & garbage["key"]).delete()
    freed = stores.collect_garbage(grace=0, stores=("movies",))["movies"]
    assert set(garbage["factors"]) <= set(freed["deleted"])
    assert not any((movies / p).exists() for p in garbage["factors"])


def test_grace_setting_is_validated(monkeypatch):
    monkeypatch.setenv(stores.GRACE_ENV, "soon")
    with pytest.raises(ValueError, match=r"PIPELINE_GC_GRACE='soon' is not a grace period \(expected seconds >= 0\)"):
        stores.gc_grace()
    monkeypatch.setenv(stores.GRACE_ENV, "60")
    assert stores.gc_grace() == 60.0


# --------------------------------------------------------------------------------------- #
# 15: store files follow the database's privacy by default
# --------------------------------------------------------------------------------------- #


def _modes_under(folder: Path) -> tuple[set[int], set[int]]:
    files, folders = set(), {_mode(folder)}
    for root, dirs, names in os.walk(folder):
        folders |= {_mode(Path(root) / d) for d in dirs}
        files |= {_mode(Path(root) / n) for n in names}
    return files, folders


def test_store_files_are_private_by_default(db, population, monkeypatch):
    monkeypatch.delenv(stores.PERMISSIONS_ENV, raising=False)
    database.configure_stores()
    for store in database.STORES:
        assert _mode(_store_root(store)) == 0o700
    dataset_id = f"private_{db.backend}"
    sysid.import_filetree(population, dataset_id)
    folder = Path((sysid.Dataset & {"dataset_id": dataset_id}).fetch1("filetree").full_path)
    assert _modes_under(folder) == ({0o600}, {0o700})
    raw = _register_tiff(
        f"stores_{db.backend}/private/scan.tif", {"animal_id": 9305, "session": 1, "scan_idx": 1}, _movie(5)
    )
    assert (_mode(raw), _mode(raw.parent)) == (0o600, 0o700)
    (sysid.Dataset & {"dataset_id": dataset_id}).delete(prompt=False)


def test_shared_policy_makes_store_files_world_readable(db, population, monkeypatch):
    monkeypatch.setenv(stores.PERMISSIONS_ENV, "shared")
    dataset_id = f"shared_{db.backend}"
    try:
        database.configure_stores()
        assert _mode(_store_root("raw")) == 0o755
        sysid.import_filetree(population, dataset_id)
        folder = Path((sysid.Dataset & {"dataset_id": dataset_id}).fetch1("filetree").full_path)
        assert _modes_under(folder) == ({0o644}, {0o755})
    finally:
        (sysid.Dataset & {"dataset_id": dataset_id}).delete(prompt=False)
        monkeypatch.delenv(stores.PERMISSIONS_ENV)
        database.configure_stores()
    assert _mode(_store_root("raw")) == 0o700


def test_unknown_permission_policy_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(stores.PERMISSIONS_ENV, "public")
    with pytest.raises(ValueError) as error:
        database.configure_stores()
    assert str(error.value) == (
        "PIPELINE_STORE_PERMISSIONS='public' is not a store permission policy (expected one of: private, group, shared)"
    )


def test_gc_command_reports_each_store(db):
    import os
    import subprocess
    import sys

    env = {**os.environ, **db.env}
    out = subprocess.run(
        [sys.executable, "-m", "schemas.cli", "gc", "--dry-run", "--store", "models"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    assert line.startswith("models: ") and " unreferenced, would delete " in line
