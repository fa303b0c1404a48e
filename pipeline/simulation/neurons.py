"""The ground-truth receptive-field model of simulated visual-cortex neurons.

Each neuron is one of a few *feature types* (a Gabor "simple" unit or a quadrature-pair energy
"complex" unit with a given spatial frequency, envelope size, aspect ratio and phase), rotated
to its own preferred orientation and placed at its own position. Neurons of one type share the
same feature at different orientations, which is what a rotation-equivariant model can exploit.
A neuron's expected response to an image is a rectified, smoothly thresholded filter output,
multiplied by a gain that some neurons take from running speed and pupil size; the eye
position (pupil centre) shifts the image on the retina, i.e. all receptive fields together.
Optionally (``normalized_fraction > 0``) some neurons divide their filter output by the energy
of a normalization pool: quadrature pairs at their position and frequency at four
orientations (Heeger 1992), the ground truth a divisive-normalization model should find.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace

import numpy as np

#: image grey levels are mapped to contrast as (image - IMAGE_MEAN) / IMAGE_SCALE
IMAGE_MEAN = 128.0
IMAGE_SCALE = 64.0
#: reference values of the behaviour modulation: speed (cm/s) and pupil radius (pixels)
RUNNING_SCALE = 10.0
PUPIL_REFERENCE = 20.0
PUPIL_SCALE = 5.0
#: eye position (pupil_center, pixels of the eye camera) -> retinal image shift (stimulus pixels)
SHIFT_PER_PUPIL_PIXEL = 0.1


@dataclass
class Neurons:
    """Parameters of a simulated population, one entry per neuron.

    Attributes
    ----------
    height, width : int
        Size of the images the population sees (pixels).
    complex : (n,) bool
        True for an energy (complex) unit, False for a Gabor (simple) unit.
    feature_type : (n,) int
        Index of the shared feature (frequency, envelope, aspect, phase, simple/complex).
    x, y : (n,) float
        Receptive-field centre (pixels; x along width, y along height).
    orientation : (n,) float
        Preferred orientation (radians, [0, pi)).
    frequency : (n,) float
        Spatial frequency (cycles per pixel).
    sigma : (n,) float
        Gaussian envelope width across the grating (pixels).
    aspect : (n,) float
        Envelope length along the grating / across it.
    phase : (n,) float
        Gabor phase (radians); complex units use phase and phase + pi/2.
    scale : (n,) float
        Standard deviation of the filter output over reference natural images.
    threshold : (n,) float
        Threshold of the output nonlinearity (in units of ``scale``).
    gain : (n,) float
        Peak gain (expected spikes per unit of thresholded drive).
    baseline : (n,) float
        Spontaneous expected count.
    running_gain, pupil_gain : (n,) float
        Log-gain per unit of normalized running speed / pupil size (0: not modulated).
    norm_strength : (n,) float
        Weight of the normalization pool (0: not normalized). A normalized neuron's drive is
        ``norm_gain * z / (1 + norm_strength * (P / norm_scale)^2)``, P the pool energy.
    norm_scale : (n,) float
        Root mean square of the pool energy over reference natural images (1 if not normalized).
    norm_gain : (n,) float
        Rescales the normalized drive to unit spread over the reference images (1 if not).
    """

    height: int
    width: int
    complex: np.ndarray
    feature_type: np.ndarray
    x: np.ndarray
    y: np.ndarray
    orientation: np.ndarray
    frequency: np.ndarray
    sigma: np.ndarray
    aspect: np.ndarray
    phase: np.ndarray
    scale: np.ndarray
    threshold: np.ndarray
    gain: np.ndarray
    baseline: np.ndarray
    running_gain: np.ndarray
    pupil_gain: np.ndarray
    norm_strength: np.ndarray | None = None
    norm_scale: np.ndarray | None = None
    norm_gain: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self)
        if self.norm_strength is None:
            self.norm_strength = np.zeros(n)
        for name in ("norm_scale", "norm_gain"):
            if getattr(self, name) is None:
                setattr(self, name, np.ones(n))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def normalized(self) -> np.ndarray:
        """(n,) bool: the neurons with a normalization pool."""
        return np.asarray(self.norm_strength) > 0

    def to_dict(self) -> dict[str, np.ndarray]:
        """All parameters as arrays (for ``np.savez``); ``from_dict`` inverts it.

        A population without normalization leaves the ``norm_*`` arrays out, so that it is
        stored exactly as before they existed.
        """
        out = {k: np.asarray(v) for k, v in asdict(self).items()}
        if not self.normalized.any():
            for name in NORM_FIELDS:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data) -> "Neurons":
        values = {f.name: np.asarray(data[f.name]) for f in fields(cls) if f.name in data or f.default is MISSING}
        values["height"] = int(values["height"])
        values["width"] = int(values["width"])
        return cls(**values)

    def subset(self, index: np.ndarray) -> "Neurons":
        """The neurons at ``index`` (an index array or boolean mask)."""
        arrays = {
            f.name: np.asarray(getattr(self, f.name))[index] for f in fields(self) if f.name not in ("height", "width")
        }
        return replace(self, **arrays)


#: the parameters of the normalization pool (absent from populations without one)
NORM_FIELDS = ("norm_strength", "norm_scale", "norm_gain")
#: orientations of the pool's quadrature pairs, relative to the neuron's own (radians)
POOL_ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: the pool's envelope, relative to the neuron's own
POOL_SIGMA_FACTOR = 1.5


def make_neurons(
    n: int,
    height: int = 36,
    width: int = 64,
    seed: int = 0,
    *,
    n_types: int = 4,
    complex_fraction: float = 0.5,
    modulated_fraction: float = 0.5,
    mean_rate: float = 3.0,
    margin: float = 0.2,
    normalized_fraction: float = 0.0,
    norm_strength: tuple[float, float] = (2.0, 4.0),
) -> Neurons:
    """A random population of ground-truth neurons, deterministic given ``seed``.

    Parameters
    ----------
    n
        Number of neurons.
    height, width
        Image size (pixels).
    seed
        Seed of every random choice.
    n_types
        Number of shared feature types; each neuron takes one, at its own orientation.
    complex_fraction
        Fraction of feature types that are energy (complex) units.
    modulated_fraction
        Fraction of neurons whose gain depends on running speed and pupil size.
    mean_rate
        Target scale of the expected count (spikes per trial) of a typical neuron.
    margin
        Fraction of the image on each side kept free of receptive-field centres.
    normalized_fraction
        Fraction of neurons with a divisive normalization pool (0: none, and the population
        is exactly the one this function made before pools existed).
    norm_strength
        Range of the pool weights of the normalized neurons (uniform).

    Returns
    -------
    Neurons
    """
    if n < 1 or n_types < 1:
        raise ValueError(f"make_neurons: n={n}, n_types={n_types} (expected both >= 1)")
    rng = np.random.default_rng(seed)
    size = min(height, width)
    # feature types: frequencies give 2-6 cycles over the smaller image side / 4
    n_complex = int(round(complex_fraction * n_types))
    type_complex = np.zeros(n_types, dtype=bool)
    type_complex[rng.permutation(n_types)[:n_complex]] = True
    type_frequency = rng.uniform(1.5, 3.5, n_types) / (size / 2.0)
    type_sigma = rng.uniform(0.35, 0.55, n_types) / type_frequency
    type_aspect = rng.uniform(1.0, 2.0, n_types)
    type_phase = rng.uniform(0, 2 * np.pi, n_types)

    feature_type = rng.integers(0, n_types, n)
    x = rng.uniform(margin * width, (1 - margin) * width, n)
    y = rng.uniform(margin * height, (1 - margin) * height, n)
    orientation = rng.uniform(0, np.pi, n)
    modulated = rng.random(n) < modulated_fraction
    running_gain = np.where(modulated, rng.uniform(0.2, 0.6, n), 0.0)
    pupil_gain = np.where(modulated, rng.uniform(-0.2, 0.3, n), 0.0)

    neurons = Neurons(
        height=int(height),
        width=int(width),
        complex=type_complex[feature_type],
        feature_type=feature_type.astype(np.int64),
        x=x,
        y=y,
        orientation=orientation,
        frequency=type_frequency[feature_type],
        sigma=type_sigma[feature_type],
        aspect=type_aspect[feature_type],
        phase=type_phase[feature_type],
        scale=np.ones(n),
        threshold=rng.uniform(0.5, 1.5, n),
        gain=mean_rate * rng.uniform(0.5, 1.5, n),
        baseline=mean_rate * rng.uniform(0.02, 0.1, n),
        running_gain=running_gain,
        pupil_gain=pupil_gain,
    )
    # calibrate each neuron's drive to unit spread over a fixed set of natural images, so that
    # threshold and gain mean the same for every feature type
    from .stimuli import natural_images

    reference = natural_images(256, height, width, seed=7919)
    neurons.scale = np.maximum(_drive(neurons, _contrast(reference)).std(axis=0), 1e-6)
    if normalized_fraction > 0:
        _add_pools(neurons, _contrast(reference), normalized_fraction, norm_strength, seed)
    return neurons


def _add_pools(
    neurons: Neurons, reference: np.ndarray, fraction: float, strength: tuple[float, float], seed: int
) -> None:
    """Give a random ``fraction`` of the neurons a normalization pool, calibrated on ``reference``."""
    if not 0.0 < fraction <= 1.0 or not 0.0 < strength[0] <= strength[1]:
        raise ValueError(
            f"make_neurons: normalized_fraction={fraction}, norm_strength={strength} "
            "(expected a fraction in (0, 1] and 0 < low <= high)"
        )
    # a generator of its own: the other parameters stay those of a population without pools
    rng = np.random.default_rng([seed, 2])
    n = len(neurons)
    chosen = rng.random(n) < fraction
    neurons.norm_strength = np.where(chosen, rng.uniform(strength[0], strength[1], n), 0.0)
    index = np.flatnonzero(chosen)
    pool = pool_energy(neurons.subset(index), reference)
    neurons.norm_scale[index] = np.maximum(np.sqrt((pool**2).mean(axis=0)), 1e-6)
    z = _drive(neurons.subset(index), reference) / neurons.scale[index]
    divided = z / (1.0 + neurons.norm_strength[index] * (pool / neurons.norm_scale[index]) ** 2)
    neurons.norm_gain[index] = 1.0 / np.maximum(divided.std(axis=0), 1e-6)


def pool_energy(neurons: Neurons, contrast: np.ndarray) -> np.ndarray:
    """Energy of each neuron's normalization pool: sqrt of the summed squared quadrature outputs.

    The pool is a quadrature pair at the neuron's position and frequency, with an envelope
    ``POOL_SIGMA_FACTOR`` times wider, at each of ``POOL_ORIENTATIONS`` relative to its own
    (orientation-untuned, as the contrast-gain pool of Heeger 1992).

    Returns
    -------
    (n_images, n_neurons) float64
    """
    flat = contrast.reshape(contrast.shape[0], -1)
    total = np.zeros((contrast.shape[0], len(neurons)))
    for offset in POOL_ORIENTATIONS:
        pool = replace(neurons, orientation=neurons.orientation + offset, sigma=neurons.sigma * POOL_SIGMA_FACTOR)
        rf = receptive_fields(pool).reshape(len(neurons), 2, -1)
        total += (flat @ rf[:, 0].T) ** 2 + (flat @ rf[:, 1].T) ** 2
    return np.sqrt(total)


def receptive_fields(neurons: Neurons) -> np.ndarray:
    """The quadrature pair of filters of every neuron.

    Returns
    -------
    numpy.ndarray
        (n, 2, height, width) float64; simple units use only ``[:, 0]``. Each filter has unit
        L2 norm.
    """
    yy, xx = np.mgrid[0 : neurons.height, 0 : neurons.width].astype(np.float64)
    dx = xx[None] - neurons.x[:, None, None]
    dy = yy[None] - neurons.y[:, None, None]
    c = np.cos(neurons.orientation)[:, None, None]
    s = np.sin(neurons.orientation)[:, None, None]
    across = c * dx + s * dy  # along the grating's wave vector
    along = -s * dx + c * dy
    sigma = neurons.sigma[:, None, None]
    envelope = np.exp(-0.5 * (across**2 / sigma**2 + along**2 / (sigma * neurons.aspect[:, None, None]) ** 2))
    arg = 2 * np.pi * neurons.frequency[:, None, None] * across + neurons.phase[:, None, None]
    pair = np.stack([envelope * np.cos(arg), envelope * np.sin(arg)], axis=1)
    pair -= pair.mean(axis=(2, 3), keepdims=True)  # no response to mean luminance
    pair /= np.maximum(np.linalg.norm(pair.reshape(len(neurons), 2, -1), axis=2), 1e-12)[..., None, None]
    return pair


def _contrast(images: np.ndarray) -> np.ndarray:
    return (np.asarray(images, dtype=np.float64) - IMAGE_MEAN) / IMAGE_SCALE


def _drive(neurons: Neurons, contrast: np.ndarray) -> np.ndarray:
    """Linear (simple) or energy (complex) filter output, (n_images, n_neurons)."""
    rf = receptive_fields(neurons).reshape(len(neurons), 2, -1)
    flat = contrast.reshape(contrast.shape[0], -1)
    even = flat @ rf[:, 0].T
    odd = flat @ rf[:, 1].T
    energy = np.sqrt(even**2 + odd**2)
    return np.where(neurons.complex[None, :], energy, even)


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate every image by a sub-pixel shift (Fourier shift, periodic borders).

    Parameters
    ----------
    images
        (n, height, width).
    shifts
        (n, 2) shift in pixels as (dy, dx); positive moves content down / right.
    """
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape
    fy = np.fft.fftfreq(h)[None, :, None]
    fx = np.fft.fftfreq(w)[None, None, :]
    dy = np.asarray(shifts, dtype=np.float64)[:, 0, None, None]
    dx = np.asarray(shifts, dtype=np.float64)[:, 1, None, None]
    phase = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return np.real(np.fft.ifft2(np.fft.fft2(images) * phase))


def neuron_rates(
    neurons: Neurons,
    images: np.ndarray,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
) -> np.ndarray:
    """Expected spike counts of every neuron for every image (one trial each).

    Parameters
    ----------
    neurons
        The population (``make_neurons``).
    images
        (n_trials, height, width) grey levels in [0, 255] (``(n, 1, H, W)`` is accepted too).
    behavior
        (n_trials, 3) pupil radius (pixels), its derivative, running speed (cm/s), or None
        (no modulation).
    pupil_center
        (n_trials, 2) eye position (x, y) in eye-camera pixels relative to the mean, or None
        (centred). Shifts the image on the retina by ``SHIFT_PER_PUPIL_PIXEL`` per pixel.

    Returns
    -------
    numpy.ndarray
        (n_trials, n_neurons) float64, non-negative expected counts per trial.
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (neurons.height, neurons.width):
        raise ValueError(
            f"neuron_rates: images have shape {images.shape} (expected (n, {neurons.height}, {neurons.width}))"
        )
    n = images.shape[0]
    contrast = _contrast(images)
    if pupil_center is not None:
        pupil_center = np.asarray(pupil_center, dtype=np.float64)
        if pupil_center.shape != (n, 2):
            raise ValueError(f"neuron_rates: pupil_center has shape {pupil_center.shape} (expected ({n}, 2))")
        # eye moves right/down by (x, y) -> the image moves the other way on the retina
        shifts = -SHIFT_PER_PUPIL_PIXEL * pupil_center[:, ::-1]
        contrast = shift_images(contrast, shifts)
    z = _drive(neurons, contrast) / neurons.scale[None, :]
    normalized = np.flatnonzero(neurons.normalized)
    if normalized.size:
        pool = pool_energy(neurons.subset(normalized), contrast) / neurons.norm_scale[normalized]
        z[:, normalized] = (
            neurons.norm_gain[normalized] * z[:, normalized] / (1.0 + neurons.norm_strength[normalized] * pool**2)
        )
    k = 4.0  # sharpness of the soft threshold
    drive = np.logaddexp(0.0, k * (z - neurons.threshold[None, :])) / k
    rates = neurons.baseline[None, :] + neurons.gain[None, :] * drive
    if behavior is not None:
        behavior = np.asarray(behavior, dtype=np.float64)
        if behavior.shape != (n, 3):
            raise ValueError(f"neuron_rates: behavior has shape {behavior.shape} (expected ({n}, 3))")
        running = np.tanh(np.maximum(behavior[:, 2], 0.0) / RUNNING_SCALE)
        pupil = (behavior[:, 0] - PUPIL_REFERENCE) / PUPIL_SCALE
        log_gain = running[:, None] * neurons.running_gain[None, :] + pupil[:, None] * neurons.pupil_gain[None, :]
        rates = rates * np.exp(np.clip(log_gain, -3.0, 3.0))
    return rates
