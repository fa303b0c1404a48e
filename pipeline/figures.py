"""Figures of a scan and of a trained model, from arrays: the notebooks and `pipeline report` draw these.

Every function takes numpy arrays (no database) and draws into matplotlib axes it is given or
creates. Images are drawn with their first row at the top (``origin="upper"``, as the movie
is stored: ``(frames, height, width)``), each with a colorbar and a scale bar.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        # no screen on workers and CI: draw off-screen unless a notebook chose its backend
        try:
            import matplotlib.pyplot as plt  # noqa: F401
        except ImportError:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scale_bar(ax, length: float, label: str, *, color: str = "w", fraction: float = 0.04) -> None:
    """A horizontal scale bar of ``length`` data units in the lower left corner of an image axis."""
    x0, x1 = sorted(ax.get_xlim())
    y_bottom, y_top = ax.get_ylim()
    height = abs(y_bottom - y_top)
    x = x0 + 0.05 * (x1 - x0)
    y = max(y_bottom, y_top) - 0.07 * height  # images: y grows downwards
    ax.plot([x, x + length], [y, y], color=color, lw=3, solid_capstyle="butt")
    ax.text(x + length / 2, y - fraction * height, label, color=color, ha="center", va="bottom", fontsize=8)


def show_image(
    ax, image: np.ndarray, title: str, *, cmap: str = "gray", label: str = "", pixel_size_um: float | None = None
) -> Any:
    """``image`` (height, width) with a colorbar labelled ``label`` and a scale bar; returns the image artist."""
    plt = _pyplot()
    artist = ax.imshow(image, cmap=cmap, origin="upper", interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = plt.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
    if label:
        bar.set_label(label)
    width = image.shape[1]
    if pixel_size_um:
        microns = _round_length(0.25 * width * pixel_size_um)
        scale_bar(ax, microns / pixel_size_um, f"{microns:g} µm")
    else:
        pixels = _round_length(0.25 * width)
        scale_bar(ax, pixels, f"{pixels:g} px")
    return artist


def _round_length(value: float) -> float:
    """The largest of 1, 2 or 5 times a power of ten not above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** np.floor(np.log10(value))
    return float(max(m * power for m in (1, 2, 5) if m * power <= value))


def stacked_traces(
    ax, t: np.ndarray, traces: np.ndarray, labels: Sequence[str], *, ylabel: str, spacing: float | None = None
) -> None:
    """Traces (n, time) one above the other, each labelled at its left end, with a vertical scale bar."""
    traces = np.asarray(traces, dtype=float)
    spacing = spacing or 1.2 * float(np.nanmax(np.nanmax(traces, axis=1) - np.nanmin(traces, axis=1)) or 1.0)
    for i, (trace, label) in enumerate(zip(traces, labels)):
        offset = -i * spacing
        ax.plot(t, trace + offset, lw=0.7)
        ax.text(t[0], offset + 0.55 * spacing, label, fontsize=8, va="center", ha="left")
    ax.set_yticks([])
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(t[0], t[-1])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def scan_figure(
    mean_image: np.ndarray,
    correlation_image: np.ndarray,
    masks: np.ndarray,
    shifts: np.ndarray,
    dff: np.ndarray,
    fps: float,
    *,
    title: str = "",
    pixel_size_um: float | None = None,
    n_traces: int = 8,
):
    """One page on a scan: cells over the mean image, the correlation image, motion, traces.

    Parameters
    ----------
    mean_image, correlation_image
        (height, width).
    masks
        (cells, height, width) weights or booleans.
    shifts
        (frames, 2) motion-correction shifts (y, x) in pixels.
    dff
        (cells, frames) dF/F.
    fps
        Frames per second.
    """
    plt = _pyplot()
    fig = plt.figure(figsize=(13, 8), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, 0])
    show_image(
        ax,
        mean_image,
        f"{len(masks)} cells over the mean image",
        label="fluorescence (a.u.)",
        pixel_size_um=pixel_size_um,
    )
    if len(masks):
        ax.contour((np.asarray(masks) > 0).any(axis=0), levels=[0.5], colors="tab:red", linewidths=0.6)
    show_image(
        fig.add_subplot(grid[0, 1]),
        correlation_image,
        "local correlation image",
        cmap="magma",
        label="correlation with neighbours",
        pixel_size_um=pixel_size_um,
    )
    ax = fig.add_subplot(grid[0, 2])
    t = np.arange(len(shifts)) / fps
    ax.plot(t, shifts[:, 0], lw=0.7, label="y")
    ax.plot(t, shifts[:, 1], lw=0.7, label="x")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("shift (pixels)")
    ax.set_title("rigid motion correction")
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    shown = np.asarray(dff)[:n_traces]
    stacked_traces(
        ax,
        np.arange(shown.shape[1]) / fps,
        shown,
        [f"cell {i}" for i in range(len(shown))],
        ylabel="dF/F (offset per cell)",
    )
    ax.set_title(f"dF/F of the first {len(shown)} cells")
    if title:
        fig.suptitle(title)
    return fig


def learning_curve(ax, history: Sequence[dict]) -> None:
    """Training loss and validation correlation per epoch (``TrainedModel.output["history"]``)."""
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    other = ax.twinx()
    other.plot(epochs, [h["validation_correlation"] for h in history], color="tab:orange", lw=1)
    other.set_ylabel("validation correlation", color="tab:orange")
    ax.set_title("learning curve")


def model_figure(
    history: Sequence[dict],
    unit_scores: np.ndarray,
    responses: np.ndarray,
    predictions: np.ndarray,
    image_ids: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    title: str = "",
    oracle: float | None = None,
):
    """One page on a trained model: learning curve, per-unit scores, predicted vs recorded responses.

    Parameters
    ----------
    history
        Per-epoch dicts with ``epoch``, ``loss``, ``validation_correlation``.
    unit_scores
        (neurons,) correlation to average per unit.
    responses, predictions
        (trials, neurons) on the test tier.
    image_ids
        (trials,) image of each trial (repeats averaged).
    positions
        Optional (neurons, 2) readout positions (x, y) in [-1, 1].
    oracle
        Optional ceiling (e.g. the noiseless model's correlation to average), drawn as a line.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    learning_curve(axes[0, 0], history)
    ax = axes[0, 1]
    ax.hist(unit_scores, bins=30, color="tab:gray")
    ax.axvline(float(np.mean(unit_scores)), color="k", lw=1, label=f"mean {np.mean(unit_scores):.3f}")
    if oracle is not None:
        ax.axvline(oracle, color="tab:red", ls="--", lw=1, label=f"oracle {oracle:.3f}")
    ax.set_xlabel("correlation to average, per unit")
    ax.set_ylabel("units")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("per-unit scores")
    images, inverse = np.unique(image_ids, return_inverse=True)
    mean_response = np.stack([responses[inverse == i].mean(axis=0) for i in range(len(images))])
    mean_prediction = np.stack([predictions[inverse == i].mean(axis=0) for i in range(len(images))])
    best = np.argsort(unit_scores)[::-1][:3]
    ax = axes[1, 0]
    order = np.arange(len(images))
    for n, unit in enumerate(best):
        color = f"C{n}"
        ax.plot(order, mean_response[:, unit], "o", ms=3, color=color, label=f"unit {unit} recorded")
        ax.plot(order, mean_prediction[:, unit], "_", ms=12, mew=2, color=color, label=f"unit {unit} predicted")
    ax.set_xlabel("test image")
    ax.set_ylabel("response (mean over repeats)")
    ax.set_title("predicted vs recorded, best 3 units")
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(0, -0.15))
    ax = axes[1, 1]
    if positions is not None:
        points = ax.scatter(positions[:, 0], positions[:, 1], c=unit_scores, s=8, cmap="viridis")
        ax.set_xlim(-1, 1)
        ax.set_ylim(1, -1)  # image coordinates: y grows downwards
        ax.set_xlabel("readout x (image width = 2)")
        ax.set_ylabel("readout y")
        ax.set_title("receptive-field positions")
        plt.colorbar(points, ax=ax, label="correlation to average")
    else:
        ax.scatter(mean_response.ravel(), mean_prediction.ravel(), s=2, alpha=0.3)
        ax.set_xlabel("recorded (mean over repeats)")
        ax.set_ylabel("predicted")
        ax.set_title("all units and test images")
    if title:
        fig.suptitle(title)
    return fig
