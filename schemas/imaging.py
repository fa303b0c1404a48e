"""Two-photon scans to cell traces: Scan, ScanInfo, MotionCorrection, Denoised, Segmentation, Traces."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import datajoint as dj
import numpy as np

from schemas import params, stores

schema = dj.Schema()


def describe(key: dict) -> str:
    """``Scan 3/1/2`` (animal/session/scan) for error messages."""
    return f"Scan {key['animal_id']}/{key['session']}/{key['scan_idx']}"


class ScanError(ValueError):
    """A scan that a processing step cannot take; the message starts with the scan's name."""


def check_raw_filename(filename: Any) -> str:
    """``filename`` if it is a path inside the raw store, else a ValueError.

    A scan's file is referenced relative to the ``raw`` store's root: an absolute path, a
    Windows drive or backslash, or a ``..`` component would reach files outside the store (and
    outside what the lab backs up and shares with every worker).

    Raises
    ------
    ValueError
        Naming the filename and the rule it breaks.
    """
    expected = "expected a path relative to the raw store, without '..', e.g. 'mouse7/2024-05-01/scan2.tif'"
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError(f"Scan.filename {filename!r} is empty or not a string ({expected})")
    if "\\" in filename or re.match(r"^[A-Za-z]:", filename):
        raise ValueError(f"Scan.filename {filename!r} has a backslash or drive letter ({expected})")
    path = PurePosixPath(filename)
    if path.is_absolute() or filename.startswith("~"):
        raise ValueError(f"Scan.filename {filename!r} is an absolute path, outside the raw store ({expected})")
    if ".." in path.parts:
        raise ValueError(f"Scan.filename {filename!r} climbs out of the raw store with '..' ({expected})")
    return filename


def _check_scan_row(row: dict) -> None:
    if "filename" in row:
        # a row fetched from another Scan table holds a file reference, not the text
        check_raw_filename(getattr(row["filename"], "path", row["filename"]))


# ---------------------------------------------------------------------------------------------
# raw data (entered by the lab)
# ---------------------------------------------------------------------------------------------


@schema
class Scan(dj.Manual):
    definition = """
    # a raw two-photon scan: one movie file in the raw store, referenced, never copied
    -> Session                           # the lab module's (schemas.lab by default): animal_id, session
    scan_idx          : int16
    ---
    filename          : <filepath@raw>   # path of the movie file relative to the raw store
    acquisition = ""  : varchar(255)     # rig, indicator, depth, ...
    channel = 0       : int16            # channel to process (0-based)
    field = 0         : int16            # field / plane to process (0-based)
    frame_rate = null : float64          # Hz; used when the file's header has no frame rate
    axes = ""         : varchar(8)       # axes of an HDF5 dataset without labels, e.g. "yxt"
    note = ""         : varchar(1023)
    """

    def insert(self, rows, **kwargs) -> None:
        """Insert scans after checking that every ``filename`` lies inside the raw store.

        Raises
        ------
        ValueError
            For a filename that is absolute or climbs out of the store (``check_raw_filename``),
            before anything is inserted.
        """
        super().insert(params.checked_rows(self, rows, _check_scan_row), **kwargs)


@schema
class StimulusImage(dj.Manual):
    definition = """
    # a stimulus image (or movie) shown in trials
    image_id : int32
    ---
    image    : <blob>    # (height, width) uint8 or float32 grey levels; a movie: (frames, height, width), one per imaging frame
    """


@schema
class Trial(dj.Manual):
    definition = """
    # a stimulus presentation during a scan
    -> Scan
    trial_idx       : int32
    ---
    -> StimulusImage
    onset_frame     : int32   # first frame of the presentation (0-based)
    duration_frames : int32   # frames the image was shown
    """


@schema
class TrialTier(dj.Manual):
    definition = """
    # the data tier a lab assigned to a trial in its own trial file (absent: assigned with a dataset)
    -> Trial
    ---
    tier : varchar(16)   # train, validation, test or final_test
    """


@schema
class Behavior(dj.Manual):
    definition = """
    # behaviour recorded with a scan, one sample per frame
    -> Scan
    ---
    running      : <blob>   # (frames,) float32 running speed, cm/s
    pupil_radius : <blob>   # (frames,) float32 pixels of the eye camera
    pupil_x      : <blob>   # (frames,) float32
    pupil_y      : <blob>   # (frames,) float32
    """


# ---------------------------------------------------------------------------------------------
# parameter sets
# ---------------------------------------------------------------------------------------------


@schema
class MotionParams(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("motion", "motion-correction parameters")
    builder_kind = "imaging"


@schema
class PMDParams(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("pmd", "PMD denoising parameters")
    builder_kind = "imaging"


@schema
class SegmentationParams(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("segmentation", "soma segmentation parameters")
    builder_kind = "imaging"


@schema
class TraceParams(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("trace", "trace extraction parameters")
    builder_kind = "imaging"


def insert_default_params() -> dict:
    """Insert every step's default parameter set; return ``{step: key}``."""
    from pipeline.imaging import DEFAULT_BUILDERS

    tables = {"motion": MotionParams, "pmd": PMDParams, "segmentation": SegmentationParams, "traces": TraceParams}
    return {step: params.insert_config(tables[step], DEFAULT_BUILDERS[step], {}, note="default") for step in tables}


def ensure_session(key: dict) -> None:
    """Insert the session of ``key`` through the lab module's ``ensure_session``, if it has one.

    A lab's own module without ``ensure_session`` needs its sessions inserted before their
    scans; a missing one then fails at the ``Scan`` insert, naming the foreign key.
    """
    import schemas

    insert = getattr(schemas.lab_module(), "ensure_session", None)
    if insert is not None:
        insert(key)


def raw_store_location() -> Path:
    """The local folder of the ``raw`` store (where scans' files are placed before ``Scan`` rows)."""
    spec = dj.config.get_store_spec("raw")
    if spec.get("protocol", "file") != "file":
        raise RuntimeError(f"the raw store is {spec.get('protocol')!r}, not a local folder (expected protocol 'file')")
    return Path(spec["location"])


def insert_simulated_scan(experiment, key: dict, *, image_id_offset: int = 0, note: str = "simulated") -> dict:
    """Register a simulated experiment (``pipeline.simulation.experiment``) as a scan.

    Writes its movie as a ScanImage-like TIFF into the raw store, in a folder of this
    server and prefix (``simulated/<schema>-<server hash>/<key>.tif``: databases sharing a
    raw store never overwrite each other's simulations), and inserts ``Scan``, the stimulus
    images (``image_id = image_id_offset + i``), the ``Trial`` rows and ``Behavior``.
    Idempotent: an existing scan is left as it is.

    Returns
    -------
    dict
        The scan key.
    """
    key = {"animal_id": int(key["animal_id"]), "session": int(key["session"]), "scan_idx": int(key["scan_idx"])}
    if Scan & key:
        return key
    ensure_session(key)
    folder = stores.database_folder(schema)
    relative = f"simulated/{folder}/{key['animal_id']}_{key['session']}_{key['scan_idx']}.tif"
    path = raw_store_location() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    experiment.write_tiff(path)
    StimulusImage.insert(
        [{"image_id": image_id_offset + i, "image": img.astype(np.float32)} for i, img in enumerate(experiment.images)],
        skip_duplicates=True,
    )
    with Scan.connection.transaction:
        Scan.insert1({**key, "filename": relative, "acquisition": "simulated experiment", "note": note})
        trials = experiment.trials
        Trial.insert(
            [
                {
                    **key,
                    "trial_idx": k,
                    "image_id": image_id_offset + int(trials["image_id"][k]),
                    "onset_frame": int(trials["onset_frame"][k]),
                    "duration_frames": int(trials["duration_frames"][k]),
                }
                for k in range(len(trials["image_id"]))
            ]
        )
        Behavior.insert1({**key, **{k: np.asarray(v, dtype=np.float32) for k, v in experiment.behavior.items()}})
    return key


# ---------------------------------------------------------------------------------------------
# helpers of the make() methods (data access only)
# ---------------------------------------------------------------------------------------------


class RawFileChanged(Exception):
    """A scan's raw file is not the file that ``ScanInfo`` read (replaced, cut or appended to)."""


def _scan_file(key: dict) -> dict:
    """Local path and reading options of a scan's file, checked against what ScanInfo recorded.

    Raises
    ------
    MovieFileError
        If the file is not in the raw store.
    RawFileChanged
        If ``ScanInfo`` has a row for the scan and the file's size or digest differ from it.
    """
    from pipeline.imaging.io import MovieFileError

    row = (Scan & key).fetch1()
    ref = row["filename"]
    try:
        path = stores.local_path(ref)
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        expected = path or ref.path
        raise MovieFileError(f"{describe(key)}: file {ref.path!r} not found in the raw store (expected {expected})")
    if ScanInfo & key:
        _check_unchanged(key, ref.path, path)
    return {
        "path": str(path),
        "channel": int(row["channel"]),
        "field": int(row["field"]),
        "axes": row["axes"] or None,
        "frame_rate": row["frame_rate"],
    }


def _frames(scan: dict, shifts: np.ndarray | None = None):
    """A scan's movie as a ``pipeline.imaging.frames.FileSource`` (motion-corrected by ``shifts`` if given).

    Streamed a block of frames at a time: ``$PIPELINE_BLOCK_MB`` MiB per block (default 256),
    temporary files in ``$PIPELINE_SCRATCH`` (default the system's temporary folder).
    """
    from pipeline.imaging.frames import FileSource, settings_from_environment

    return FileSource(
        scan["path"],
        channel=scan["channel"],
        field=scan["field"],
        axes=scan["axes"],
        shifts=shifts,
        **settings_from_environment(),
    )


def _beside_scan(builder, key: dict) -> tuple:
    """``(scan_path,)`` for builders that read results beside the scan's file (suite2p, CaImAn), else ``()``."""
    import inspect

    return (_scan_file(key)["path"],) if "scan_path" in inspect.signature(builder).parameters else ()


def _check_unchanged(key: dict, name: str, path: Path) -> None:
    """Raise ``RawFileChanged`` if the file at ``path`` is not the one ScanInfo fingerprinted."""
    expected = (ScanInfo & key).fetch1("file_size", "file_digest")
    found = stores.file_fingerprint(path)
    if (int(expected[0]), expected[1]) != found:
        raise RawFileChanged(
            f"{describe(key)}: raw file {name!r} changed since ScanInfo read it (size {found[0]} bytes, "
            f"digest {found[1]}; expected {int(expected[0])} bytes, digest {expected[1]}): restore the "
            "original file, or delete this scan's ScanInfo row (and what was computed from it) to "
            "process the new one"
        )


def finite(key: dict, column: str, value: float) -> float:
    """``value`` as a float for a non-nullable numeric column; a ScanError if it is NaN or infinite.

    PostgreSQL stores inf and NaN in a float column and MariaDB refuses them (DataError), so a
    non-finite value would give one scan different results on different servers.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ScanError(f"{describe(key)}: {column} is {value} (expected a finite number)")
    return value


def finite_or_null(value: float | None) -> float | None:
    """``value`` as a float for a nullable numeric column: None (null) when it is None, NaN or inf.

    For columns where a non-finite value has a defined meaning: ``Denoised.snr_gain`` is PMD's
    noise of raw / noise of denoised, inf for a scan without signal (no component kept, the
    denoised noise is 0); it is stored as null on every backend (PostgreSQL would store inf,
    MariaDB refuses it), and ``Denoised.load`` gives inf back.
    """
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@contextlib.contextmanager
def naming_scan(key: dict) -> Iterator[None]:
    """Re-raise the input errors of one scan's step with the scan's name in front.

    ``pipeline`` functions know arrays, not keys: their ``ValueError``s (and a file's
    ``OSError``) say what value was bad and what was expected. Every make() that processes a
    scan runs them inside this block, so that the jobs table says which scan it was:
    ``Scan 3/1/2: movie has shape (1, 40, 40) (expected at least 2 frames ...)``. A file
    error stays a ``MovieFileError``; any other becomes a :class:`ScanError`.
    """
    from pipeline.imaging.io import MovieFileError

    try:
        yield
    except (ValueError, OSError) as error:
        message = str(error)
        if message.startswith(describe(key)):  # named already (a nested step)
            raise
        kind = MovieFileError if isinstance(error, (MovieFileError, OSError)) else ScanError
        raise kind(f"{describe(key)}: {message}") from error


# ---------------------------------------------------------------------------------------------
# computed
# ---------------------------------------------------------------------------------------------


@schema
class ScanInfo(dj.Imported):
    definition = """
    # header of a scan, read after checking every frame once
    -> Scan
    ---
    nframes      : int32
    height       : int32
    width        : int32
    nchannels    : int16
    nfields      : int16
    fps          : float64            # volume rate, Hz
    um_per_pixel = null : float64
    software     : varchar(64)
    file_size    : int64              # bytes of the raw file when read
    file_digest  : char(32)           # schemas.stores.file_fingerprint: checked before every later read
    """

    def make(self, key):
        from pipeline.imaging.io import MovieFileError
        from pipeline.imaging.scan import scan_info

        scan = _scan_file(key)
        file_size, file_digest = stores.file_fingerprint(scan["path"])
        with naming_scan(key):
            info = scan_info(scan["path"], channel=scan["channel"], field=scan["field"], axes=scan["axes"])
        fps = info.fps or scan["frame_rate"]
        if not fps or not np.isfinite(fps) or fps <= 0:
            raise MovieFileError(
                f"{describe(key)}: frame rate unknown (the file's header has none; expected Scan.frame_rate > 0)"
            )
        trials = (Trial & key).to_arrays("trial_idx", "onset_frame", "duration_frames")
        for trial_idx, onset, duration in zip(*trials):
            if onset < 0 or onset + duration > info.nframes:
                raise MovieFileError(
                    f"{describe(key)}: trial {trial_idx} spans frames {onset}..{onset + duration - 1}, beyond "
                    f"the movie's end (expected onset_frame + duration_frames <= {info.nframes} frames)"
                )
        behavior = (Behavior & key).to_dicts()
        for row in behavior:
            for name in ("running", "pupil_radius", "pupil_x", "pupil_y"):
                if len(np.ravel(row[name])) != info.nframes:
                    raise MovieFileError(
                        f"{describe(key)}: Behavior.{name} has {len(np.ravel(row[name]))} samples "
                        f"(expected {info.nframes}, one per frame)"
                    )
        self.insert1(
            {
                **key,
                "nframes": int(info.nframes),
                "height": int(info.height),
                "width": int(info.width),
                "nchannels": int(info.nchannels),
                "nfields": int(info.nfields),
                "fps": float(fps),
                # a header whose field of view gives no finite pixel size says nothing: null
                "um_per_pixel": finite_or_null(info.um_per_pixel),
                "software": info.software[:64],
                "file_size": file_size,
                "file_digest": file_digest,
            }
        )


@schema
class MotionCorrection(dj.Computed):
    definition = """
    # rigid motion correction: template and per-frame shifts (the corrected movie is not stored)
    -> ScanInfo
    -> MotionParams
    ---
    template         : <blob>   # (height, width) float32 reference image
    shifts           : <blob>   # (frames, 2) float32 (y, x) pixels that register each frame
    max_displacement : float64  # largest |shift|, pixels
    """

    def make_fetch(self, key):
        scan = _scan_file(key)
        _, config = params.load_config(MotionParams, key)
        return scan, config

    def make_compute(self, key, scan, config):
        builder, _ = params.load_config(MotionParams, key)
        with naming_scan(key):
            template, shifts = builder(_frames(scan), **config)
        return template, shifts

    def make_insert(self, key, template, shifts):
        self.insert1(
            {
                **key,
                "template": np.asarray(template, dtype=np.float32),
                "shifts": np.asarray(shifts, dtype=np.float32),
                "max_displacement": finite(
                    key, "MotionCorrection.max_displacement", np.abs(shifts).max() if len(shifts) else 0.0
                ),
            }
        )


@schema
class Denoised(dj.Computed):
    definition = """
    # PMD-denoised motion-corrected movie, stored as low-rank factors per spatial block
    -> MotionCorrection
    -> PMDParams
    ---
    rank              : int32
    compression_ratio : float64     # bytes of the raw movie / bytes of the factors
    snr_gain = null   : float64     # noise of raw / noise of denoised (high-frequency spectrum); null if rank 0
    blocks            : <blob>      # (n_blocks, 5) int64: y0, y1, x0, x1, rank
    info              : <blob>      # (4,) int64: frames, height, width, raw bytes
    spatial           : <npy@movies>  # concatenated spatial factors, float32
    temporal          : <npy@movies>  # (rank, frames) float32
    mean_image        : <npy@movies>  # (height, width) float32
    noise_image       : <npy@movies>  # (height, width) float32
    """

    def make_fetch(self, key):
        scan = _scan_file(key)
        shifts = (MotionCorrection & key).fetch1("shifts")
        _, config = params.load_config(PMDParams, key)
        return scan, shifts, config

    def make_compute(self, key, scan, shifts, config):
        builder, _ = params.load_config(PMDParams, key)
        with naming_scan(key):
            result = builder(_frames(scan, shifts), **config)
        return (result.to_arrays(), result.rank, result.compression_ratio, result.snr_gain_estimate)

    def make_insert(self, key, arrays, rank, compression_ratio, snr_gain):
        self.insert1(
            {
                **key,
                "rank": int(rank),
                "compression_ratio": finite(key, "Denoised.compression_ratio", compression_ratio),
                "snr_gain": finite_or_null(snr_gain),  # inf (no signal) -> null
                "blocks": arrays["blocks"],
                "info": arrays["info"],
                "spatial": arrays["spatial"],
                "temporal": arrays["temporal"],
                "mean_image": arrays["mean"],
                "noise_image": arrays["noise"],
            }
        )

    @staticmethod
    def load(key: dict):
        """The ``pipeline.imaging.pmd.PMDResult`` of one Denoised row."""
        from pipeline.imaging.pmd import PMDResult

        row = (Denoised & key).fetch1()
        arrays = {
            "blocks": row["blocks"],
            "info": row["info"],
            "spatial": np.asarray(row["spatial"]),
            "temporal": np.asarray(row["temporal"]),
            "mean": np.asarray(row["mean_image"]),
            "noise": np.asarray(row["noise_image"]),
        }
        gain = math.inf if row["snr_gain"] is None else row["snr_gain"]  # null stores PMD's inf
        return PMDResult.from_arrays(arrays, snr_gain_estimate=gain)


@schema
class Segmentation(dj.Computed):
    definition = """
    # somata found in a denoised movie
    -> Denoised
    -> SegmentationParams
    ---
    ncells            : int32
    correlation_image : <blob>   # (height, width) float32
    """

    class Mask(dj.Part):
        definition = """
        # one soma
        -> master
        mask_id  : int32
        ---
        pixels   : <blob>    # (n,) int32 flat pixel indices (row-major in height x width)
        weights  : <blob>    # (n,) float32 footprint weights, peak 1
        center_y : float32   # weighted centroid, pixels
        center_x : float32
        score    : float32   # local correlation at the seed
        """

    def make_fetch(self, key):
        _, config = params.load_config(SegmentationParams, key)
        return ((Denoised & key).fetch1("KEY"), config)

    def make_compute(self, key, denoised_key, config):
        from pipeline.imaging.frames import settings_from_environment

        builder, _ = params.load_config(SegmentationParams, key)
        # the denoised movie, reconstructed from its factors a block of frames at a time
        movie = Denoised.load(denoised_key).frames(**settings_from_environment())
        with naming_scan(key):
            found = builder(movie, *_beside_scan(builder, key), **config)
        masks = []
        for i in range(len(found)):
            flat = np.flatnonzero(found.masks[i]).astype(np.int32)
            masks.append(
                {
                    "mask_id": i,
                    "pixels": flat,
                    "weights": found.weights[i].reshape(-1)[flat].astype(np.float32),
                    "center_y": finite(key, "Segmentation.Mask.center_y", found.centers[i, 0]),
                    "center_x": finite(key, "Segmentation.Mask.center_x", found.centers[i, 1]),
                    "score": finite(key, "Segmentation.Mask.score", found.scores[i]),
                }
            )
        return found.correlation_image.astype(np.float32), masks

    def make_insert(self, key, correlation_image, masks):
        self.insert1({**key, "ncells": len(masks), "correlation_image": correlation_image})
        self.Mask.insert([{**key, **m} for m in masks])

    @staticmethod
    def weights(key: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(mask_ids (cells,), weights (cells, height, width) float32)`` of one segmentation."""
        rows = (Segmentation.Mask & key).to_dicts(order_by="mask_id")
        out = np.zeros((len(rows), shape[0] * shape[1]), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i, np.asarray(row["pixels"], dtype=np.int64)] = row["weights"]
        return np.array([r["mask_id"] for r in rows], dtype=np.int64), out.reshape(len(rows), *shape)


@schema
class Traces(dj.Computed):
    definition = """
    # fluorescence and dF/F of every soma, from the denoised movie
    -> Segmentation
    -> TraceParams
    ---
    nframes : int32
    fps     : float64
    """

    class Unit(dj.Part):
        definition = """
        # one cell's traces (unit_id = Segmentation.Mask.mask_id)
        -> master
        unit_id      : int32
        ---
        fluorescence : <blob>   # (frames,) float32, neuropil-corrected
        dff          : <blob>   # (frames,) float32
        """

    def make_fetch(self, key):
        _, config = params.load_config(TraceParams, key)
        fps = (ScanInfo & key).fetch1("fps")
        return ((Segmentation & key).fetch1("KEY"), config, fps)

    def make_compute(self, key, seg_key, config, fps):
        builder, _ = params.load_config(TraceParams, key)
        denoised = Denoised.load(seg_key)
        ids, weights = Segmentation.weights(seg_key, denoised.shape[1:])
        with naming_scan(key):
            out = builder(denoised, weights, fps, *_beside_scan(builder, key), **config)
        units = [
            {"unit_id": int(i), "fluorescence": out["fluorescence"][k], "dff": out["dff"][k]} for k, i in enumerate(ids)
        ]
        return denoised.shape[0], units

    def make_insert(self, key, nframes, units):
        fps = (ScanInfo & key).fetch1("fps")
        self.insert1({**key, "nframes": int(nframes), "fps": float(fps)})
        self.Unit.insert([{**key, **u} for u in units])
