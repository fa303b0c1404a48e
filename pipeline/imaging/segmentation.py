"""Soma segmentation on a denoised movie: seeds from the local correlation image, masks by regression.

The smooth neuropil and background are removed by subtracting a spatially blurred copy of
every frame; each pixel's trace is then centred. Seeds are peaks of the local correlation
image (mean correlation of a pixel with its 8 neighbours). Each seed's trace (the mean of the
3x3 pixels around it) is regressed out of every pixel in a window around it: the regression
weights are the cell's spatial footprint, and the mask is the connected set of pixels around
the seed whose weight is at least ``mask_threshold`` of the peak weight. Seeds are taken in
order of correlation; a seed inside an accepted mask is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.imaging.frames import FrameSource, as_source


@dataclass
class Segmentation:
    """Cells found in a movie.

    Attributes
    ----------
    masks : (cells, height, width) bool
    weights : (cells, height, width) float32
        Spatial footprints (regression weights, >= 0, 0 outside the mask), peak 1.
    centers : (cells, 2) float32
        Weighted centroid (y, x) of each mask, pixels.
    correlation_image : (height, width) float32
    scores : (cells,) float32
        Correlation-image value at each cell's seed.
    """

    masks: np.ndarray
    weights: np.ndarray
    centers: np.ndarray
    correlation_image: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])


_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _neighbours(h: int, w: int, dy: int, dx: int) -> tuple[slice, slice, slice, slice]:
    """Slices (ys, xs, yd, xd) pairing every pixel with its neighbour at (+dy, +dx)."""
    return slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)), slice(dy, h), slice(max(0, dx), w - max(0, -dx))


def _highpass(block: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame of a (n, height, width) block minus its spatial blur (sigma pixels), float32."""
    out = np.empty(block.shape, dtype=np.float32)
    for t, frame in enumerate(block):
        frame = np.asarray(frame, dtype=np.float32)
        out[t] = frame - ndimage.gaussian_filter(frame, sigma, mode="reflect")
    return out


def _blocks(source: FrameSource, sigma: float | None, mean: np.ndarray | None):
    """The source's blocks, high-passed when ``sigma`` is given, minus ``mean`` when given."""
    for _start, block in source.blocks():
        block = _highpass(block, sigma) if sigma is not None else np.asarray(block, dtype=np.float32)
        yield block - mean[None] if mean is not None else block


def _correlation(source: FrameSource, sigma: float | None = None, mean: np.ndarray | None = None) -> np.ndarray:
    """Mean Pearson correlation of each pixel with its 8 neighbours, from sums over frame blocks."""
    n_t, h, w = source.shape
    squares = np.zeros((h, w))
    products = [np.zeros((h, w)) for _ in _DIRECTIONS]
    for block in _blocks(source, sigma, mean):
        squares += np.einsum("tij,tij->ij", block, block, dtype=np.float64)
        for (dy, dx), total in zip(_DIRECTIONS, products):
            ys, xs, yd, xd = _neighbours(h, w, dy, dx)
            total[ys, xs] += np.einsum("tij,tij->ij", block[:, ys, xs], block[:, yd, xd], dtype=np.float64)
    sd = np.sqrt(squares / n_t)
    sd = np.where(sd > 0, sd, 1.0)
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for (dy, dx), summed in zip(_DIRECTIONS, products):
        ys, xs, yd, xd = _neighbours(h, w, dy, dx)
        c = summed[ys, xs] / n_t / (sd[ys, xs] * sd[yd, xd])
        total[ys, xs] += c
        count[ys, xs] += 1
        total[yd, xd] += c
        count[yd, xd] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def correlation_image(movie: np.ndarray | FrameSource) -> np.ndarray:
    """Mean Pearson correlation of each pixel's trace with its 8 neighbours, (height, width).

    ``movie`` (frames, height, width), an array or a ``FrameSource`` (read a block at a time),
    must be centred in time.
    """
    return _correlation(as_source(movie))


def _footprints(
    source: FrameSource, sigma: float, mean: np.ndarray, peaks: np.ndarray, win: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every seed's regression over a (2 win + 1)^2 window, summed over frame blocks.

    Returns ``(numerators (P, K, K), energies (P,))``: sum over time of the seed trace (mean
    of the 3x3 pixels around the peak, within the image) times each window pixel's trace,
    and of the seed trace squared. Window pixels outside the image are 0.
    """
    n_t, h, w = source.shape
    k = 2 * win + 1
    n_peaks = len(peaks)
    numerators = np.zeros((n_peaks, k * k))
    energies = np.zeros(n_peaks)
    if not n_peaks:
        return numerators.reshape(0, k, k), energies
    py, px = peaks[:, 0], peaks[:, 1]
    # pixels of the 3x3 seed inside the image, per peak
    inside = (np.minimum(py + 2, h) - np.maximum(py - 1, 0)) * (np.minimum(px + 2, w) - np.maximum(px - 1, 0))
    rows = max(1, (32 * 2**20) // (n_peaks * k * k * 4))  # frames per gather: ~32 MiB of windows
    for block in _blocks(source, sigma, mean):
        padded = np.pad(block, ((0, 0), (win, win), (win, win)))
        view = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
        for start in range(0, len(block), rows):
            windows = view[start : start + rows, py, px]  # (n, P, k, k)
            seeds = windows[:, :, win - 1 : win + 2, win - 1 : win + 2].sum(axis=(2, 3)) / inside  # (n, P)
            flat = windows.reshape(len(windows), n_peaks, k * k)
            numerators += np.einsum("tp,tpq->pq", seeds, flat, dtype=np.float64)
            energies += np.einsum("tp,tp->p", seeds, seeds, dtype=np.float64)
    return numerators.reshape(n_peaks, k, k), energies


def segment(
    movie: np.ndarray | FrameSource,
    *,
    cell_radius: float = 3.0,
    background_sigma: float = 6.0,
    min_correlation: float = 0.3,
    mask_threshold: float = 0.5,
    min_area: float = 0.5,
    max_area: float = 2.0,
    max_surround: float = 0.3,
    max_cells: int = 2000,
) -> Segmentation:
    """Find somata in a (denoised) movie.

    Parameters
    ----------
    movie
        (frames, height, width) float array, ideally denoised, or a ``FrameSource`` (such as
        ``PMDResult.frames()``): read three times a block of frames at a time, so memory
        holds the images and one block, never the movie.
    cell_radius
        Expected soma radius (pixels): seeds are at least this far apart and masks are
        searched within 3 radii of their seed.
    background_sigma
        Sigma (pixels) of the blur whose subtraction removes neuropil and background.
    min_correlation
        Smallest local correlation of a seed.
    mask_threshold
        A pixel belongs to the mask where its footprint weight is at least this fraction of
        the peak weight.
    min_area, max_area
        Accepted mask sizes, as multiples of the expected area ``pi * cell_radius**2``.
    max_surround
        Largest mean footprint weight (fraction of the peak) in the 2-pixel ring around a
        mask: a soma's footprint ends at its edge, a smooth neuropil bump's does not.
    max_cells
        Most cells returned.

    Returns
    -------
    Segmentation
    """
    from skimage.feature import peak_local_max

    source = as_source(movie)
    if source.shape[0] < 2:
        raise ValueError(f"movie has shape {source.shape} (expected (frames >= 2, height, width))")
    n_t, h, w = source.shape
    # three passes over the frames: the high-passed movie's mean, the correlation image, the
    # seeds' regressions; a block of frames at a time, never the whole movie
    mean = np.zeros((h, w))
    for block in _blocks(source, background_sigma, None):
        mean += block.sum(axis=0, dtype=np.float64)
    mean = (mean / n_t).astype(np.float32)
    corr = _correlation(source, background_sigma, mean)
    peaks = peak_local_max(
        corr, min_distance=max(1, int(round(cell_radius))), threshold_abs=min_correlation, exclude_border=False
    )
    order = np.argsort(-corr[peaks[:, 0], peaks[:, 1]], kind="stable")
    peaks = peaks[order]
    win = int(np.ceil(3 * cell_radius))
    numerators, energies = _footprints(source, background_sigma, mean, peaks, win)
    area_range = (min_area * np.pi * cell_radius**2, max_area * np.pi * cell_radius**2)
    taken = np.zeros((h, w), dtype=bool)
    masks, weights, centers, scores = [], [], [], []
    for (py, px), numerator, energy in zip(peaks, numerators, energies):
        if len(masks) >= max_cells:
            break
        if taken[py, px]:
            continue
        y0, y1 = max(0, py - win), min(h, py + win + 1)
        x0, x1 = max(0, px - win), min(w, px + win + 1)
        if energy <= 0:
            continue
        amp = (numerator / energy)[y0 - py + win : y1 - py + win, x0 - px + win : x1 - px + win]
        peak = float(amp[py - y0, px - x0])
        if peak <= 0:
            continue
        above = (amp >= mask_threshold * peak) & ~taken[y0:y1, x0:x1]
        labels, _ = ndimage.label(above)
        label = labels[py - y0, px - x0]
        if label == 0:
            continue
        region = labels == label
        area = int(region.sum())
        if not area_range[0] <= area <= area_range[1]:
            continue
        ring = ndimage.binary_dilation(region, iterations=2) & ~region
        if ring.any() and float(np.clip(amp[ring], 0, None).mean()) > max_surround * peak:
            continue
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y1, x0:x1] = region
        weight = np.zeros((h, w), dtype=np.float32)
        weight[y0:y1, x0:x1] = np.where(region, np.clip(amp / peak, 0, None), 0.0)
        taken |= mask
        yy, xx = np.nonzero(mask)
        wv = weight[yy, xx]
        masks.append(mask)
        weights.append(weight)
        centers.append(((yy * wv).sum() / wv.sum(), (xx * wv).sum() / wv.sum()))
        scores.append(corr[py, px])
    n = len(masks)
    return Segmentation(
        masks=np.asarray(masks, dtype=bool).reshape(n, h, w),
        weights=np.asarray(weights, dtype=np.float32).reshape(n, h, w),
        centers=np.asarray(centers, dtype=np.float32).reshape(n, 2),
        correlation_image=corr,
        scores=np.asarray(scores, dtype=np.float32),
    )


def match_masks(found: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> dict:
    """Match found masks to true masks one-to-one by intersection over union.

    Parameters
    ----------
    found, truth
        (n, height, width) and (m, height, width) boolean masks.
    min_iou
        A pair matches when its IoU is at least this.

    Returns
    -------
    dict
        ``recall`` (matched / m), ``precision`` (matched / n), ``pairs`` ((k, 2) int indices
        found, truth), ``iou`` ((k,) IoU of the pairs). Greedy by decreasing IoU (with IoU >= 0.5
        a mask can overlap at most one other by more than half, so greedy is optimal).
    """
    f = found.reshape(found.shape[0], -1).astype(np.float32)
    t = truth.reshape(truth.shape[0], -1).astype(np.float32)
    inter = f @ t.T
    union = f.sum(1)[:, None] + t.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    pairs, values = [], []
    used_f, used_t = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < min_iou:
            break
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        pairs.append((i, j))
        values.append(iou[i, j])
    k = len(pairs)
    return {
        "recall": k / truth.shape[0] if truth.shape[0] else float("nan"),
        "precision": k / found.shape[0] if found.shape[0] else float("nan"),
        "pairs": np.asarray(pairs, dtype=np.int64).reshape(k, 2),
        "iou": np.asarray(values, dtype=np.float64),
    }
