"""A simulated video experiment with ground truth: natural movies, spatio-temporal neurons, latent state.

The stimulus is a natural movie: a window that drifts smoothly over one of scikit-image's
pictures and cuts to another picture now and then (``natural_movie``). Every neuron has a
Gabor receptive field (simple: rectified linear; complex: energy of a quadrature pair) and a
biphasic temporal kernel of a few frames. A few slow latent processes (AR(1) over frames)
modulate the population multiplicatively, each neuron with its own loadings; some drive the
measured behaviour (running speed, pupil dilation), the others are hidden. Responses are
Poisson counts per frame of

    rate[n, t] = exp(bias[n] + stimulus_gain[n] * drive[n, t] + loadings[n] . latents[t])

This is the ground truth that the video models (``pipeline.sysid.video``) are checked against:
the rates (the noiseless prediction), the latents and which latent drives which behaviour.
``VideoExperiment.filetree()`` gives the Sensorium 2023 "dynamic" layout.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.simulation.stimuli import source_images

LATENT_KINDS = ("running", "pupil", "hidden")


@dataclass
class VideoExperiment:
    """Simulated video trials and their ground truth.

    Attributes
    ----------
    videos : (trials, frames, height, width) float32 grey levels in [0, 255]
    responses : (trials, frames, neurons) float32 spike counts per frame
    behavior : (trials, frames, 2) float32 pupil dilation (pixels), running speed (cm/s)
    pupil_center : (trials, frames, 2) float32 eye position (pixels; moves no receptive field)
    tiers : (trials,) str train / validation / test; test videos are shown in repeats
    video_ids : (trials,) int64 which movie a trial showed (repeats share it)
    rates : (trials, frames, neurons) float32 expected counts (the oracle's prediction)
    latents : (trials, frames, n_latents) float32 the latent processes (unit variance)
    latent_kinds : (n_latents,) str ``running``, ``pupil`` or ``hidden``
    loadings : (neurons, n_latents) float32
    filters : (neurons, 2, height, width) float32 quadrature pair (simple cells use [:, 0])
    temporal : (neurons, kernel_frames) float32 temporal kernels (index 0 = same frame)
    complex : (neurons,) bool
    fps : float
    """

    videos: np.ndarray
    responses: np.ndarray
    behavior: np.ndarray
    pupil_center: np.ndarray
    tiers: np.ndarray
    video_ids: np.ndarray
    rates: np.ndarray
    latents: np.ndarray
    latent_kinds: np.ndarray
    loadings: np.ndarray
    filters: np.ndarray
    temporal: np.ndarray
    complex: np.ndarray
    fps: float
    params: dict = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[2])

    def filetree(self):
        """The experiment as a ``pipeline.sysid.video.VideoTree`` (ground truth under meta)."""
        from pipeline.sysid.video import VideoTree

        n = self.n_neurons
        return VideoTree(
            videos=self.videos,
            responses=self.responses,
            behavior=self.behavior,
            pupil_center=self.pupil_center,
            tiers=self.tiers,
            video_ids=self.video_ids,
            trial_idx=np.arange(self.n_trials, dtype=np.int64),
            neurons={
                "unit_ids": np.arange(1, n + 1, dtype=np.int64),
                "cell_motor_coordinates": np.zeros((n, 3), dtype=np.float32),
            },
            meta={
                "ground_truth/rates": self.rates,
                "ground_truth/latents": self.latents,
                "ground_truth/latent_kinds": self.latent_kinds.astype(str),
                "ground_truth/loadings": self.loadings,
                "ground_truth/filters": self.filters,
                "ground_truth/temporal": self.temporal,
                "ground_truth/complex": self.complex,
            },
        )


def _smooth_walk(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A smooth zero-mean signal of unit standard deviation (Gaussian-filtered white noise)."""
    pad = int(4 * sigma) + 1
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), sigma)[pad : pad + n]
    return x / (x.std() + 1e-12)


def natural_movie(
    n_frames: int, height: int, width: int, rng: np.random.Generator, *, cut_every: int = 30, speed: float = 0.5
) -> np.ndarray:
    """A movie of a window drifting smoothly over natural pictures, cutting to another picture now and then.

    Each shot (``cut_every`` frames on average) picks a picture, a zoom (the window spans 3/8
    to 3/4 of the picture) and a start; the window then drifts with a smooth velocity of about
    ``speed`` output pixels per frame, slowed where the drift would leave the picture. Frames
    are sampled with bilinear interpolation after a Gaussian blur matched to the zoom (no
    aliasing).

    Returns
    -------
    (n_frames, height, width) float32 grey levels in [0, 255]
    """
    sources = source_images()
    movie = np.empty((n_frames, height, width), dtype=np.float32)
    t = 0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    while t < n_frames:
        length = min(n_frames - t, max(4, int(rng.exponential(cut_every)) + 4))
        picture = sources[int(rng.integers(len(sources)))]
        ph, pw = picture.shape
        zoom = float(rng.uniform(1.5, 3.0)) * min(ph / (height * 4.0), pw / (width * 4.0))
        blurred = ndimage.gaussian_filter(picture, max(zoom * 0.5, 0.0))
        span_y, span_x = height * zoom, width * zoom
        path_y = np.cumsum(_smooth_walk(rng, length, 8.0)) * speed * zoom
        path_x = np.cumsum(_smooth_walk(rng, length, 8.0)) * speed * zoom
        # a drift that leaves the window inside the picture: slowed down when it would not
        for path, room in ((path_y, ph - span_y), (path_x, pw - span_x)):
            extent = path.max() - path.min()
            if extent > 0.9 * max(room, 0.0):
                path *= 0.9 * max(room, 0.0) / extent
        low_y, high_y = -path_y.min(), ph - span_y - path_y.max()
        low_x, high_x = -path_x.min(), pw - span_x - path_x.max()
        start_y = rng.uniform(low_y, high_y)
        start_x = rng.uniform(low_x, high_x)
        for k in range(length):
            coords = [start_y + path_y[k] + yy * zoom, start_x + path_x[k] + xx * zoom]
            movie[t + k] = ndimage.map_coordinates(blurred, coords, order=1, mode="nearest")
        t += length
    return movie


def _gabors(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """(n, 2, height, width) quadrature pairs of unit norm, no response to mean luminance."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x0 = rng.uniform(0.25, 0.75, n)[:, None, None] * width
    y0 = rng.uniform(0.25, 0.75, n)[:, None, None] * height
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    sigma = rng.uniform(0.09, 0.15, n)[:, None, None] * height
    frequency = rng.uniform(0.6, 1.2, n)[:, None, None] / (4 * sigma)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    across = np.cos(theta) * (xx - x0) + np.sin(theta) * (yy - y0)
    along = -np.sin(theta) * (xx - x0) + np.cos(theta) * (yy - y0)
    envelope = np.exp(-0.5 * (across**2 + (along / 1.3) ** 2) / sigma**2)
    arg = 2 * np.pi * frequency * across + phase
    pair = np.stack([envelope * np.cos(arg), envelope * np.sin(arg)], axis=1)
    pair -= pair.mean(axis=(2, 3), keepdims=True)
    pair /= np.linalg.norm(pair.reshape(n, 2, -1), axis=2)[..., None, None]
    return pair


def _temporal_kernels(rng: np.random.Generator, n: int, frames: int) -> np.ndarray:
    """(n, frames) biphasic kernels (a fast positive lobe, a slower negative one), unit L2 norm."""
    lag = np.arange(frames, dtype=np.float64)[None, :]
    fast = rng.uniform(1.0, 2.0, n)[:, None]
    slow = fast * rng.uniform(1.8, 2.5, n)[:, None]
    depth = rng.uniform(0.3, 0.7, n)[:, None]
    kernel = (lag / fast) * np.exp(1 - lag / fast) - depth * (lag / slow) * np.exp(1 - lag / slow)
    return kernel / np.linalg.norm(kernel, axis=1, keepdims=True)


def _ar1(rng: np.random.Generator, shape: tuple[int, int], tau: np.ndarray) -> np.ndarray:
    """(trials, frames, k) stationary AR(1) processes of unit variance and time constants ``tau`` (frames)."""
    trials, frames = shape
    a = np.exp(-1.0 / np.asarray(tau, dtype=np.float64))
    noise = rng.standard_normal((trials, frames, len(a))) * np.sqrt(1 - a**2)
    out = np.empty_like(noise)
    out[:, 0] = rng.standard_normal((trials, len(a)))
    for t in range(1, frames):
        out[:, t] = a * out[:, t - 1] + noise[:, t]
    return out


def simulate_video(
    seed: int = 0,
    *,
    n_neurons: int = 150,
    n_train: int = 240,
    n_validation: int = 30,
    n_test_videos: int = 5,
    test_repeats: int = 6,
    frames: int = 60,
    height: int = 18,
    width: int = 32,
    fps: float = 30.0,
    kernel_frames: int = 8,
    latent_kinds: tuple[str, ...] = ("running", "pupil", "hidden", "hidden"),
    latent_tau: float = 30.0,
    latent_strength: float = 0.5,
    stimulus_gain: tuple[float, float] = (0.4, 0.8),
    mean_rate: float = 1.0,
    complex_fraction: float = 0.5,
) -> VideoExperiment:
    """Simulate a population of ``n_neurons`` watching natural movies, with latent state and behaviour.

    Parameters
    ----------
    seed
        Seed of every random draw.
    n_neurons
        Neurons.
    n_train, n_validation
        Trials with distinct movies in the train and validation tiers.
    n_test_videos, test_repeats
        The test tier: ``n_test_videos`` movies, each shown ``test_repeats`` times (each
        repeat with its own latent state and behaviour, as in a real recording).
    frames, height, width, fps
        Frames per trial, frame size (pixels) and frame rate.
    kernel_frames
        Length of the temporal kernels (frames of history a neuron integrates).
    latent_kinds
        One entry per latent process: ``running`` (drives running speed), ``pupil`` (drives
        pupil dilation) or ``hidden`` (drives no measured behaviour).
    latent_tau
        Time constant of the latents (frames); each latent's is this times 0.7 .. 1.5.
    latent_strength
        Standard deviation of the loadings (the log-rate change per unit of latent).
    stimulus_gain
        Range of the neurons' gains on their standardized stimulus drive (log-rate units).
    mean_rate
        Typical expected count per frame (sets every neuron's bias).
    complex_fraction
        Fraction of complex (energy-model) cells.

    Returns
    -------
    VideoExperiment
    """
    params = dict(locals())
    unknown = sorted(set(latent_kinds) - set(LATENT_KINDS))
    if unknown:
        raise ValueError(f"latent_kinds {unknown} (expected each of {list(LATENT_KINDS)})")
    if min(n_neurons, n_train, n_validation, n_test_videos, test_repeats) < 1 or frames < kernel_frames:
        raise ValueError(
            f"simulate_video: n_neurons={n_neurons}, n_train={n_train}, n_validation={n_validation}, "
            f"n_test_videos={n_test_videos}, test_repeats={test_repeats}, frames={frames} "
            f"(expected every count >= 1 and frames >= kernel_frames={kernel_frames})"
        )
    rng = np.random.default_rng(seed)
    n_movies = n_train + n_validation + n_test_videos
    # each movie gets kernel_frames - 1 frames of history before the trial starts
    pre = kernel_frames - 1
    movies = natural_movie(n_movies * (frames + pre), height, width, rng).reshape(n_movies, frames + pre, height, width)

    filters = _gabors(rng, n_neurons, height, width)
    temporal = _temporal_kernels(rng, n_neurons, kernel_frames)
    is_complex = rng.random(n_neurons) < complex_fraction

    # stimulus drive of every movie: spatial projections, then the temporal kernel (causal)
    contrast = (movies - 128.0) / 64.0
    projections = np.einsum("mthw,nchw->mtnc", contrast, filters, optimize=True)  # (movies, T+pre, n, 2)
    filtered = np.zeros((n_movies, frames, n_neurons, 2))
    for lag in range(kernel_frames):
        filtered += temporal[None, None, :, lag, None] * projections[:, pre - lag : pre - lag + frames]
    energy = np.sqrt((filtered**2).sum(-1))
    drive = np.where(is_complex[None, None], energy, np.maximum(filtered[..., 0], 0.0))
    drive = (drive - drive.mean((0, 1))) / (drive.std((0, 1)) + 1e-12)

    # trials: train and validation movies once each, test movies in repeats, in random order
    video_ids = np.concatenate(
        [np.arange(n_train + n_validation), np.repeat(np.arange(n_train + n_validation, n_movies), test_repeats)]
    )
    tiers = np.array(["train"] * n_train + ["validation"] * n_validation + ["test"] * (n_test_videos * test_repeats))
    order = rng.permutation(len(video_ids))
    video_ids, tiers = video_ids[order], tiers[order]
    n_trials = len(video_ids)

    k = len(latent_kinds)
    taus = latent_tau * rng.uniform(0.7, 1.5, k)
    latents = _ar1(rng, (n_trials, frames), taus)
    loadings = rng.normal(0.0, latent_strength, (n_neurons, k))
    gains = rng.uniform(*stimulus_gain, n_neurons)
    log_rate = gains[None, None] * drive[video_ids] + latents @ loadings.T
    # biases that give every neuron about ``mean_rate`` counts per frame on average
    log_rate += np.log(mean_rate) - np.log(np.exp(log_rate).mean((0, 1)))[None, None]
    rates = np.exp(log_rate)
    responses = rng.poisson(rates).astype(np.float32)

    # behaviour: running and pupil follow their latents (plus their own noise); the eye moves freely
    kinds = np.asarray(latent_kinds)
    running_drive = latents[..., kinds == "running"].sum(-1) if (kinds == "running").any() else 0.0
    pupil_drive = latents[..., kinds == "pupil"].sum(-1) if (kinds == "pupil").any() else 0.0
    running = 8.0 * np.log1p(np.exp(2.0 * running_drive - 0.5)) + 0.5 * np.abs(rng.standard_normal((n_trials, frames)))
    pupil = 20.0 + 3.0 * pupil_drive + 0.3 * rng.standard_normal((n_trials, frames))
    behavior = np.stack([pupil * np.ones((n_trials, frames)), running * np.ones((n_trials, frames))], -1)
    eye = np.stack([_smooth_walk(rng, n_trials * frames, 5.0).reshape(n_trials, frames) for _ in range(2)], -1)

    return VideoExperiment(
        videos=movies[video_ids, pre:].astype(np.float32),
        responses=responses,
        behavior=behavior.astype(np.float32),
        pupil_center=(2.0 * eye).astype(np.float32),
        tiers=tiers,
        video_ids=video_ids.astype(np.int64),
        rates=rates.astype(np.float32),
        latents=latents.astype(np.float32),
        latent_kinds=kinds,
        loadings=loadings.astype(np.float32),
        filters=filters.astype(np.float32),
        temporal=temporal.astype(np.float32),
        complex=is_complex,
        fps=float(fps),
        params=params,
    )


#: what ``simulate_video_scan`` passes on to the scan simulator's recording
_RECORDING_PARAMETERS = (
    "tau",
    "dff_per_spike",
    "cell_brightness",
    "neuropil_brightness",
    "neuropil_contamination",
    "background",
    "read_noise",
)


def simulate_video_scan(
    seed: int = 0,
    *,
    n_cells: int = 40,
    height: int = 64,
    width: int = 64,
    cell_radius: float = 3.0,
    movie_height: int = 18,
    movie_width: int = 32,
    frames: int = 40,
    n_train: int = 60,
    n_validation: int = 10,
    n_test_videos: int = 4,
    test_repeats: int = 4,
    fps: float = 30.0,
    mean_rate: float = 0.15,
    max_shift: int = 2,
    keep_clean: bool = False,
    **recording,
):
    """A two-photon scan of ``n_cells`` neurons of ``simulate_video`` watching movies, trial after trial.

    The movies are shown back to back, one movie frame per imaging frame; the neurons' expected
    counts per frame (``mean_rate`` on average) drive Poisson spikes, which the scan simulator
    (``pipeline.simulation.experiment``) images through the indicator, somata, neuropil,
    motion and noise. Behaviour (running, pupil) follows the latents over the whole session.

    Returns
    -------
    pipeline.simulation.experiment.Experiment
        ``images`` holds the movies ``(n_movies, frames, movie_height, movie_width)`` (trial
        ``image_id`` = movie id), ``rates`` the expected counts ``(trials, frames, cells)``,
        ``neurons`` is None and ``video`` the ``VideoExperiment`` (latents, filters, loadings).
        Further keyword arguments go to the recording (``tau``, ``read_noise``, ...).
    """
    from pipeline.simulation.experiment import Experiment, _record, simulate_experiment, soma_footprints

    params = dict(locals())
    clip = simulate_video(
        seed,
        n_neurons=n_cells,
        n_train=n_train,
        n_validation=n_validation,
        n_test_videos=n_test_videos,
        test_repeats=test_repeats,
        frames=frames,
        height=movie_height,
        width=movie_width,
        fps=fps,
        mean_rate=mean_rate,
    )
    rng = np.random.default_rng([seed, 1])
    margin = 2 * int(max_shift)
    fp_padded = soma_footprints(
        n_cells, height + 2 * margin, width + 2 * margin, cell_radius, rng, margin=margin + int(max_shift)
    )
    footprints = fp_padded[:, margin : margin + height, margin : margin + width]
    expected = clip.rates.reshape(-1, n_cells).T  # (cells, frames): trials back to back
    spikes = rng.poisson(expected).astype(np.int32)
    # the recording's defaults are simulate_experiment's: one scan simulator, one set of defaults
    defaults = {name: inspect.signature(simulate_experiment).parameters[name].default for name in _RECORDING_PARAMETERS}
    unknown = sorted(set(recording) - set(defaults))
    if unknown:
        raise TypeError(
            f"simulate_video_scan: unknown recording parameter(s) {unknown} (expected some of {sorted(defaults)})"
        )
    recorded = _record(
        rng,
        spikes,
        fp_padded,
        height=height,
        width=width,
        margin=margin,
        fps=fps,
        max_shift=max_shift,
        keep_clean=keep_clean,
        **{**defaults, **recording},
    )
    n_movies = int(clip.video_ids.max()) + 1
    first = {int(v): i for i, v in reversed(list(enumerate(clip.video_ids)))}
    movies = np.stack([clip.videos[first[v]] for v in range(n_movies)])
    behavior = {
        "running": clip.behavior[..., 1].ravel(),
        "pupil_radius": clip.behavior[..., 0].ravel(),
        "pupil_x": clip.pupil_center[..., 0].ravel(),
        "pupil_y": clip.pupil_center[..., 1].ravel(),
    }
    return Experiment(
        movie=recorded["movie"],
        fps=float(fps),
        trials={
            "image_id": clip.video_ids.astype(np.int64),
            "onset_frame": np.arange(clip.n_trials, dtype=np.int64) * frames,
            "duration_frames": np.full(clip.n_trials, frames, dtype=np.int64),
        },
        images=movies,
        behavior=behavior,
        footprints=np.ascontiguousarray(footprints),
        masks=footprints >= 0.5,
        calcium=recorded["calcium"],
        fluorescence=recorded["fluorescence"],
        spikes=spikes,
        rates=clip.rates,
        shifts=recorded["shifts"],
        neurons=None,
        clean=recorded["clean"],
        params=params,
        video=clip,
    )
