"""Digital twins: in-silico experiments on trained models and K-shot prediction of new neurons.

Each experiment table is keyed by a ``sysid.TrainedModel`` and an ``ExperimentConfig`` of its
builder (kind ``"insilico"``, see ``pipeline.insilico.experiments``); ``populate()`` rebuilds
the model from its key, holds behaviour at its training mean and runs the experiment outside
any transaction (three-part make). Arrays go to the ``models`` object store; per-unit
summaries are rows of each table's ``Unit`` part, in the order of the master's ``unit_ids``.

``KShotScore`` scores a trained neural process on neurons it was not trained on (the units
its dataset config's ``neuron_ids`` leave out, or a ``KShotConfig``'s ``heldout`` list) as a
function of K, beside a readout fitted on the same K trials over its frozen core.
"""

from __future__ import annotations

import datajoint as dj
import numpy as np

from . import params, sysid, values

schema = dj.Schema()


@schema
class ExperimentConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("experiment", "an in-silico experiment and its settings")
    builder_kind = "insilico"


def _experiment_key_source(builder: str):
    # the experiments drive a model with images: models of movies are not theirs
    return sysid.image_models() * (ExperimentConfig & {"builder": builder}).proj()


class _Experiment:
    """The shared three-part make: fetch the model, run the experiment builder, insert."""

    def make_fetch(self, key):
        _, names, dataset_config, model_config, seed, weights = sysid._one_model(key)
        experiment = (ExperimentConfig & key).fetch1("builder")
        _, config = params.load_config(ExperimentConfig, key)
        return names, dataset_config, model_config, seed, values.bytes_as_text(weights), experiment, config

    def make_compute(self, key, names, dataset_config, model_config, seed, weights, experiment, config):
        from pipeline import identity, insilico

        model, loaders = sysid._rebuild(names, dataset_config, model_config, seed, values.text_as_bytes(weights))
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


# --------------------------------------------------------------------------------------- #
# K-shot prediction of held-out neurons
# --------------------------------------------------------------------------------------- #


@schema
class KShotConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition(
        "kshot", "how new neurons are predicted from K trials: the K values, draws, baseline"
    )
    builder_kind = "kshot"


def heldout_units(all_units: np.ndarray, dataset_config: dict, heldout: list[int] | None) -> np.ndarray:
    """The unit ids a K-shot score predicts: ``heldout``, or every unit the model was not trained on.

    A trained model's neurons are the ``neuron_ids`` of its dataset config; the others of the
    dataset are new to it. Units it was trained on are never scored as new.

    Raises
    ------
    ValueError
        If no unit is left, or ``heldout`` names units the model was trained on or that the
        dataset does not have.
    """
    all_units = np.asarray(all_units, dtype=np.int64)
    trained = dataset_config.get("neuron_ids")
    trained = set(all_units.tolist()) if trained is None else {int(u) for u in trained}
    if heldout is None:
        out = np.array([u for u in all_units.tolist() if u not in trained], dtype=np.int64)
    else:
        out = np.asarray(heldout, dtype=np.int64)
        seen = sorted(set(out.tolist()) & trained)
        missing = sorted(set(out.tolist()) - set(all_units.tolist()))
        if seen or missing:
            raise ValueError(
                f"K-shot heldout units {seen} were used in training and {missing} are not in the dataset "
                "(expected units of the dataset outside the dataset config's neuron_ids)"
            )
    if out.size == 0:
        raise ValueError(
            "K-shot score: no held-out units (the dataset config's neuron_ids leave none out; "
            "train on a subset of the units, or list heldout units in the K-shot config)"
        )
    return out


@schema
class KShotScore(dj.Computed):
    definition = """
    # test correlation of held-out neurons predicted from K of their trials: neural process vs fitted readout
    -> sysid.TrainedModel
    -> KShotConfig
    ---
    n_heldout : int32
    n_context : int32        # context (train-tier) trials the K are drawn from
    unit_ids  : <blob>       # (n_heldout,) int64: the order of the per-unit scores
    """

    class Point(dj.Part):
        definition = """
        -> master
        k_request  : int32          # the configured K (-1: all)
        method     : varchar(16)    # neural_process | fitted_readout
        repeat     : int32          # draw of the K trials
        ---
        k                        : int32     # K used (clipped to n_context)
        correlation_to_average   : float64   # mean over held-out units, test tier
        single_trial_correlation : float64
        seconds_per_neuron       : float64   # inference (neural process) or fitting (readout); shared core pass excluded
        unit_correlation         : <blob>    # (n_heldout,) correlation to average per unit
        """

    @property
    def key_source(self):
        trained = sysid.TrainedModel.proj() * (sysid.ModelConfig & {"builder": "neural_process"}).proj()
        return trained * KShotConfig.proj()

    def make_fetch(self, key):
        _, names, dataset_config, model_config, seed, weights = sysid._one_model(key)
        builder = (KShotConfig & key).fetch1("builder")
        _, config = params.load_config(KShotConfig, key)
        return names, dataset_config, model_config, seed, values.bytes_as_text(weights), builder, config

    def make_compute(self, key, names, dataset_config, model_config, seed, weights, builder, config):
        from pipeline import identity
        from pipeline.sysid import kshot

        model, _ = sysid._rebuild(names, dataset_config, model_config, seed, values.text_as_bytes(weights))
        dataset_fn = identity.resolve("dataset", names[0])
        every = dataset_fn(int(seed), **{**dataset_config, "neuron_ids": None})
        data_key = key["dataset_id"]
        all_units = np.asarray(every["train"][data_key].dataset.unit_ids, dtype=np.int64)
        units = heldout_units(all_units, dataset_config, config.get("heldout"))
        columns = (
            np.searchsorted(all_units, units)
            if np.all(np.diff(all_units) > 0)
            else np.array([int(np.flatnonzero(all_units == u)[0]) for u in units])
        )
        context = kshot.loader_arrays(every["train"][data_key], columns)
        test = kshot.loader_arrays(every["test"][data_key], columns)
        points = identity.resolve("kshot", builder)(model, context, test, int(seed), **config)
        return units, int(context["responses"].shape[0]), points

    def make_insert(self, key, units, n_context, points):
        self.insert1({**key, "n_heldout": len(units), "n_context": n_context, "unit_ids": units})
        self.Point.insert(
            {
                **key,
                "k_request": p["k_request"],
                "method": p["method"],
                "repeat": p["repeat"],
                "k": p["k"],
                "correlation_to_average": p["correlation_to_average"],
                "single_trial_correlation": p["single_trial_correlation"],
                "seconds_per_neuron": p["seconds_per_neuron"],
                "unit_correlation": np.asarray(p["unit_correlation_to_average"], np.float64),
            }
            for p in points
        )
