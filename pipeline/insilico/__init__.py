"""In-silico experiments on trained models (digital twins): MEIs, receptive fields, grating tuning.

Every experiment is a plain function of a *response function* ``f(images) -> rates`` that
maps a (B, C, H, W) float tensor in the model's input units to (B, N) non-negative rates
(``response_function`` makes one of a trained ``Encoder``), so the same code runs on a model,
on a known filter in a test, or on a simulation's ground-truth neurons.

- ``mei``: most exciting inputs, gradient ascent under an L2 norm constraint.
- ``receptive_field``: receptive fields by reverse correlation with white noise.
- ``tuning``: orientation / spatial-frequency tuning from drifting-phase gratings.
- ``compare``: agreement with a ground truth (filter correlation, orientation error).
- ``experiments``: the experiment builders (kind ``"insilico"``) that the tables run.
"""

from .compare import filter_correlation, orientation_error
from .experiments import grating_tuning_experiment, mei_experiment, receptive_field_experiment
from .mei import most_exciting_inputs
from .model import mean_behavior, response_function
from .receptive_field import noise_receptive_fields
from .tuning import gratings, preferred_orientation, tuning_curves

__all__ = [
    "filter_correlation",
    "grating_tuning_experiment",
    "gratings",
    "mean_behavior",
    "mei_experiment",
    "most_exciting_inputs",
    "noise_receptive_fields",
    "orientation_error",
    "preferred_orientation",
    "receptive_field_experiment",
    "response_function",
    "tuning_curves",
]
