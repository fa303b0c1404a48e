"""Model builders of the registry: ``fn(dataloaders, seed, *, ...config) -> Encoder``.

Shapes and numbers of neurons are read from the training loaders, one readout per data_key.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipeline import identity
from pipeline.sysid.training import set_seed

from .cores import DivisiveNormalizationCore, IdentityCore, RotationEquivariantCore, StackedCNNCore
from .encoder import Encoder
from .modulator import BehaviorModulator
from .neural_process import NeuralProcess
from .readouts import FactorizedReadout, GaussianReadout, LinearReadout
from .shifter import Shifter

# batches read per dataset to estimate mean responses for the readouts' bias
_MEAN_BATCHES = 20


def first_batch_and_mean(key: str, loader) -> tuple[dict, torch.Tensor]:
    """The first batch of a training loader and the mean response of each neuron over its first
    ``_MEAN_BATCHES`` batches (every axis but the last, the neurons', is averaged: trials, and
    frames of a video)."""
    total, count, first = None, 0, None
    for i, batch in enumerate(loader):
        first = first or batch
        responses = batch["responses"].double().reshape(-1, batch["responses"].shape[-1])
        total = responses.sum(0) if total is None else total + responses.sum(0)
        count += responses.shape[0]
        if i + 1 >= _MEAN_BATCHES:
            break
    if first is None:
        raise ValueError(f"training loader of data_key {key!r} yields no batch")
    return first, (total / count).float()


def training_loaders(dataloaders: dict) -> dict:
    """``dataloaders["train"]``, or a ValueError that says what was expected."""
    train = dataloaders.get("train") if isinstance(dataloaders, dict) else None
    if not train:
        raise ValueError("dataloaders has no 'train' loaders (expected {'train': {data_key: DataLoader}, ...})")
    return train


def dataset_shapes(dataloaders: dict) -> dict[str, dict]:
    """Per data_key of the training loaders: image shape (C, H, W), n_neurons, mean responses.

    Raises
    ------
    ValueError
        If there is no training loader or a loader yields no batch.
    """
    shapes = {}
    for key, loader in training_loaders(dataloaders).items():
        first, mean = first_batch_and_mean(key, loader)
        shapes[key] = {
            "image_shape": tuple(first["images"].shape[1:]),
            "n_neurons": int(first["responses"].shape[1]),
            "mean_activity": mean,
            "behavior_dims": int(first["behavior"].shape[1]) if first.get("behavior") is not None else 0,
        }
    image_shapes = {s["image_shape"] for s in shapes.values()}
    if len(image_shapes) != 1:
        raise ValueError(f"datasets of one shared core need one image shape, got {sorted(image_shapes)}")
    return shapes


@torch.no_grad()
def core_output_shape(core: torch.nn.Module, image_shape: tuple) -> tuple[int, int, int]:
    """(C, H', W') the core makes of one image of ``image_shape``."""
    was_training = core.training
    core.eval()
    out = core(torch.zeros(1, *image_shape))
    core.train(was_training)
    return tuple(out.shape[1:])


def _encoder(core, shapes: dict, make_readout: Callable, shifter: dict | None = None, modulator: dict | None = None):
    image_shape = next(iter(shapes.values()))["image_shape"]
    in_shape = core_output_shape(core, image_shape)
    readouts = {k: make_readout(in_shape, s["n_neurons"], s["mean_activity"]) for k, s in shapes.items()}
    shifters = {k: Shifter(**shifter) for k in shapes} if shifter is not None else None
    modulators = None
    if modulator is not None:
        missing = [k for k, s in shapes.items() if not s["behavior_dims"]]
        if missing:
            raise ValueError(f"a behaviour modulator needs behaviour in the batches; data_key(s) {missing} have none")
        modulators = {k: BehaviorModulator(s["n_neurons"], s["behavior_dims"], **modulator) for k, s in shapes.items()}
    return Encoder(core, readouts, shifters, modulators)


# what every builder's core needs to be built at all: the validation hooks of the registry
# (run at insert), so that a config such as layers=-1 never reaches a worker
_CORE = {"layers": 1, "input_kernel": 1, "hidden_kernel": 1}
_PENALTIES = ("gamma_input", "gamma_hidden", "gamma_readout")


def _limits(minimum: dict, *, above: tuple[str, ...] = (), penalties: tuple[str, ...] = _PENALTIES):
    return identity.bounds(minimum={**minimum, **{p: 0.0 for p in penalties}}, above={a: 0.0 for a in above})


def _seeded_shapes(dataloaders: dict, seed: int) -> tuple[dict, int]:
    """Seed the weights' initialization; the datasets' shapes and the images' channel count."""
    set_seed(seed)
    shapes = dataset_shapes(dataloaders)
    return shapes, next(iter(shapes.values()))["image_shape"][0]


@identity.register("model", "cnn_factorized", validate=_limits({**_CORE, "hidden_channels": 1}))
def cnn_factorized(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 32,
    layers: int = 3,
    input_kernel: int = 9,
    hidden_kernel: int = 7,
    pad_input: bool = False,
    gamma_input: float = 1.0,
    gamma_hidden: float = 0.0,
    gamma_readout: float = 1e-4,
) -> Encoder:
    """Stacked CNN core + factorized "what x where" readout (Klindt et al. 2017)."""
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = StackedCNNCore(
        channels, hidden_channels, layers, input_kernel, hidden_kernel, pad_input, gamma_input, gamma_hidden
    )
    return _encoder(core, shapes, lambda s, n, m: FactorizedReadout(s, n, gamma_readout, m))


@identity.register("model", "rotation_factorized", validate=_limits({**_CORE, "features": 1, "rotations": 1}))
def rotation_factorized(
    dataloaders: dict,
    seed: int,
    *,
    features: int = 4,
    rotations: int = 16,
    layers: int = 3,
    input_kernel: int = 9,
    hidden_kernel: int = 7,
    pad_input: bool = False,
    gamma_input: float = 1.0,
    gamma_hidden: float = 0.0,
    gamma_readout: float = 1e-4,
) -> Encoder:
    """Rotation-equivariant core (Ecker et al. 2019) + factorized readout.

    The default, 4 features x 16 rotations (64 maps, 22.5-degree steps), beat a 64-channel
    CNN core on a simulated population whose neurons share features across orientations;
    Ecker et al.'s 8 rotations leave a feature only 4 orientations in 180 degrees.
    """
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = RotationEquivariantCore(
        channels,
        features,
        rotations,
        layers,
        input_kernel,
        hidden_kernel,
        pad_input,
        gamma_input,
        gamma_hidden,
    )
    return _encoder(core, shapes, lambda s, n, m: FactorizedReadout(s, n, gamma_readout, m))


@identity.register(
    "model",
    "cnn_gaussian",
    validate=_limits(
        {
            **_CORE,
            "hidden_channels": 1,
            "init_mu_range": 0.0,
            "shifter_hidden": 1,
            "shifter_layers": 1,
            "modulator_hidden": 1,
        },
        above=("init_sigma",),
    ),
)
def cnn_gaussian(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 32,
    layers: int = 3,
    input_kernel: int = 9,
    hidden_kernel: int = 7,
    pad_input: bool = False,
    gamma_input: float = 1.0,
    gamma_hidden: float = 0.0,
    init_mu_range: float = 0.3,
    init_sigma: float = 0.1,
    gamma_readout: float = 1e-4,
    shifter: bool = False,
    shifter_hidden: int = 5,
    shifter_layers: int = 2,
    modulator: bool = False,
    modulator_hidden: int = 10,
) -> Encoder:
    """Stacked CNN core + Gaussian readout (Lurz et al. 2021), optionally with a shifter and a
    behaviour modulator (the Sensorium / Sensorium+ baseline)."""
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = StackedCNNCore(
        channels, hidden_channels, layers, input_kernel, hidden_kernel, pad_input, gamma_input, gamma_hidden
    )
    return _encoder(
        core,
        shapes,
        lambda s, n, m: GaussianReadout(s, n, init_mu_range, init_sigma, gamma_readout, m),
        shifter={"hidden": shifter_hidden, "layers": shifter_layers} if shifter else None,
        modulator={"hidden": modulator_hidden} if modulator else None,
    )


@identity.register(
    "model", "divisive_normalization", validate=_limits({**_CORE, "hidden_channels": 1, "pool_kernel": 1})
)
def divisive_normalization(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 32,
    layers: int = 1,
    input_kernel: int = 9,
    hidden_kernel: int = 5,
    pad_input: bool = True,
    norm: str = "batch",
    normalize: bool = True,
    pool: bool = True,
    pool_kernel: int = 5,
    gamma_input: float = 1.0,
    gamma_hidden: float = 0.0,
    gamma_readout: float = 1e-4,
) -> Encoder:
    """Divisive-normalization model of V1 in the manner of Burg et al. 2021.

    Convolutions (each followed by ``norm``, "batch" | "layer" | "divisive", and ELU); the
    last layer's signed linear responses are also divided by a learned, non-negative pool of
    their squares over all channels in a ``pool_kernel`` neighbourhood, with a learned
    exponent, and the readout (factorized) reads both the plain and the normalized maps
    (``DivisiveNormalizationCore``). ``normalize=False`` is the same model without the
    divisive normalization: the control; ``pool=False`` keeps the second set of maps but
    divides them by a learned constant only, the control with as many readout features.
    """
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = DivisiveNormalizationCore(
        channels,
        hidden_channels,
        layers,
        input_kernel,
        hidden_kernel,
        pad_input,
        gamma_input,
        gamma_hidden,
        norm=norm,
        pool_kernel=pool_kernel,
        normalize=normalize,
        pool=pool,
    )
    return _encoder(core, shapes, lambda s, n, m: FactorizedReadout(s, n, gamma_readout, m))


@identity.register("model", "neural_process", validate=_limits({**_CORE, "hidden_channels": 1, "encoder_hidden": 1}))
def neural_process(
    dataloaders: dict,
    seed: int,
    *,
    hidden_channels: int = 16,
    layers: int = 3,
    input_kernel: int = 9,
    hidden_kernel: int = 5,
    pad_input: bool = True,
    gamma_input: float = 1.0,
    gamma_hidden: float = 0.0,
    encoder_hidden: int = 32,
) -> NeuralProcess:
    """K-shot neural process (after Cotton, Sinz & Tolias 2020): a stacked CNN core and a set
    encoder that infers each neuron's location and feature weights from its context trials.
    Train it with ``neural_process_trainer``."""
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = StackedCNNCore(
        channels, hidden_channels, layers, input_kernel, hidden_kernel, pad_input, gamma_input, gamma_hidden
    )
    image_shape = next(iter(shapes.values()))["image_shape"]
    neurons = {key: s["n_neurons"] for key, s in shapes.items()}
    return NeuralProcess(core, neurons, core_output_shape(core, image_shape), encoder_hidden)


@identity.register(
    "model", "linear_nonlinear", validate=_limits({"downsample": 1}, penalties=("gamma_smooth", "gamma_l2"))
)
def linear_nonlinear(
    dataloaders: dict,
    seed: int,
    *,
    downsample: int = 2,
    gamma_smooth: float = 1.0,
    gamma_l2: float = 0.0,
) -> Encoder:
    """Linear-nonlinear baseline: one smooth linear filter per neuron on the (pooled) image."""
    shapes, channels = _seeded_shapes(dataloaders, seed)
    core = IdentityCore(channels, downsample)
    return _encoder(core, shapes, lambda s, n, m: LinearReadout(s, n, gamma_smooth, gamma_l2, m))
