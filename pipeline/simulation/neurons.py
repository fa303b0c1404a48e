"""The ground-truth receptive-field model of simulated visual-cortex neurons.

Each neuron is one of a few *feature types* (a Gabor "simple" unit or a quadrature-pair energy
"complex" unit with a given spatial frequency, envelope size, aspect ratio and phase), rotated
to its own preferred orientation and placed at its own position. Neurons of one type share the
same feature at different orientations, which is what a rotation-equivariant model can exploit.
A neuron's expected response to an image is a rectified, smoothly thresholded filter output,
multiplied by a gain that some neurons take from running speed and pupil size; the eye
position (pupil centre) shifts the image on the retina, i.e. all receptive fields together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

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

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to_dict(self) -> dict[str, np.ndarray]:
        """All parameters as arrays (for ``np.savez``); ``from_dict`` inverts it."""
        return {k: np.asarray(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data) -> "Neurons":
        values = {f.name: np.asarray(data[f.name]) for f in fields(cls)}
        values["height"] = int(values["height"])
        values["width"] = int(values["width"])
        return cls(**values)


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
    return neurons


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
            f"neuron_rates: images have shape {images.shape} "
            f"(expected (n, {neurons.height}, {neurons.width}))"
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
