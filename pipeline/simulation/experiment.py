"""A simulated two-photon experiment with its ground truth: cells, spikes, calcium, a noisy movie.

Neurons of the ground-truth receptive-field model (``pipeline.simulation.neurons``) see
natural images (``pipeline.simulation.stimuli``) in trials; their expected spike counts per
trial drive Poisson spikes per frame, an AR(1) indicator turns spikes into calcium, soma
footprints and an out-of-focus neuropil turn calcium into fluorescence, and the field of
view is imaged with small rigid motion and Poisson-Gaussian noise. Everything is
deterministic given ``seed`` and the parameters; everything that was drawn is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.imaging.io import write_scanimage_tiff
from pipeline.simulation.neurons import Neurons, make_neurons, neuron_rates
from pipeline.simulation.stimuli import natural_images

__all__ = ["Experiment", "simulate_experiment", "write_scanimage_tiff", "soma_footprints"]


@dataclass
class Experiment:
    """A simulated scan and its ground truth.

    Attributes
    ----------
    movie : (frames, height, width) float32
        The recorded movie (photon counts plus read noise), with motion.
    fps : float
        Frame rate (Hz).
    trials : dict of (trials,) int arrays
        ``image_id``, ``onset_frame``, ``duration_frames``.
    images : (n_images, image_height, image_width) float32
        The stimulus images in [0, 255]; ``image_id`` indexes them.
    behavior : dict of (frames,) float32 arrays
        ``running`` (cm/s), ``pupil_radius`` (pixels), ``pupil_x``, ``pupil_y`` (pixels).
    footprints : (cells, height, width) float32
        Soma footprints in [0, 1] in the motion-free frame of reference.
    masks : (cells, height, width) bool
        The true soma masks (footprint >= 0.5).
    calcium : (cells, frames) float32
        Indicator concentration (spike-triggered, AR(1) decay), arbitrary units.
    fluorescence : (cells, frames) float32
        Each soma's own fluorescence (photons per pixel per frame), without neuropil.
    spikes : (cells, frames) int
        Spike counts per frame.
    rates : (trials, cells) float64
        Expected spike counts per trial from the receptive-field model.
    shifts : (frames, 2) float32
        The rigid (y, x) shift, in pixels, that registers each frame back to the
        motion-free frame (what motion correction should recover).
    neurons : Neurons or None
        The receptive-field parameters of every cell (None for a video scan: see ``video``).
    clean : (frames, height, width) float32 or None
        The noiseless movie (with motion), when ``keep_clean``.
    video : VideoExperiment or None
        A video scan's ground truth (``pipeline.simulation.video.simulate_video_scan``):
        ``images`` are then its movies and ``rates`` are per frame.
    """

    movie: np.ndarray
    fps: float
    trials: dict
    images: np.ndarray
    behavior: dict
    footprints: np.ndarray
    masks: np.ndarray
    calcium: np.ndarray
    fluorescence: np.ndarray
    spikes: np.ndarray
    rates: np.ndarray
    shifts: np.ndarray
    neurons: Neurons
    clean: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    video: Any = None  # the VideoExperiment of a video scan (pipeline.simulation.video.simulate_video_scan)

    def write_tiff(self, path: str | Path) -> Path:
        """Write the movie as a ScanImage-2016-like TIFF (see ``write_scanimage_tiff``)."""
        return write_scanimage_tiff(path, self.movie, self.fps)


def soma_footprints(
    n_cells: int, height: int, width: int, radius: float, rng: np.random.Generator, margin: int = 0
) -> np.ndarray:
    """Non-overlapping, slightly elliptical soft discs, ``(cells, height, width)`` in [0, 1].

    Centres are random sites of a hexagonal lattice of spacing ``2 * radius + 2``, each
    jittered by up to half a pixel, so that somata never overlap (they touch at most);
    ``margin`` pixels at the border stay free. Raises ValueError if the field of view cannot
    hold ``n_cells``.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    spacing = 2 * radius + 2.0
    lo = margin + radius + 0.5
    sites = []
    for row, cy in enumerate(np.arange(lo, height - lo, spacing * np.sqrt(3) / 2)):
        for cx in np.arange(lo + (spacing / 2 if row % 2 else 0.0), width - lo, spacing):
            sites.append((cy, cx))
    if len(sites) < n_cells:
        raise ValueError(
            f"cannot place {n_cells} somata of radius {radius} in {height}x{width} pixels "
            f"(room for {len(sites)}; expected a larger field, smaller cells or fewer cells)"
        )
    chosen = rng.choice(len(sites), size=n_cells, replace=False)
    centres = [(sites[i][0] + rng.uniform(-0.5, 0.5), sites[i][1] + rng.uniform(-0.5, 0.5)) for i in chosen]
    out = np.empty((n_cells, height, width), dtype=np.float32)
    for i, (cy, cx) in enumerate(centres):
        angle = rng.uniform(0, np.pi)
        elong = rng.uniform(1.0, 1.25)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / np.sqrt(elong)
        v = (-dy * np.sin(angle) + dx * np.cos(angle)) * np.sqrt(elong)
        d = np.sqrt(u**2 + v**2)
        out[i] = 1.0 / (1.0 + np.exp((d - radius) / 0.6))
    return out


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + int(6 * sigma)), sigma)[int(3 * sigma) :][:n]
    return x / (x.std() + 1e-12)


def _behavior(rng: np.random.Generator, n_frames: int, fps: float) -> dict:
    # running in bouts: a slow latent above threshold; pupil dilates with running
    latent = _smooth_noise(rng, n_frames, 3 * fps)
    running = np.where(latent > 0.5, 15.0 * (latent - 0.5), 0.0) + 0.3 * np.abs(_smooth_noise(rng, n_frames, fps / 2))
    pupil = 20.0 + 3.0 * _smooth_noise(rng, n_frames, 2 * fps) + 0.2 * running
    return {
        "running": running.astype(np.float32),
        "pupil_radius": pupil.astype(np.float32),
        "pupil_x": (2.0 * _smooth_noise(rng, n_frames, fps)).astype(np.float32),
        "pupil_y": (1.0 * _smooth_noise(rng, n_frames, fps)).astype(np.float32),
    }


def simulate_experiment(
    seed: int = 0,
    *,
    n_cells: int = 200,
    height: int = 128,
    width: int = 128,
    n_frames: int = 2000,
    fps: float = 15.0,
    cell_radius: float = 3.0,
    n_images: int = 60,
    n_test_images: int = 5,
    test_repeats: int = 5,
    image_height: int = 36,
    image_width: int = 64,
    stimulus_frames: int = 8,
    gap_frames: int = 7,
    tau: float = 0.8,
    dff_per_spike: float = 0.35,
    cell_brightness: tuple[float, float] = (12.0, 24.0),
    neuropil_brightness: float = 8.0,
    neuropil_contamination: float = 0.7,
    background: float = 4.0,
    read_noise: float = 2.0,
    max_shift: int = 2,
    spontaneous_rate: float = 0.2,
    keep_clean: bool = False,
) -> Experiment:
    """Simulate a two-photon scan of neurons responding to natural images.

    Parameters
    ----------
    seed
        Seed of every random draw.
    n_cells, height, width, n_frames
        Cells, field of view (pixels) and frames.
    fps
        Frame rate (Hz).
    cell_radius
        Soma radius (pixels).
    n_images, image_height, image_width
        Distinct stimulus images and their size.
    n_test_images, test_repeats
        The first ``n_test_images`` images are shown ``test_repeats`` times each (the test
        tier of a dataset built from the scan); every other image is shown once. Trials come
        in random order; the movie holds ``n_frames // (stimulus_frames + gap_frames)`` of
        them, and grey follows once the design is used up.
    stimulus_frames, gap_frames
        Frames an image is shown, then frames of grey before the next trial.
    tau
        Indicator decay time constant (s).
    dff_per_spike
        Fluorescence change per unit of calcium (one spike), as a fraction of the baseline.
    cell_brightness
        Range of the somata's baseline brightness (photons per pixel per frame).
    neuropil_brightness
        Mean brightness of the out-of-focus neuropil (photons per pixel per frame).
    neuropil_contamination
        Fraction of the neuropil that reaches a soma's pixels (the soma occludes the rest).
    background
        Constant background (photons per pixel per frame).
    read_noise
        Standard deviation of the Gaussian detector noise (photons).
    max_shift
        Range of the rigid motion: an integer random walk within +-max_shift pixels, then
        centred on its median position (the motion-free reference); 0 for no motion.
    spontaneous_rate
        Spontaneous spikes per frame as a fraction of each neuron's baseline count per
        stimulus frame (the model's baseline is per trial).
    keep_clean
        Keep the noiseless movie as ``.clean`` (doubles the memory).

    Returns
    -------
    Experiment
    """
    params = dict(locals())
    if n_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"simulate_experiment: n_frames={n_frames}, size {height}x{width} (expected >= 1, >= 8x8)")
    rng = np.random.default_rng(seed)
    # room for the walk after it is centred on its median (up to 2 * max_shift from 0)
    margin = 2 * int(max_shift)
    hp, wp = height + 2 * margin, width + 2 * margin

    # cells in the padded field, at least max_shift from the view's edges; the motion-free
    # view is the centre crop
    fp_padded = soma_footprints(n_cells, hp, wp, cell_radius, rng, margin=margin + int(max_shift))
    footprints = fp_padded[:, margin : margin + height, margin : margin + width]

    # stimulus trials and behaviour
    period = stimulus_frames + gap_frames
    n_trials = max(n_frames // period, 1) if n_frames >= stimulus_frames else 0
    images = natural_images(n_images, image_height, image_width, seed=seed)
    # the design of a system-identification scan: a few test images in repeats (for the noise
    # ceiling), every other image once; in random order, cut to what the movie holds
    n_test = min(max(int(n_test_images), 0), n_images)
    design = np.concatenate([np.repeat(np.arange(n_test), max(int(test_repeats), 1)), np.arange(n_test, n_images)])
    image_id = rng.permutation(design)[:n_trials]
    n_trials = len(image_id)
    onsets = np.arange(n_trials) * period + gap_frames // 2
    onsets = onsets[onsets + stimulus_frames <= n_frames]
    n_trials = len(onsets)
    image_id = image_id[:n_trials]
    behavior = _behavior(rng, n_frames, fps)

    neurons = make_neurons(n_cells, image_height, image_width, seed=seed)
    if n_trials:
        idx = onsets[:, None] + np.arange(stimulus_frames)[None, :]
        radius = behavior["pupil_radius"][idx].mean(1)
        trial_behavior = np.stack(
            [radius, np.gradient(radius) if n_trials > 1 else np.zeros(1), behavior["running"][idx].mean(1)], axis=1
        )
        pupil_center = np.stack([behavior["pupil_x"][idx].mean(1), behavior["pupil_y"][idx].mean(1)], axis=1)
        rates = neuron_rates(neurons, images[image_id], behavior=trial_behavior, pupil_center=pupil_center)
    else:
        rates = np.zeros((0, n_cells))

    # spikes per frame: a trial's expected count spread over its stimulus frames
    expected = np.tile(spontaneous_rate * neurons.baseline[None, :] / max(stimulus_frames, 1), (n_frames, 1))
    for k, onset in enumerate(onsets):
        expected[onset : onset + stimulus_frames] += rates[k][None, :] / stimulus_frames
    spikes = rng.poisson(expected).T.astype(np.int32)  # (cells, frames)

    recorded = _record(
        rng,
        spikes,
        fp_padded,
        height=height,
        width=width,
        margin=margin,
        fps=fps,
        tau=tau,
        dff_per_spike=dff_per_spike,
        cell_brightness=cell_brightness,
        neuropil_brightness=neuropil_brightness,
        neuropil_contamination=neuropil_contamination,
        background=background,
        read_noise=read_noise,
        max_shift=max_shift,
        keep_clean=keep_clean,
    )

    return Experiment(
        movie=recorded["movie"],
        fps=float(fps),
        trials={
            "image_id": image_id.astype(np.int64),
            "onset_frame": onsets.astype(np.int64),
            "duration_frames": np.full(n_trials, stimulus_frames, dtype=np.int64),
        },
        images=images,
        behavior=behavior,
        footprints=np.ascontiguousarray(footprints),
        masks=footprints >= 0.5,
        calcium=recorded["calcium"],
        fluorescence=recorded["fluorescence"],
        spikes=spikes,
        rates=rates,
        shifts=recorded["shifts"],
        neurons=neurons,
        clean=recorded["clean"],
        params=params,
    )


def _record(
    rng: np.random.Generator,
    spikes: np.ndarray,
    fp_padded: np.ndarray,
    *,
    height: int,
    width: int,
    margin: int,
    fps: float,
    tau: float,
    dff_per_spike: float,
    cell_brightness: tuple[float, float],
    neuropil_brightness: float,
    neuropil_contamination: float,
    background: float,
    read_noise: float,
    max_shift: int,
    keep_clean: bool,
) -> dict:
    """Image spikes (cells, frames) through an AR(1) indicator, somata and neuropil into a noisy, moving movie."""
    n_cells, n_frames = spikes.shape
    hp, wp = fp_padded.shape[1:]
    decay = np.exp(-1.0 / (tau * fps))
    calcium = np.empty(spikes.shape, dtype=np.float32)
    c = np.zeros(n_cells, dtype=np.float64)
    for t in range(n_frames):
        c = decay * c + spikes[:, t]
        calcium[:, t] = c
    f0 = rng.uniform(*cell_brightness, size=n_cells).astype(np.float32)
    gain = rng.uniform(0.7, 1.3, size=n_cells).astype(np.float32) * dff_per_spike
    fluorescence = f0[:, None] * (1.0 + gain[:, None] * calcium)

    # neuropil: a smooth positive field whose brightness follows the population's activity
    np_field = ndimage.gaussian_filter(rng.standard_normal((hp, wp)), 8.0)
    np_field = neuropil_brightness * (1.0 + 0.5 * np_field / (np.abs(np_field).max() + 1e-12))
    occlusion = 1.0 - (1.0 - neuropil_contamination) * fp_padded.max(0)
    population = calcium.mean(0)
    np_time = 1.0 + 0.3 * (population - population.mean()) / (population.std() + 1e-6) * 0.5
    np_time = np.clip(np_time, 0.2, None).astype(np.float32)
    vignette = 1.0 - 0.15 * (
        ((np.arange(hp)[:, None] - hp / 2) / hp) ** 2 + ((np.arange(wp)[None, :] - wp / 2) / wp) ** 2
    )

    # rigid motion: an integer random walk within +-max_shift
    shifts = np.zeros((n_frames, 2), dtype=np.float32)
    if max_shift > 0:
        pos = np.zeros(2)
        for t in range(n_frames):
            if rng.random() < 0.1:
                pos = np.clip(pos + rng.integers(-1, 2, size=2), -max_shift, max_shift)
            shifts[t] = pos
        # the position held most of the time is the reference (as motion correction takes it)
        shifts -= np.round(np.median(shifts, axis=0))

    movie = np.empty((n_frames, height, width), dtype=np.float32)
    clean_out = np.empty_like(movie) if keep_clean else None
    fp_flat = fp_padded.reshape(n_cells, -1)
    static = (np_field * occlusion).astype(np.float32)
    chunk = 256
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        cells = (fluorescence[:, start:stop].T @ fp_flat).reshape(stop - start, hp, wp)
        frame = (cells + static[None] * np_time[start:stop, None, None] + background) * vignette[None].astype(
            np.float32
        )
        for t in range(start, stop):
            dy, dx = int(shifts[t, 0]), int(shifts[t, 1])
            view = frame[t - start, margin + dy : margin + dy + height, margin + dx : margin + dx + width]
            if keep_clean:
                clean_out[t] = view
            movie[t] = rng.poisson(np.maximum(view, 0.0)) + read_noise * rng.standard_normal(view.shape)

    return {
        "movie": movie,
        "calcium": calcium,
        "fluorescence": fluorescence.astype(np.float32),
        "shifts": shifts,
        "clean": clean_out,
    }
