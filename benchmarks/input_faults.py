"""Bad input beside good input, through the worker loop: the bad one fails naming its scan, the good one is done.

The input half of ``benchmarks/faults.py`` (issue 11, items 5-9 and 12): each fault is one bad
scan registered beside one good scan, both populated from ``ScanInfo`` to ``Traces`` by the
worker loop (``WorkerProcess`` with ``exit_when_idle``) on a private server. Per fault and
backend: keys expected (``TrialResponses`` rows of the good scan), rows found, partial rows (rows of the
bad scan after the step that failed), jobs left reserved, jobs in error (expected: one, the bad
scan's), whether the error names the scan, and seconds. Faults rejected before any row exists
(a filename outside the raw store, a config the builder cannot take) are rows with no keys.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from tests import imaging_helpers

FRAMES, SIDE = 120, 20
STEPS = ("ScanInfo", "MotionCorrection", "Denoised", "Segmentation", "Traces")


def blob_movie(seed: int = 0, frames: int = FRAMES) -> np.ndarray:
    """A movie with cells that PMD keeps (the tests' ``imaging_helpers.blob_movie``), float32."""
    return imaging_helpers.blob_movie(frames, (SIDE, SIDE), seed).astype(np.float32)


def _write(relative: str, movie: np.ndarray) -> Path:
    from pipeline.imaging import io
    from schemas import imaging

    path = imaging.raw_store_location() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_scanimage_tiff(path, movie, 15.0)
    return path


def _write_h5(relative: str, movie: np.ndarray) -> None:
    """An HDF5 movie keeps its dtype (a ScanImage TIFF is int16): complex and float64 values get through."""
    import h5py

    from schemas import imaging

    path = imaging.raw_store_location() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["mov"] = movie


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


IMAGE_ID = 990_000


def _register(key: dict, relative: str, trial: bool = True) -> None:
    """The Scan row and (``trial``) one stimulus trial inside the recording, so TrialResponses has work."""
    from schemas import imaging

    imaging.ensure_session(key)
    imaging.Scan.insert1({**key, "filename": relative, "frame_rate": 15.0})
    if trial:
        imaging.Trial.insert1({**key, "trial_idx": 0, "image_id": IMAGE_ID, "onset_frame": 0, "duration_frames": 2})


# each scan fault: (prepare the bad scan's file, then insert its Scan row) -> optional action after ScanInfo
def _h5_fault(movie_of, trial: bool = True):
    def prepare(key: dict, relative: str):
        relative = relative.replace(".tif", ".h5")
        _write_h5(relative, movie_of())
        _register(key, relative, trial)

    return prepare


def _huge_values() -> np.ndarray:
    movie = blob_movie(7).astype(np.float64)
    movie[3, 4, 5] = 1e300
    return movie


def _truncated(fraction: float):
    def prepare(key: dict, relative: str):
        path = _write(relative, blob_movie(1))
        _truncate(path, fraction)
        _register(key, relative)

    return prepare


def _trial_outside(key: dict, relative: str):
    from schemas import imaging

    _write(relative, blob_movie(2))
    _register(key, relative)
    imaging.Trial.insert1(
        {**key, "trial_idx": 1, "image_id": IMAGE_ID, "onset_frame": FRAMES - 2, "duration_frames": 2}
    )


def _changed_after_scaninfo(key: dict, relative: str):
    _write(relative, blob_movie(3))
    _register(key, relative)

    def after_scaninfo():
        _write(relative, blob_movie(4))  # same size, other content: a replaced recording

    return after_scaninfo


SCAN_FAULTS = {
    "truncated TIFF 99%": _truncated(0.99),
    "truncated TIFF 90%": _truncated(0.90),
    "1-frame movie": _h5_fault(lambda: blob_movie(5, frames=1), trial=False),
    "complex movie": _h5_fault(lambda: blob_movie(6).astype(np.complex64) * (1 + 1j)),
    "values of 1e300": _h5_fault(_huge_values),
    "trial outside recording": _trial_outside,
    "raw file changed": _changed_after_scaninfo,
}


def _populate(key_list: list[dict], after_scaninfo) -> None:
    """ScanInfo .. Traces (and TrialResponses) for the scans, through the worker loop."""
    from schemas import imaging, spikes, sysid, workers

    tables = [getattr(imaging, name) for name in STEPS] + [spikes.Activity, sysid.TrialResponses]
    restriction = [{k: key[k] for k in ("animal_id", "session", "scan_idx")} for key in key_list]
    for group in ([tables[0]], tables[1:]):
        options = workers.WorkerOptions(restrictions=[restriction], exit_when_idle=True, poll=0.1, refresh_interval=0.2)
        workers.WorkerProcess(imaging.schema.connection, group, options).run()
        if group[0] is tables[0] and after_scaninfo is not None:
            after_scaninfo()


def _scan_row(name: str, prepare, good: dict, index: int, backend: str) -> dict:
    from schemas import imaging, spikes, sysid

    # keys expected: the good scan's rows of every step (its TrialResponses row is the last)
    bad = {"animal_id": 8800, "session": 1, "scan_idx": index}
    started = time.perf_counter()
    after = prepare(bad, f"input_faults/{backend}/{index}.tif")
    _populate([good, bad], after)
    tables = [getattr(imaging, n) for n in STEPS] + [spikes.Activity, sysid.TrialResponses]
    errors = {t.__name__: (t().jobs.errors & bad).to_dicts() for t in tables}
    failed_at = next((i for i, t in enumerate(tables) if errors[t.__name__]), None)
    after_failure = tables[failed_at + 1 :] if failed_at is not None else []
    messages = [e["error_message"] for rows in errors.values() for e in rows]
    scan_name = f"Scan {bad['animal_id']}/{bad['session']}/{bad['scan_idx']}"
    return dict(
        fault=name,
        backend=backend,
        keys_expected=len(spikes.SpikeMethod()) * len(sysid.ResponseWindow()),
        rows_found=len(sysid.TrialResponses & good),
        partial_rows=sum(len(t & bad) for t in after_failure),
        jobs_reserved=sum(len(t().jobs.reserved) for t in tables),
        jobs_error=sum(len(rows) for rows in errors.values()),
        failed_at=tables[failed_at].__name__ if failed_at is not None else "",
        names_scan=all(scan_name in m for m in messages) and bool(messages),
        message=(messages[0].splitlines()[0][:110] if messages else ""),
        seconds=time.perf_counter() - started,
    )


def _insert_rows(backend: str) -> list[dict]:
    """Faults rejected at insert: nothing reaches the database."""
    from pipeline.identity import ConfigError
    from schemas import imaging, params, sysid

    out = []
    checks = {
        "filename outside raw store": lambda: _register(
            {"animal_id": 8801, "session": 1, "scan_idx": 1}, "../../x.tif"
        ),
        "config layers=-1": lambda: params.insert_config(sysid.ModelConfig, "cnn_factorized", {"layers": -1}),
        "unknown builder (insert1)": lambda: sysid.ModelConfig.insert1(
            {"model_hash": "0" * 32, "builder": "no_such_model", "config": {}}
        ),
    }
    for name, action in checks.items():
        started = time.perf_counter()
        try:
            action()
            message = ""
        except (ValueError, ConfigError, LookupError) as error:
            message = str(error).splitlines()[0][:110]
        rows = len(imaging.Scan & {"animal_id": 8801}) + len(sysid.ModelConfig & {"model_hash": "0" * 32})
        out.append(
            dict(
                fault=name,
                backend=backend,
                keys_expected=0,
                rows_found=rows,
                partial_rows=rows,
                jobs_reserved=0,
                jobs_error=0,
                failed_at="insert",
                names_scan=bool(message),
                message=message,
                seconds=time.perf_counter() - started,
            )
        )
    return out


def run(server, home: Path, backend: str) -> list[dict]:
    """Every input fault on ``server`` (a private server of ``tests/fault_harness.py``)."""
    import os
    import uuid

    import datajoint as dj
    import torch

    import schemas
    from schemas import database, imaging

    torch.set_num_threads(1)
    os.environ["PIPELINE_HOME"] = str(home)
    connection = server.connect()
    database.configure_stores()
    dj.config["database.backend"] = backend
    dj.conn.connection = connection
    prefix = f"i{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix, connection=connection)
    try:
        imaging.insert_default_params()
        from schemas import ingest

        ingest.insert_default_parameters()
        imaging.StimulusImage.insert1({"image_id": IMAGE_ID, "image": np.zeros((4, 4), np.float32)})
        good = {"animal_id": 8800, "session": 1, "scan_idx": 99}
        _write(f"input_faults/{backend}/good.tif", blob_movie(0))
        _register(good, f"input_faults/{backend}/good.tif")
        rows = [_scan_row(name, prepare, good, i, backend) for i, (name, prepare) in enumerate(SCAN_FAULTS.items(), 1)]
        return rows + _insert_rows(backend)
    finally:
        with dj.config.override(safemode=False):
            schemas.drop_all(prefix, connection)
        shutil.rmtree(home / "stores", ignore_errors=True)


def damaged(r: dict) -> bool:
    """Lost, stuck, half-written or silent: the good scan not done, rows after the failure, no error naming it."""
    if r["failed_at"] == "insert":
        return bool(r["rows_found"]) or not r["message"]
    return (
        r["rows_found"] != r["keys_expected"]
        or bool(r["partial_rows"])
        or bool(r["jobs_reserved"])
        or r["jobs_error"] != 1
        or not r["names_scan"]
    )


def print_table(rows: list[dict]) -> None:
    print(
        f"{'input fault':28s} {'backend':10s} {'good':>4s} {'partial':>7s} {'reserved':>8s} {'error':>5s} "
        f"{'failed at':16s} {'names':>5s} {'s':>5s}  message"
    )
    for r in rows:
        print(
            f"{r['fault']:28s} {r['backend']:10s} {r['rows_found']:>2d}/{r['keys_expected']:<1d} {r['partial_rows']:7d} "
            f"{r['jobs_reserved']:8d} {r['jobs_error']:5d} {r['failed_at']:16s} {'yes' if r['names_scan'] else 'NO':>5s} "
            f"{r['seconds']:5.1f}  {r['message']}"
        )
