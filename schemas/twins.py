"""Digital twins: in-silico experiments on trained models (MEIs, receptive fields, tuning).

Each experiment table is keyed by a ``sysid.TrainedModel`` and an ``ExperimentConfig`` of its
builder (kind ``"insilico"``, see ``pipeline.insilico.experiments``); ``populate()`` rebuilds
the model from its key, holds behaviour at its training mean and runs the experiment outside
any transaction (three-part make). Arrays go to the ``models`` object store; per-unit
summaries are rows of each table's ``Unit`` part, in the order of the master's ``unit_ids``.
"""

from __future__ import annotations

import datajoint as dj
import numpy as np

from . import params, sysid

schema = dj.Schema()


@schema
class ExperimentConfig(dj.Lookup):
    definition = params.config_definition("experiment", "an in-silico experiment and its settings")
    builder_kind = "insilico"


def _experiment_key_source(builder: str):
    return sysid.TrainedModel.proj() * (ExperimentConfig & {"builder": builder}).proj()


class _Experiment:
    """The shared three-part make: fetch the model, run the experiment builder, insert."""

    def make_fetch(self, key):
        _, names, dataset_config, model_config, seed, weights = sysid._one_model(key)
        experiment = (ExperimentConfig & key).fetch1("builder")
        _, config = params.load_config(ExperimentConfig, key)
        # weights as text (latin-1 maps bytes 1:1): populate hashes what make_fetch returns
        return names, dataset_config, model_config, seed, weights.decode("latin-1"), experiment, config

    def make_compute(self, key, names, dataset_config, model_config, seed, weights, experiment, config):
        from pipeline import identity, insilico

        model, loaders = sysid._rebuild(names, dataset_config, model_config, seed, weights.encode("latin-1"))
        data_key = key["dataset_id"]
        train = loaders["train"][data_key]
        dataset = train.dataset
        unit_ids = np.asarray(dataset.unit_ids, dtype=np.int64)
        image_shape = tuple(int(v) for v in next(iter(train))["images"].shape[1:])
        respond = insilico.response_function(model, data_key, insilico.mean_behavior(train))
        run = identity.resolve("insilico", experiment)
        arrays = run(respond, image_shape, len(unit_ids), int(seed), **config)
        return unit_ids, arrays


@schema
class MEI(_Experiment, dj.Computed):
    definition = """
    # most exciting input of every unit of a trained model (gradient ascent, L2 norm constraint)
    -> sysid.TrainedModel
    -> ExperimentConfig
    ---
    unit_ids : <blob>          # (units,) int64: the order of meis
    meis     : <npy@models>    # (units, C, H, W) float32, in the model's input units
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit_id    : int64
        ---
        activation : float64   # the unit's predicted response to its MEI
        """

    @property
    def key_source(self):
        return _experiment_key_source("mei")

    def make_insert(self, key, unit_ids, arrays):
        self.insert1({**key, "unit_ids": unit_ids, "meis": arrays["meis"]})
        self.Unit.insert(
            {**key, "unit_id": int(u), "activation": float(a)} for u, a in zip(unit_ids, arrays["activations"])
        )


@schema
class ReceptiveField(_Experiment, dj.Computed):
    definition = """
    # white-noise receptive field (response-weighted noise average) of every unit of a trained model
    -> sysid.TrainedModel
    -> ExperimentConfig
    ---
    unit_ids : <blob>          # (units,) int64: the order of maps
    maps     : <npy@models>    # (units, C, H, W) float32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit_id : int64
        ---
        peak_y  : float64      # centre of mass of the map's squared values (pixels)
        peak_x  : float64
        """

    @property
    def key_source(self):
        return _experiment_key_source("noise_rf")

    def make_insert(self, key, unit_ids, arrays):
        maps = arrays["maps"]
        energy = (maps.astype(np.float64) ** 2).sum(axis=1)  # (units, H, W)
        yy, xx = np.mgrid[0 : energy.shape[1], 0 : energy.shape[2]]
        total = np.maximum(energy.sum(axis=(1, 2)), 1e-300)
        self.insert1({**key, "unit_ids": unit_ids, "maps": maps})
        self.Unit.insert(
            {
                **key,
                "unit_id": int(u),
                "peak_y": float((energy[i] * yy).sum() / total[i]),
                "peak_x": float((energy[i] * xx).sum() / total[i]),
            }
            for i, u in enumerate(unit_ids)
        )


@schema
class Tuning(_Experiment, dj.Computed):
    definition = """
    # orientation x spatial-frequency tuning of every unit of a trained model, from gratings
    -> sysid.TrainedModel
    -> ExperimentConfig
    ---
    unit_ids     : <blob>        # (units,) int64: the order of curves
    orientations : <blob>        # (O,) radians, of the grating's wave vector
    frequencies  : <blob>        # (S,) cycles per pixel
    curves       : <npy@models>  # (units, O, S) float32 mean response over phases
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit_id               : int64
        ---
        preferred_orientation : float64  # degrees in [0, 180), at the preferred frequency
        preferred_frequency   : float64  # cycles per pixel
        selectivity           : float64  # orientation selectivity in [0, 1]
        """

    @property
    def key_source(self):
        return _experiment_key_source("gratings")

    def make_insert(self, key, unit_ids, arrays):
        self.insert1(
            {
                **key,
                "unit_ids": unit_ids,
                "orientations": np.asarray(arrays["orientations"], np.float64),
                "frequencies": np.asarray(arrays["frequencies"], np.float64),
                "curves": arrays["curves"],
            }
        )
        self.Unit.insert(
            {
                **key,
                "unit_id": int(u),
                "preferred_orientation": float(np.degrees(arrays["preferred_orientation"][i])),
                "preferred_frequency": float(arrays["preferred_frequency"][i]),
                "selectivity": float(arrays["selectivity"][i]),
            }
            for i, u in enumerate(unit_ids)
        )
