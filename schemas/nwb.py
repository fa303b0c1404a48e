"""NWB export of a scan's results (``pipeline export-nwb``): masks, traces, inferred spikes, trials.

One ``Traces`` row becomes one NWB file (pynwb): the imaging plane, the cells' footprints as
a ``PlaneSegmentation`` (``ophys/ImageSegmentation``), fluorescence and dF/F as
``RoiResponseSeries`` (``ophys/Fluorescence``, ``ophys/DfOverF``), the inferred spikes of every
``Activity`` row of those traces (``ophys/InferredSpikes``, one series per spike method) and
the stimulus trials as the file's ``trials`` table (``TimeIntervals``: start and stop in
seconds, image id, onset frame). Times are ``frame / fps`` from the scan's first frame.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# NWB needs a session start; a lab module without a session date gets this, said in the file
_UNKNOWN_START = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ExportError(ValueError):
    """A key that does not select exactly one ``Traces`` row, or a file that exists."""


def export_scan(key: dict, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the results of the one ``Traces`` row matching ``key`` to an NWB file.

    Parameters
    ----------
    key
        A restriction of ``imaging.Traces`` selecting exactly one row (a scan key suffices
        when the scan has been processed with one parameter set).
    path
        The ``.nwb`` file to write.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.
    """
    try:
        from pynwb import NWBHDF5IO
    except ImportError as error:
        raise ExportError(f"NWB export needs pynwb ({error}); pip install 'v1-pipeline[nwb]'") from None
    from . import imaging

    path = Path(path)
    matches = (imaging.Traces & key).keys()
    if len(matches) != 1:
        raise ExportError(f"{key} selects {len(matches)} Traces rows (expected exactly 1; add parameter hashes)")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists (expected a new file, or overwrite=True)")
    nwbfile = build_nwbfile(matches[0])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def build_nwbfile(traces_key: dict):
    """The in-memory ``pynwb.NWBFile`` of one ``Traces`` row (see the module docstring)."""
    from pynwb import NWBFile
    from pynwb.file import Subject

    from . import imaging

    scan = (imaging.Scan & traces_key).fetch1()
    info = (imaging.ScanInfo & traces_key).fetch1()
    start, start_note = _session_start(traces_key)
    nwbfile = NWBFile(
        session_description=f"{imaging.describe(traces_key)}: {scan['acquisition'] or 'two-photon scan'}{start_note}",
        identifier=_identifier(traces_key),
        session_start_time=start,
        session_id=f"{traces_key['animal_id']}/{traces_key['session']}",
        notes=scan["note"] or None,
        subject=Subject(subject_id=str(traces_key["animal_id"]), species="Mus musculus"),
    )
    plane = _imaging_plane(nwbfile, info, scan)
    ophys = nwbfile.create_processing_module("ophys", "cells and their traces from the v1-pipeline")
    rois = _plane_segmentation(ophys, plane, traces_key, (info["height"], info["width"]))
    units = (imaging.Traces.Unit & traces_key).to_dicts(order_by="unit_id")
    fps = float(info["fps"])
    region = rois.create_roi_table_region("every cell", region=list(range(len(units))))
    _series(
        ophys,
        "Fluorescence",
        "fluorescence",
        np.stack([u["fluorescence"] for u in units], axis=1),
        region,
        fps,
        "neuropil-corrected fluorescence",
        "a.u.",
    )
    _series(ophys, "DfOverF", "dff", np.stack([u["dff"] for u in units], axis=1), region, fps, "dF/F", "1")
    _spikes(ophys, traces_key, [u["unit_id"] for u in units], region, fps)
    _trials(nwbfile, traces_key, fps)
    return nwbfile


def _identifier(key: dict) -> str:
    return "v1-pipeline " + " ".join(f"{k}={v}" for k, v in sorted(key.items()))


def _session_start(key: dict) -> tuple[datetime, str]:
    import schemas

    session = schemas.lab_module().Session & key
    date = session.fetch1().get("session_date") if session else None
    if date is None:
        return _UNKNOWN_START, " (session start unknown: 1970-01-01 stands in)"
    return datetime(date.year, date.month, date.day, tzinfo=timezone.utc), ""


def _imaging_plane(nwbfile, info: dict, scan: dict):
    from pynwb.ophys import OpticalChannel

    device = nwbfile.create_device(name="microscope", description=info["software"])
    channel = OpticalChannel(
        name=f"channel{scan['channel']}", description="the processed channel", emission_lambda=float("nan")
    )
    return nwbfile.create_imaging_plane(
        name=f"field{scan['field']}",
        optical_channel=channel,
        imaging_rate=float(info["fps"]),
        description=f"field {scan['field']} of the scan, {info['height']} x {info['width']} pixels",
        device=device,
        excitation_lambda=float("nan"),
        indicator="unknown",
        location="unknown",
        grid_spacing=[info["um_per_pixel"] or float("nan")] * 2,
        grid_spacing_unit="micrometers",
    )


def _plane_segmentation(ophys, plane, key: dict, shape: tuple[int, int]):
    from pynwb.ophys import ImageSegmentation

    from . import imaging

    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    rois = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="cell footprints (weights, peak 1)", imaging_plane=plane
    )
    rois.add_column("mask_id", "Segmentation.Mask.mask_id of the cell (= Traces.Unit.unit_id)")
    mask_ids, weights = imaging.Segmentation.weights((imaging.Segmentation & key).fetch1("KEY"), shape)
    for mask_id, image_mask in zip(mask_ids, weights):
        rois.add_roi(image_mask=image_mask, mask_id=int(mask_id))
    return rois


def _series(ophys, container: str, name: str, data: np.ndarray, region, fps: float, description: str, unit: str):
    from pynwb.ophys import DfOverF, Fluorescence

    interface = {"Fluorescence": Fluorescence, "DfOverF": DfOverF}[container](name=container)
    ophys.add(interface)
    interface.create_roi_response_series(
        name=name,
        data=data.astype(np.float32),
        rois=region,
        unit=unit,
        rate=fps,
        starting_time=0.0,
        description=description,
    )


def _spikes(ophys, key: dict, unit_ids: list, region, fps: float) -> None:
    from pynwb.ophys import Fluorescence

    from . import spikes

    methods = sorted((spikes.Activity & key).keys(), key=lambda k: k["spike_method_hash"])
    if not methods:
        return
    interface = Fluorescence(name="InferredSpikes")
    ophys.add(interface)
    for method in methods:
        row = (spikes.SpikeMethod & method).fetch1()
        by_unit = {u["unit_id"]: u["spikes"] for u in (spikes.Activity.Unit & method & key).to_dicts()}
        data = np.stack([np.asarray(by_unit[u], np.float32) for u in unit_ids], axis=1)
        interface.create_roi_response_series(
            name=f"spikes_{method['spike_method_hash'][:8]}",
            data=data,
            rois=region,
            unit="spikes per frame",
            rate=fps,
            starting_time=0.0,
            description=f"{row['builder']} {row['config']}",
        )


def _trials(nwbfile, key: dict, fps: float) -> None:
    from . import imaging

    trials = (imaging.Trial & key).to_dicts(order_by="trial_idx")
    if not trials:
        return
    for name, description in (
        ("trial_idx", "Trial.trial_idx"),
        ("image_id", "global stimulus image id"),
        ("onset_frame", "first frame of the presentation"),
        ("duration_frames", "frames the image was shown"),
    ):
        nwbfile.add_trial_column(name=name, description=description)
    for t in trials:
        nwbfile.add_trial(
            start_time=t["onset_frame"] / fps,
            stop_time=(t["onset_frame"] + t["duration_frames"]) / fps,
            **{k: int(t[k]) for k in ("trial_idx", "image_id", "onset_frame", "duration_frames")},
        )
