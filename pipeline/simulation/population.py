"""A simulated population of visual-cortex neurons written as a Sensorium FileTree folder.

``simulate_population`` shows natural images (``stimuli.natural_images``) to ground-truth
neurons (``neurons.make_neurons``) on trials with simulated running and eye movements, draws
Poisson spike counts from the expected counts, and writes the result in the FileTree layout
(``pipeline.sysid.data``). Beside the data it keeps the ground truth:

- ``meta/ground_truth/rates.npy`` (n_trials, n_neurons) float32: the noiseless expected count
  of every trial (what the Poisson responses were drawn from);
- ``meta/ground_truth/neurons/<parameter>.npy``: the ``Neurons`` parameters (read back with
  ``ground_truth(path)``).

Tiers: ``train`` and ``validation`` images are shown once each; every ``test`` image is
shown ``repeats`` times (each repeat with its own behaviour), so correlation to average and
FEVE can be computed. Trials are interleaved in a seeded random order; ``trial_idx`` is the
presentation order and file ``data/<field>/<i>.npy`` is trial ``i``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .neurons import Neurons, make_neurons, neuron_rates
from .stimuli import natural_images


def simulate_behavior(n: int, seed: int = 0, *, eye_std: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-trial behaviour of a mouse on a treadmill, deterministic given ``seed``.

    Running comes in bouts (a two-state Markov chain over trials); the pupil dilates while
    running; the eye position wanders around its mean.

    Returns
    -------
    behavior : (n, 3) float32
        Pupil radius (eye-camera pixels), its derivative (pixels per trial), running speed (cm/s).
    pupil_center : (n, 2) float32
        Eye position (x, y) in eye-camera pixels relative to the mean.
    """
    rng = np.random.default_rng(seed)
    running = np.zeros(n, dtype=bool)
    state = False
    for i in range(n):
        state = rng.random() < (0.9 if state else 0.1)
        running[i] = state
    speed = np.where(running, rng.gamma(4.0, 3.0, n), np.abs(rng.normal(0.0, 0.5, n)))
    radius = np.empty(n)
    level = 20.0
    for i in range(n):  # slow relaxation towards a running-dependent level
        target = 23.0 if running[i] else 18.0
        level += 0.3 * (target - level) + rng.normal(0.0, 0.5)
        radius[i] = level
    derivative = np.diff(radius, prepend=radius[0])
    behavior = np.stack([radius, derivative, speed], axis=1).astype(np.float32)
    pupil_center = rng.normal(0.0, eye_std, (n, 2)).astype(np.float32)
    return behavior, pupil_center


def simulate_population(
    path: str | os.PathLike,
    n_neurons: int = 500,
    n_train: int = 5000,
    n_test_images: int = 100,
    repeats: int = 10,
    seed: int = 0,
    *,
    n_validation: int | None = None,
    height: int = 36,
    width: int = 64,
    n_types: int = 4,
    complex_fraction: float = 0.5,
    modulated_fraction: float = 0.5,
    mean_rate: float = 3.0,
    normalized_fraction: float = 0.0,
    with_behavior: bool = True,
    overwrite: bool = False,
) -> Path:
    """Simulate a population and write it as a FileTree folder.

    Parameters
    ----------
    path
        Destination folder.
    n_neurons
        Number of neurons.
    n_train
        Number of train images (one trial each).
    n_test_images, repeats
        The test tier: ``n_test_images`` images shown ``repeats`` times each.
    seed
        Seed of images, neurons, behaviour, trial order and Poisson noise.
    n_validation
        Number of validation images (one trial each); default ``n_train // 10``.
    height, width
        Image size (pixels).
    n_types, complex_fraction, modulated_fraction, mean_rate
        Passed to ``make_neurons``.
    normalized_fraction
        Fraction of neurons with a ground-truth divisive normalization pool (``make_neurons``;
        the default 0 gives the population this function made before pools existed). Their
        ``ground_truth/neurons/norm_strength`` is > 0.
    with_behavior
        Simulate running / pupil / eye position and write them; if False the neurons see
        centred images with no modulation and the folder has no behavior / pupil_center.
    overwrite
        Replace an existing folder.

    Returns
    -------
    pathlib.Path
        The folder written.
    """
    from pipeline.sysid.data import FileTree, write_filetree

    n_validation = n_train // 10 if n_validation is None else n_validation
    if min(n_neurons, n_train, n_test_images, repeats) < 1 or n_validation < 0:
        raise ValueError(
            f"simulate_population: n_neurons={n_neurons}, n_train={n_train}, n_validation={n_validation}, "
            f"n_test_images={n_test_images}, repeats={repeats} (expected all >= 1, validation >= 0)"
        )
    rng = np.random.default_rng([seed, 1])
    n_images = n_train + n_validation + n_test_images
    images = natural_images(n_images, height, width, seed=seed)
    neurons = make_neurons(
        n_neurons,
        height,
        width,
        seed=seed,
        n_types=n_types,
        complex_fraction=complex_fraction,
        modulated_fraction=modulated_fraction,
        mean_rate=mean_rate,
        normalized_fraction=normalized_fraction,
    )
    # image ids 0..n_images-1; the test images are repeated
    image_ids = np.concatenate(
        [np.arange(n_train + n_validation), np.repeat(np.arange(n_train + n_validation, n_images), repeats)]
    )
    tiers = np.array(
        ["train"] * n_train + ["validation"] * n_validation + ["test"] * (n_test_images * repeats), dtype="<U10"
    )
    order = rng.permutation(len(image_ids))
    image_ids, tiers = image_ids[order], tiers[order]
    n_trials = len(image_ids)

    if with_behavior:
        behavior, pupil_center = simulate_behavior(n_trials, seed=seed)
    else:
        behavior = pupil_center = None
    rates = neuron_rates(neurons, images[image_ids], behavior, pupil_center)
    responses = rng.poisson(rates).astype(np.float32)

    # retinotopy: cortical position follows receptive-field position (about 10 um per pixel)
    coordinates = np.stack(
        [neurons.x * 10.0, neurons.y * 10.0, rng.uniform(150.0, 350.0, n_neurons)], axis=1
    ) + rng.normal(0.0, 5.0, (n_neurons, 3))
    meta = {"ground_truth/rates": rates.astype(np.float32)}
    meta.update({f"ground_truth/neurons/{k}": v for k, v in neurons.to_dict().items()})
    tree = FileTree(
        images=images[image_ids][:, None],
        responses=responses,
        tiers=tiers,
        image_ids=image_ids,
        trial_idx=np.arange(n_trials),
        neurons={
            "unit_ids": np.arange(1, n_neurons + 1, dtype=np.int64),
            "area": np.array(["V1"] * n_neurons),
            "layer": np.array(["L2/3"] * n_neurons),
            "cell_motor_coordinates": coordinates.astype(np.float32),
            "animal_ids": np.full(n_neurons, seed, dtype=np.int64),
            "sessions": np.ones(n_neurons, dtype=np.int64),
            "scan_idx": np.ones(n_neurons, dtype=np.int64),
        },
        behavior=behavior,
        pupil_center=pupil_center,
        meta=meta,
    )
    return write_filetree(path, tree, overwrite=overwrite)


def ground_truth(path: str | os.PathLike) -> tuple[np.ndarray, Neurons]:
    """The noiseless rates (n_trials, n_neurons) and the ``Neurons`` of a simulated folder."""
    folder = Path(path) / "meta" / "ground_truth"
    if not (folder / "rates.npy").is_file():
        raise FileNotFoundError(f"{path}: no meta/ground_truth/rates.npy (not a simulated population?)")
    rates = np.load(folder / "rates.npy")
    params = {p.stem: np.load(p) for p in (folder / "neurons").glob("*.npy")}
    return rates, Neurons.from_dict(params)


def oracle_scores(path: str | os.PathLike) -> dict | None:
    """The test-tier scores of the noiseless rates: the ceiling any model of the folder can reach.

    Returns
    -------
    dict or None
        ``single_trial_correlation``, ``correlation_to_average``, ``feve``, ``n_units_feve``
        (see ``pipeline.sysid.metrics.test_scores``); None if the folder keeps no rates.
        Where the population is modulated by behaviour, the rates know each trial's
        behaviour, so their FEVE can exceed 1.
    """
    from pipeline.sysid import metrics
    from pipeline.sysid.data import read_filetree

    tree = read_filetree(path)
    rates = tree.meta.get("ground_truth/rates")
    if rates is None:
        return None
    test = tree.tiers == "test"
    scores = metrics.test_scores(tree.responses[test], rates[test], tree.image_ids[test])
    return {k: v for k, v in scores.items() if not k.startswith("unit_")}
