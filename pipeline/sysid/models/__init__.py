"""Models of visual cortex: cores, readouts, shifter, modulator, composed; and their builders."""

from .builders import cnn_factorized, cnn_gaussian, core_output_shape, dataset_shapes, linear_nonlinear, rotation_factorized
from .cores import IdentityCore, RotationEquivariantCore, StackedCNNCore
from .encoder import Encoder
from .modulator import BehaviorModulator
from .readouts import FactorizedReadout, GaussianReadout, LinearReadout
from .regularizers import group_sparsity, laplace_smoothness
from .shifter import Shifter
from .steerable import ring_harmonics, steerable_basis

__all__ = [
    "BehaviorModulator",
    "Encoder",
    "FactorizedReadout",
    "GaussianReadout",
    "IdentityCore",
    "LinearReadout",
    "RotationEquivariantCore",
    "Shifter",
    "StackedCNNCore",
    "cnn_factorized",
    "cnn_gaussian",
    "core_output_shape",
    "dataset_shapes",
    "group_sparsity",
    "laplace_smoothness",
    "linear_nonlinear",
    "ring_harmonics",
    "rotation_factorized",
    "steerable_basis",
]
