"""`pipeline report KEY`: a one-page summary of a scan or a trained model, as PNG or HTML.

The rows are fetched here; the drawing is ``pipeline.figures`` (arrays in, a figure out), the
same functions the notebooks use.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np


class ReportError(LookupError):
    """A key that does not name exactly one scan or trained model."""


def _one(table, key: dict) -> dict:
    rows = (table & key).keys()
    if len(rows) != 1:
        raise ReportError(f"{key} matches {len(rows)} rows of {table.__name__} (expected exactly one)")
    return rows[0]


def scan_figure(key: dict):
    """The figure of one scan's processing (``Traces`` row restricted by ``key``)."""
    from pipeline import figures

    from . import imaging

    full = _one(imaging.Traces, key)
    motion = (imaging.MotionCorrection & full).fetch1()
    template = np.asarray(motion["template"])
    correlation = np.asarray((imaging.Segmentation & full).fetch1("correlation_image"))
    _ids, masks = imaging.Segmentation.weights(full, template.shape)
    units = (imaging.Traces.Unit & full).to_dicts(order_by="unit_id")
    dff = np.stack([u["dff"] for u in units]) if units else np.zeros((0, len(motion["shifts"])))
    fps = float((imaging.Traces & full).fetch1("fps"))
    title = "scan " + " ".join(f"{k}={full[k]}" for k in ("animal_id", "session", "scan_idx"))
    return figures.scan_figure(template, correlation, masks, np.asarray(motion["shifts"]), dff, fps, title=title)


def model_figure(key: dict, device: str | None = "cpu"):
    """The figure of one trained model: learning curve, per-unit scores, predictions on the test tier."""
    from pipeline import figures
    from pipeline.sysid import metrics

    from . import sysid, values
    from .workers.status import describe_key

    full = _one(sysid.TrainedModel, key)
    output = values.json_value((sysid.TrainedModel & full).fetch1("output"))
    model, loaders = sysid.load_model(full, device=device)
    data_key = full["dataset_id"]
    test = loaders["test"][data_key]
    responses, predictions, image_ids = metrics.predict(model, test, data_key)
    scores = metrics.correlation_to_average(responses, predictions, image_ids)
    readouts = getattr(model, "readout", None)
    readout = readouts[data_key] if readouts is not None and data_key in readouts else None
    positions = None
    if readout is not None and hasattr(readout, "mu"):
        positions = readout.mu.detach().cpu().reshape(-1, 2).clamp(-1, 1).numpy()
    return figures.model_figure(
        output.get("history", []),
        scores,
        responses,
        predictions,
        image_ids,
        positions=positions,
        title=describe_key(full),
    )


def write_report(key: dict, path: str | Path, kind: str = "scan", device: str | None = "cpu") -> Path:
    """Write the summary of the scan (``kind="scan"``) or trained model (``"model"``) ``key`` names to ``path``.

    ``path`` ends in ``.png`` (the page) or ``.html`` (the page with the full key above it).
    """
    from . import sysid

    path = Path(path)
    if path.suffix.lower() not in (".png", ".html"):
        raise ReportError(f"report path {str(path)!r} must end in .png or .html")
    if kind not in ("scan", "model"):
        raise ReportError(f"report kind {kind!r} is not one of 'scan', 'model'")
    figure = model_figure(key, device) if kind == "model" else scan_figure(key)
    full = _one(sysid.TrainedModel, key) if kind == "model" else None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        path.write_bytes(buffer.getvalue())
    else:
        path.write_text(_html(kind, full or key, buffer.getvalue()))
    return path


def _html(kind: str, key: dict[str, Any], png: bytes) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in key.items())
    image = base64.b64encode(png).decode("ascii")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{kind} report</title></head><body>"
        f"<h1>{kind} report</h1><table>{rows}</table><img src='data:image/png;base64,{image}' "
        "style='max-width:100%'></body></html>"
    )
