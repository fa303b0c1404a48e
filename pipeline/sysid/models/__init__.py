"""Models of visual cortex: cores, readouts, shifter, modulator, composed; and their builders."""

from .builders import (
    cnn_factorized,
    cnn_gaussian,
    core_output_shape,
    dataset_shapes,
    divisive_normalization,
    linear_nonlinear,
    neural_process,
    rotation_factorized,
)
from .cores import DivisiveNormalizationCore, IdentityCore, RotationEquivariantCore, StackedCNNCore
from .encoder import Encoder
from .modulator import BehaviorModulator
from .neural_process import NeuralProcess, SetEncoder
from .normalization import DivisiveNormalization, make_norm
from .readouts import FactorizedReadout, GaussianReadout, LinearReadout
from .regularizers import group_sparsity, laplace_smoothness
from .shifter import Shifter
from .steerable import ring_harmonics, steerable_basis
from .video import Factorized3dCore, LatentVideoModel, VideoModel, video_gaussian, video_latent

__all__ = [
    "BehaviorModulator",
    "Factorized3dCore",
    "LatentVideoModel",
    "VideoModel",
    "DivisiveNormalization",
    "DivisiveNormalizationCore",
    "Encoder",
    "FactorizedReadout",
    "GaussianReadout",
    "IdentityCore",
    "LinearReadout",
    "NeuralProcess",
    "RotationEquivariantCore",
    "SetEncoder",
    "Shifter",
    "StackedCNNCore",
    "cnn_factorized",
    "cnn_gaussian",
    "core_output_shape",
    "dataset_shapes",
    "divisive_normalization",
    "group_sparsity",
    "laplace_smoothness",
    "linear_nonlinear",
    "make_norm",
    "neural_process",
    "ring_harmonics",
    "rotation_factorized",
    "steerable_basis",
    "video_gaussian",
    "video_latent",
]
