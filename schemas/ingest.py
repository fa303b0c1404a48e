"""`pipeline ingest`: register a lab's own scan with its stimulus trials, images and behaviour.

``ingest_scan`` places the movie in the ``raw`` store, reads the lab's files (layouts in
``pipeline.imaging.experiment_files`` and the README, "Your own experiment"), converts onsets
given in seconds to frames with the scan's own frame timing (``pipeline.imaging.timing``),
inserts ``Session`` (through the lab module), ``Scan``, ``StimulusImage``, ``Trial``,
``TrialTier`` and ``Behavior`` in one transaction, and the default parameter set of every step
(``insert_default_parameters``), so that ``pipeline worker --exit-when-idle`` then populates the
scan through ``Traces``, ``Activity`` and ``TrialResponses``.
"""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# the spike methods every scan gets unless a caller names others (the demo adds order 2)
DEFAULT_SPIKE_METHODS: tuple = (("deconvolution", {"order": 1}),)
# a frame rate given beside a header's that differs by more than this is a mistake, not a rounding
_RATE_TOLERANCE = 1e-3


class IngestError(ValueError):
    """A scan, trial, image or behaviour input that cannot be registered; the message says why."""


@dataclass
class Ingested:
    """What ``ingest_scan`` registered.

    Attributes
    ----------
    key : dict
        The scan key ``{animal_id, session, scan_idx}``.
    filename : str
        The movie's path relative to the ``raw`` store.
    nframes : int
        Frames of the movie (from its header).
    trials, new_images : int
        ``Trial`` rows inserted; ``StimulusImage`` rows that were not there before.
    behavior : bool
        Whether a ``Behavior`` row was inserted.
    timing : str
        Where the frame times that onsets in seconds were converted with came from
        (``""`` when no onset was given in seconds).
    parameters : dict
        The default parameter sets' keys (``insert_default_parameters``).
    """

    key: dict
    filename: str
    nframes: int
    trials: int = 0
    new_images: int = 0
    behavior: bool = False
    timing: str = ""
    parameters: dict = field(default_factory=dict)


def insert_default_parameters(spike_methods: tuple = DEFAULT_SPIKE_METHODS) -> dict:
    """Insert the default parameter set of every step a scan goes through; return their keys.

    Motion correction, PMD, segmentation and traces (``imaging.insert_default_params``), the
    spike methods ``spike_methods`` (``(builder, config)`` pairs) and the default response
    window. Inserting an existing set is a no-op.

    Returns
    -------
    dict
        ``{"imaging": {step: key}, "spikes": [key, ...], "window": key}``.
    """
    from . import imaging, params, spikes, sysid

    return {
        "imaging": imaging.insert_default_params(),
        "spikes": [
            spikes.SpikeMethod.insert_method(builder, config, note="default") for builder, config in spike_methods
        ],
        "window": params.insert_config(sysid.ResponseWindow, "window_mean", {}, note="default"),
    }


def scan_key(animal_id: int, session: int, scan_idx: int) -> dict:
    """The scan key, checked: whole non-negative numbers that fit the key's columns."""
    key = {"animal_id": animal_id, "session": session, "scan_idx": scan_idx}
    limits = {"animal_id": 2**31 - 1, "session": 2**15 - 1, "scan_idx": 2**15 - 1}
    for name, value in key.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= limits[name]:
            raise IngestError(f"{name} = {value!r} (expected a whole number in 0..{limits[name]})")
    return {name: int(value) for name, value in key.items()}


def place_in_raw_store(movie: str | Path, key: dict) -> str:
    """The movie's path relative to the ``raw`` store, copying it there if it is outside.

    A file already under the store stays where it is. Others are copied to
    ``ingested/<animal_id>_<session>_<scan_idx>/<file name>``; an equal file there is reused,
    a different one is an error (the store never loses a scan's file).
    """
    from . import imaging

    movie = Path(movie).expanduser().resolve()
    if not movie.is_file():
        raise IngestError(f"{movie}: file not found (expected the scan's movie, .tif/.tiff/.h5)")
    store = imaging.raw_store_location().resolve()
    if movie.is_relative_to(store):
        return movie.relative_to(store).as_posix()
    relative = f"ingested/{key['animal_id']}_{key['session']}_{key['scan_idx']}/{movie.name}"
    destination = store / relative
    if destination.exists():
        if not filecmp.cmp(movie, destination, shallow=False):
            raise IngestError(
                f"{destination} exists in the raw store and differs from {movie} (expected the same "
                "file, or another scan key)"
            )
        return relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    shutil.copyfile(movie, partial)
    partial.rename(destination)  # never a half-copied movie under the scan's name
    return relative


def ingest_scan(
    movie: str | Path,
    animal_id: int,
    session: int,
    scan_idx: int,
    *,
    trials: str | Path | None = None,
    images: str | Path | None = None,
    behavior: str | Path | None = None,
    frame_rate: float | None = None,
    channel: int = 0,
    field: int = 0,
    axes: str | None = None,
    acquisition: str = "",
    note: str = "",
    spike_methods: tuple = DEFAULT_SPIKE_METHODS,
) -> Ingested:
    """Register a scan with its stimulus trials, images and behaviour, and every default parameter set.

    Parameters
    ----------
    movie
        The movie file (ScanImage or plain TIFF, HDF5); copied into the ``raw`` store unless it
        is already there (``place_in_raw_store``).
    animal_id, session, scan_idx
        The scan's key; the session is inserted through the lab module if it has
        ``ensure_session`` (``schemas.lab`` does), else it must exist.
    trials
        Trial file, CSV or JSON (``pipeline.imaging.experiment_files.read_trials``). Onsets in
        seconds are converted with the file's frame timing (``pipeline.imaging.timing``).
    images
        Folder of ``<image_id>.npy`` / ``.png`` stimulus images. Image ids are global: an id
        already stored must hold the same image. Every trial's image must be stored or here.
    behavior
        Behaviour CSV (``read_behavior``): running, pupil radius and position.
    frame_rate
        Hz, for a file whose header has no frame rate (an ImageJ TIFF); must agree with the
        header's where it has one.
    channel, field, axes
        Which channel and field to process; the axes of an unlabelled HDF5 dataset.
    acquisition, note
        Free text stored with the scan.
    spike_methods
        ``(builder, config)`` pairs for ``insert_default_parameters``.

    Raises
    ------
    IngestError
        The scan is already registered, or an input does not fit (the message says which).
    """
    from pipeline.imaging import experiment_files, io

    from . import imaging

    key = scan_key(animal_id, session, scan_idx)
    if imaging.Scan & key:
        raise IngestError(
            f"{imaging.describe(key)} is already registered (file "
            f"{(imaging.Scan & key).fetch1('filename').path!r}); delete it first to ingest it again"
        )
    relative = place_in_raw_store(movie, key)
    path = imaging.raw_store_location() / relative
    try:
        info = io.movie_info(path, axes=axes)
    except io.MovieFileError as error:
        raise IngestError(f"{imaging.describe(key)}: {error}") from None
    _check_frame_rate(key, info, frame_rate)
    result = Ingested(key=key, filename=relative, nframes=int(info.nframes))
    trial_rows, tier_rows = [], []
    if trials is not None:
        scan = {"path": path, "frame_rate": frame_rate, "channel": channel, "field": field, "axes": axes}
        trial_rows, tier_rows, result.timing = _trial_rows(key, scan, trials, info.nframes)
    new_images = experiment_files.read_images(images) if images is not None else {}
    _check_images(key, new_images, trial_rows)
    behavior_row = None
    if behavior is not None:
        times = _frame_times(key, path, frame_rate=frame_rate, channel=channel, field=field, axes=axes).times
        behavior_row = {**key, **experiment_files.read_behavior(behavior, times)}
    result.new_images = _insert_images(new_images)
    with imaging.Scan.connection.transaction:
        imaging.ensure_session(key)
        imaging.Scan.insert1(
            {
                **key,
                "filename": relative,
                "acquisition": acquisition,
                "channel": channel,
                "field": field,
                "frame_rate": frame_rate,
                "axes": axes or "",
                "note": note,
            }
        )
        imaging.Trial.insert(trial_rows)
        imaging.TrialTier.insert(tier_rows)
        if behavior_row is not None:
            imaging.Behavior.insert1(behavior_row)
    result.trials, result.behavior = len(trial_rows), behavior_row is not None
    result.parameters = insert_default_parameters(spike_methods)
    return result


def _check_frame_rate(key: dict, info, frame_rate: float | None) -> None:
    from . import imaging

    if frame_rate is not None and (not np.isfinite(frame_rate) or frame_rate <= 0):
        raise IngestError(f"{imaging.describe(key)}: frame rate {frame_rate!r} (expected a number > 0 Hz)")
    if info.fps and frame_rate is not None and abs(frame_rate - info.fps) > _RATE_TOLERANCE * info.fps:
        raise IngestError(
            f"{imaging.describe(key)}: frame rate {frame_rate:g} Hz given but the file's header says "
            f"{info.fps:g} Hz (expected no frame rate, or the header's)"
        )
    if not info.fps and frame_rate is None:
        raise IngestError(
            f"{imaging.describe(key)}: the file's header ({info.software}) has no frame rate "
            "(expected --frame-rate / frame_rate in Hz)"
        )


def _frame_times(key: dict, path: Path, *, frame_rate: float | None, channel: int, field: int, axes: str | None):
    from pipeline.imaging import timing

    from . import imaging

    try:
        return timing.frame_times(path, frame_rate=frame_rate, channel=channel, field=field, axes=axes)
    except ValueError as error:
        raise IngestError(f"{imaging.describe(key)}: {error}") from None


def _trial_rows(key: dict, scan: dict, trials_file: str | Path, nframes: int) -> tuple[list, list, str]:
    """``Trial`` and ``TrialTier`` rows of a trial file, onsets in frames; and the timing's source.

    ``scan``: the movie's ``path`` and its reading options (``frame_rate``, ``channel``,
    ``field``, ``axes``), for frame times when onsets are in seconds.
    """
    from pipeline.imaging import experiment_files, timing

    from . import imaging

    trials = experiment_files.read_trials(trials_file)
    onset, duration, source = trials.onset, trials.duration, ""
    if trials.onset_unit == "seconds":
        frame_timing = _frame_times(key, scan["path"], **{k: v for k, v in scan.items() if k != "path"})
        source = frame_timing.source
        try:
            onset = timing.onset_frames(trials.onset, frame_timing.times)
            if trials.duration_unit == "seconds":
                duration = timing.duration_frames(trials.onset, trials.duration, frame_timing.times)
        except ValueError as error:
            raise IngestError(f"{imaging.describe(key)}: {trials_file}: {error}") from None
    end = onset + duration
    late = np.flatnonzero(end > nframes)
    if late.size:
        i = late[0]
        raise IngestError(
            f"{imaging.describe(key)}: {trials_file}: trial {trials.trial_idx[i]} spans frames "
            f"{onset[i]}..{end[i] - 1} (expected within the movie's {nframes} frames)"
        )
    rows = [
        {**key, "trial_idx": int(t), "image_id": int(i), "onset_frame": int(o), "duration_frames": int(d)}
        for t, i, o, d in zip(trials.trial_idx, trials.image_id, onset, duration)
    ]
    tiers = (
        []
        if trials.tier is None
        else [{**key, "trial_idx": int(t), "tier": str(tier)} for t, tier in zip(trials.trial_idx, trials.tier)]
    )
    return rows, tiers, source


def _check_images(key: dict, new_images: dict, trial_rows: list) -> None:
    """Every trial's image is given or stored; a given id already stored holds the same image."""
    from . import imaging

    needed = sorted({row["image_id"] for row in trial_rows} - set(new_images))
    stored = (
        {k["image_id"] for k in (imaging.StimulusImage & [{"image_id": i} for i in needed]).keys()} if needed else set()
    )
    missing = [i for i in needed if i not in stored]
    if missing:
        raise IngestError(
            f"{imaging.describe(key)}: trials show image id(s) {missing[:10]} that are neither in the "
            "images folder nor in StimulusImage (expected <image_id>.npy / .png for each)"
        )
    clashing = []
    for row in (imaging.StimulusImage & [{"image_id": i} for i in new_images]).to_dicts() if new_images else []:
        given = new_images[int(row["image_id"])]
        if np.shape(row["image"]) != given.shape or not np.allclose(np.asarray(row["image"], np.float32), given):
            clashing.append(int(row["image_id"]))
    if clashing:
        raise IngestError(
            f"{imaging.describe(key)}: image id(s) {clashing[:10]} are stored with other images "
            "(image ids are global across experiments; expected new ids for new images)"
        )


def _insert_images(images: dict) -> int:
    from . import imaging

    before = len(imaging.StimulusImage & [{"image_id": i} for i in images]) if images else 0
    imaging.StimulusImage.insert([{"image_id": i, "image": img} for i, img in images.items()], skip_duplicates=True)
    return len(images) - before
