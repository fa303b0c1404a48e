"""System identification: TrialResponses, Dataset, configs, TrainedModel, Score; `pipeline reproduce`.

Every dataset, imported from a Sensorium FileTree folder or built from ``TrialResponses``, is
a FileTree folder in the ``raw`` object store, under an explicit ``dataset_id`` (never parsed
from a path). A trained model is the product of a dataset, a dataset config, a model config, a
trainer config and a seed; it is trained outside any transaction (three-part make), its
weights are a CPU state dict in the ``models`` store, and ``reproduce(key)`` rebuilds it.

Deleting a ``TrainedModel`` or ``Dataset`` through its ``delete()`` removes its stored files.
Rows removed by a cascade from further upstream (e.g. deleting a ``ModelConfig``) leave files
behind: ``schemas.stores.collect_garbage()`` removes every stored file that no row references.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path

import datajoint as dj
import numpy as np

from . import imaging, params, spikes, stores, values

schema = dj.Schema()

# tolerance of `pipeline reproduce` when comparing recomputed and stored scores
REPRODUCE_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------- #
# parameter sets and seeds
# --------------------------------------------------------------------------------------- #


@schema
class DatasetConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition(
        "dataset_config", "how a dataset is read: tiers, normalization, selection, batch size"
    )
    builder_kind = "dataset"


@schema
class ModelConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("model", "a model architecture and its hyperparameters")
    builder_kind = "model"


@schema
class TrainerConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("trainer", "how a model is trained")
    builder_kind = "trainer"


@schema
class Seed(dj.Lookup):
    definition = """
    # seeds of trained models
    seed : int32
    """


# --------------------------------------------------------------------------------------- #
# trial responses (needs imaging.Trial / Behavior / ScanInfo and spikes.Activity)
# --------------------------------------------------------------------------------------- #


@schema
class ResponseWindow(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("response_window", "how a trial's response is taken from activity")
    builder_kind = "response"


@schema
class TrialResponses(dj.Computed):
    definition = """
    # response of every unit on every stimulus trial, in a window after onset
    -> spikes.Activity
    -> ResponseWindow
    ---
    n_trials      : int32
    n_units       : int32
    unit_ids      : <blob>    # (units,) int64: the order of every trial's responses
    has_behavior  : bool      # behavior and pupil_center are filled
    """

    class Trial(dj.Part):
        definition = """
        -> master
        -> imaging.Trial
        ---
        responses            : <blob>   # (units,) float32 mean activity in the window; (T, units) per frame of a movie
        behavior = null      : <blob>   # (3,) float32 pupil radius, its derivative (/s), running speed; (T, 2) radius, running
        pupil_center = null  : <blob>   # (2,) float32 eye position (x, y) minus its mean; (T, 2) per frame
        """

    def make(self, key):
        fn, config = params.load_config(ResponseWindow, key)
        units = (spikes.Activity.Unit & key).to_dicts(order_by="unit_id")
        if not units:
            raise ValueError(f"TrialResponses {key}: Activity has no units (expected at least one)")
        trials = (imaging.Trial & key).to_dicts(order_by="trial_idx")
        if not trials:
            raise ValueError(f"TrialResponses {key}: the scan has no stimulus trials (expected imaging.Trial rows)")
        fps = float((imaging.ScanInfo & key).fetch1("fps"))
        behavior = None
        if imaging.Behavior & key:
            row = (imaging.Behavior & key).fetch1()
            behavior = {k: row.get(k) for k in ("running", "pupil_radius", "pupil_x", "pupil_y")}
        activity = np.stack([np.asarray(u["spikes"], dtype=np.float32) for u in units])
        onsets = np.array([t["onset_frame"] for t in trials], dtype=np.int64)
        # a builder that responds over a trial's frames (``frames``, for movies) takes its length
        extra = {}
        if "durations" in inspect.signature(fn).parameters:
            extra["durations"] = np.array([t["duration_frames"] for t in trials], dtype=np.int64)
        with imaging.naming_scan(key):
            out = fn(activity, onsets, fps, behavior, **extra, **config)
        unit_ids = np.array([u["unit_id"] for u in units], dtype=np.int64)
        self.insert1(
            {
                **key,
                "n_trials": len(trials),
                "n_units": len(units),
                "unit_ids": unit_ids,
                "has_behavior": out["behavior"] is not None,
            }
        )
        rows = []
        for i, trial in enumerate(trials):
            rows.append(
                {
                    **key,
                    "trial_idx": int(trial["trial_idx"]),
                    "responses": out["responses"][i],
                    "behavior": None if out["behavior"] is None else out["behavior"][i],
                    "pupil_center": None if out["pupil_center"] is None else out["pupil_center"][i],
                }
            )
        self.Trial.insert(rows)


# --------------------------------------------------------------------------------------- #
# datasets
# --------------------------------------------------------------------------------------- #


@schema
class Dataset(dj.Manual):
    definition = """
    # a stimulus/response dataset, stored as a FileTree folder (Sensorium layout)
    dataset_id  : varchar(64)     # explicit name; also the data key of its readout
    ---
    filetree    : <object@raw>    # the FileTree folder
    n_trials    : int32
    n_neurons   : int32
    height      : int32
    width       : int32
    tiers       : json            # {tier: number of trials}
    origin      : varchar(32)     # "filetree" (imported) or "trial_responses"; "video_" before either for movies
    note = ""   : varchar(255)
    """

    def delete(self, *args, **kwargs):
        """Delete rows (cascading to trained models) and the stored folders and weights."""
        refs = stores.stored_refs(self, "filetree") + stores.stored_refs(TrainedModel & self.proj(), "weights")
        count = super().delete(*args, **kwargs)
        stores.remove_unreferenced(schema, refs)
        return count


@schema
class DatasetSource(dj.Manual):
    definition = """
    # the trial responses a dataset was built from
    -> Dataset
    ---
    -> TrialResponses
    """


ORIGINS = ("filetree", "trial_responses")


def _video_configs() -> list[list[dict]]:
    """Keys of the dataset configs and of the model configs whose builders take movies."""
    from pipeline.sysid.video import takes_video

    out = []
    for table, kind in ((DatasetConfig, "dataset"), (ModelConfig, "model")):
        rows = table.proj("builder").to_dicts()
        out.append([{k: r[k] for k in table.primary_key} for r in rows if takes_video(kind, r["builder"])])
    return out


def image_models() -> dj.expression.QueryExpression:
    """Keys of the trained models that take images (not movies): what image stimuli can drive."""
    video_models = _video_configs()[1]
    return TrainedModel.proj() - video_models if video_models else TrainedModel.proj()


def _dataset_row(tree, dataset_id: str, origin: str, note: str) -> dict:
    from pipeline.sysid import video

    tiers, counts = np.unique(tree.tiers, return_counts=True)
    height, width = tree.frame_shape
    return {
        "dataset_id": dataset_id,
        "n_trials": tree.n_trials,
        "n_neurons": tree.n_neurons,
        "height": height,
        "width": width,
        "tiers": {str(t): int(c) for t, c in zip(tiers, counts)},
        "origin": f"video_{origin}" if isinstance(tree, video.VideoTree) else origin,
        "note": note,
    }


def import_filetree(path: str | os.PathLike, dataset_id: str, note: str = "") -> dict:
    """Validate a FileTree folder and store a copy of it as ``Dataset`` ``dataset_id``.

    The folder holds images (the Sensorium layout) or movies (the Sensorium 2023 dynamic
    layout, ``pipeline.sysid.video``; its origin is then ``video_filetree``). Raises
    ``FileTreeError`` (naming the folder, field and expectation) before anything is inserted
    if the folder does not follow the layout.
    """
    from pipeline.sysid import data

    if not dataset_id or len(dataset_id) > 64:
        raise ValueError(f"dataset_id {dataset_id!r} (expected 1 to 64 characters)")
    tree = data.read_any_filetree(path)
    Dataset.insert1({**_dataset_row(tree, dataset_id, "filetree", note), "filetree": str(Path(path))})
    stores.follow_permissions((Dataset & {"dataset_id": dataset_id}).fetch1("filetree"))
    return {"dataset_id": dataset_id}


def _lab_tiers(key: dict, trial_idx: list) -> np.ndarray | None:
    """The tiers the lab gave the trials (``imaging.TrialTier``), or None when it gave none."""
    given = {r["trial_idx"]: r["tier"] for r in (imaging.TrialTier & key).to_dicts()}
    if not given:
        return None
    missing = [t for t in trial_idx if t not in given]
    if missing:
        raise ValueError(
            f"{imaging.describe(key)}: TrialTier has no tier for trial(s) {missing[:10]} (expected a "
            "tier for every trial, or none)"
        )
    return np.array([given[t] for t in trial_idx])


def dataset_from_responses(
    key: dict, dataset_id: str, *, seed: int = 0, validation_fraction: float = 0.1, note: str = ""
) -> dict:
    """Build a FileTree dataset from one ``TrialResponses`` row and store it as ``dataset_id``.

    Images shown on several trials form the test tier; the rest is split into train and
    validation with ``seed`` (``pipeline.sysid.data.trials_filetree``) -- unless the lab gave
    every trial its tier (``imaging.TrialTier``), which is then used. Responses per frame (the
    ``frames`` response window) to movies (``StimulusImage`` rows of shape (T, H, W)) make a
    video dataset (``pipeline.sysid.video.trials_video_tree``), tiered the same way.
    """
    from pipeline.sysid import data, video

    source = (TrialResponses & key).fetch1()
    source_key = {k: source[k] for k in TrialResponses.primary_key}
    trials = (TrialResponses.Trial * imaging.Trial & source_key).to_dicts(order_by="trial_idx")
    image_ids = np.array([t["image_id"] for t in trials], dtype=np.int64)
    images = {
        int(r["image_id"]): np.asarray(r["image"], dtype=np.float32)
        for r in (imaging.StimulusImage & [{"image_id": int(i)} for i in np.unique(image_ids)]).to_dicts()
    }
    has_behavior = bool(source["has_behavior"])
    per_frame = np.ndim(trials[0]["responses"]) == 2 if trials else False
    build = video.trials_video_tree if per_frame else data.trials_filetree
    write = video.write_video_filetree if per_frame else data.write_filetree
    tree = build(
        images,
        np.stack([t["responses"] for t in trials]),
        image_ids,
        np.array([t["trial_idx"] for t in trials], dtype=np.int64),
        np.asarray(source["unit_ids"], dtype=np.int64),
        behavior=np.stack([t["behavior"] for t in trials]) if has_behavior else None,
        pupil_center=np.stack([t["pupil_center"] for t in trials]) if has_behavior else None,
        seed=seed,
        validation_fraction=validation_fraction,
        tiers=_lab_tiers(source_key, [t["trial_idx"] for t in trials]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = write(Path(tmp) / dataset_id, tree)
        connection = Dataset.connection
        with connection.transaction:
            Dataset.insert1({**_dataset_row(tree, dataset_id, "trial_responses", note), "filetree": str(folder)})
            DatasetSource.insert1({"dataset_id": dataset_id, **source_key})
    stores.follow_permissions((Dataset & {"dataset_id": dataset_id}).fetch1("filetree"))
    return {"dataset_id": dataset_id}


def export_dataset(key: dict, destination: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the stored dataset at ``key`` to ``destination`` in the FileTree layout."""
    from pipeline.sysid import data

    ref = (Dataset & key).fetch1("filetree")
    return data.export_filetree(stores.local_path(ref), destination, overwrite=overwrite)


# --------------------------------------------------------------------------------------- #
# trained models and scores
# --------------------------------------------------------------------------------------- #


def _configs(key: dict) -> tuple[dict, dict, int]:
    """(dataset config with the dataset's local folder, model config, seed) of a model key.

    Configs only: the builders are resolved where they run (``make_compute``), by name, so that
    what ``make_fetch`` returns stays hashable and comparable.
    """
    from pipeline.sysid import fitting

    dataset_id = (Dataset & key).fetch1("dataset_id")
    folder = str(stores.local_path((Dataset & key).fetch1("filetree")))
    dataset_config = values.json_value((DatasetConfig & key).fetch1("config"))
    model_config = values.json_value((ModelConfig & key).fetch1("config"))
    dataset_config = fitting.dataset_config_with_paths(dataset_config, [folder], [dataset_id])
    return dataset_config, model_config, int(key["seed"])


@schema
class TrainedModel(dj.Computed):
    definition = """
    # a model trained on a dataset with a dataset, model and trainer config and a seed
    -> Dataset
    -> DatasetConfig
    -> ModelConfig
    -> TrainerConfig
    -> Seed
    ---
    score       : float64         # trainer's best validation correlation
    output      : json            # trainer's history and figures
    weights     : <object@models> # torch state dict of CPU tensors (.pt)
    provenance  : json            # packages, git commit, torch / CUDA, host, GPU, wall time, seed
    """

    @property
    def key_source(self):
        # configs that a sweep sampled are trained only as the sweep's members (schemas.modelling)
        from . import modelling

        product = modelling.restrict_to_sweeps(super().key_source)
        # movies go with dataset and model builders that take movies, images with the others
        video = [(Dataset & [{"origin": f"video_{o}"} for o in ORIGINS]).proj(), *_video_configs()]
        return product & [dj.AndList(video), dj.AndList([dj.Not(r) for r in video])]

    def make_fetch(self, key):
        dataset_config, model_config, seed = _configs(key)
        trainer_config = values.json_value((TrainerConfig & key).fetch1("config"))
        names = (
            (DatasetConfig & key).fetch1("builder"),
            (ModelConfig & key).fetch1("builder"),
            (TrainerConfig & key).fetch1("builder"),
        )
        # builder names (not functions) keep the fetched data hashable and comparable
        return names, dataset_config, model_config, trainer_config, seed

    def make_compute(self, key, names, dataset_config, model_config, trainer_config, seed):
        from pipeline import identity
        from pipeline.sysid import fitting

        from . import checkpoints

        fit = fitting.fit(
            identity.resolve("dataset", names[0]),
            dataset_config,
            identity.resolve("model", names[1]),
            model_config,
            identity.resolve("trainer", names[2]),
            trainer_config,
            seed,
            checkpoint=checkpoints.for_job(self, key),  # resume after preemption (schemas.checkpoints)
        )
        return fit.score, fit.output, fitting.state_dict_bytes(fit.state_dict), fit.provenance

    def make_insert(self, key, score, output, weights, provenance):
        self.insert1({**key, "score": score, "output": output, "weights": (".pt", weights), "provenance": provenance})
        from . import checkpoints

        checkpoints.for_job(self, key).remove()  # the result is stored: nothing to resume any more

    def delete(self, *args, **kwargs):
        """Delete rows (and their scores) and their stored weights."""
        refs = stores.stored_refs(self, "weights")
        count = super().delete(*args, **kwargs)
        stores.remove_unreferenced(schema, refs)
        return count


def score_rows(key: dict, scores: dict) -> tuple[dict, list[dict]]:
    """The ``Score`` row and its ``Unit`` rows of ``scores`` (``metrics.test_scores`` with unit ids).

    FEVE is null when no unit reaches FEV 0.15 (no NaN in a numeric column, on any backend).
    """
    row = {
        **key,
        "single_trial_correlation": scores["single_trial_correlation"],
        "correlation_to_average": scores["correlation_to_average"],
        "feve": None if not np.isfinite(scores["feve"]) else scores["feve"],
        "n_units": len(scores["unit_ids"]),
        "n_units_feve": scores["n_units_feve"],
    }
    units = [
        {
            **key,
            "unit_id": int(u),
            "single_trial_correlation": float(scores["unit_single_trial_correlation"][i]),
            "correlation_to_average": float(scores["unit_correlation_to_average"][i]),
            "feve": float(scores["unit_feve"][i]),
            "fev": float(scores["unit_fev"][i]),
        }
        for i, u in enumerate(scores["unit_ids"])
    ]
    return row, units


@schema
class Score(dj.Computed):
    definition = """
    # test-tier scores of a trained model (Sensorium metrics)
    -> TrainedModel
    ---
    single_trial_correlation : float64   # mean over units
    correlation_to_average   : float64   # mean over units
    feve = null              : float64   # mean over units with FEV >= 0.15 (null if none)
    n_units                  : int32
    n_units_feve             : int32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit_id : int64
        ---
        single_trial_correlation : float64
        correlation_to_average   : float64
        feve                     : float64
        fev                      : float64
        """

    def make_fetch(self, key):
        dataset_config, model_config, seed = _configs(key)
        names = ((DatasetConfig & key).fetch1("builder"), (ModelConfig & key).fetch1("builder"))
        weights = (TrainedModel & key).fetch1("weights").read()
        return names, dataset_config, model_config, seed, values.bytes_as_text(weights)

    def make_compute(self, key, names, dataset_config, model_config, seed, weights):
        weights = values.text_as_bytes(weights)
        scores = _score(key, names, dataset_config, model_config, seed, weights, device=None)
        return (scores,)

    def make_insert(self, key, scores):
        row, units = score_rows(key, scores)
        self.insert1(row)
        self.Unit.insert(units)


@schema
class VideoScore(dj.Computed):
    definition = """
    # test-tier likelihoods and latent recovery of a latent video model (builder video_latent)
    -> TrainedModel
    ---
    log_likelihood             : float64   # nats per neuron and frame (normalized responses), latents from the prior
    log_likelihood_unobserved  : float64   # the scored half of the neurons, latents from the prior
    log_likelihood_conditioned : float64   # the scored half, latents inferred from the observed half
    conditioned_correlation    : float64   # per-frame correlation of the scored half, latents from the observed half
    unconditioned_correlation  : float64   # the same with the latents at the prior's mean
    n_observed                 : int32     # neurons observed (a random half, seeded by the model's seed)
    samples                    : int32     # Monte-Carlo draws of the latents
    latent_recovery = null     : json      # [{latent, kind, r}]: linear read-out of the inferred latents vs the truth
    behavior_correlation = null : json     # {pupil_dilation: r, running_speed: r} of the same read-out
    """

    SAMPLES = 32

    @property
    def key_source(self):
        return TrainedModel.proj() & (ModelConfig & {"builder": "video_latent"})

    def make_fetch(self, key):
        dataset_config, model_config, seed = _configs(key)
        names = ((DatasetConfig & key).fetch1("builder"), (ModelConfig & key).fetch1("builder"))
        weights = (TrainedModel & key).fetch1("weights").read()
        return names, dataset_config, model_config, seed, values.bytes_as_text(weights)

    def make_compute(self, key, names, dataset_config, model_config, seed, weights):
        from pipeline.sysid import video

        model, dataloaders = _rebuild(names, dataset_config, model_config, seed, values.text_as_bytes(weights))
        truth = _ground_truth_latents(dataset_config)
        scores = video.video_scores(
            model,
            dataloaders,
            key["dataset_id"],
            samples=self.SAMPLES,
            seed=seed,
            true_latents=None if truth is None else truth[0],
            latent_kinds=None if truth is None else truth[1],
        )
        return (scores,)

    def make_insert(self, key, scores):
        self.insert1(
            {
                **key,
                **{k: scores[k] for k in VIDEO_SCORE_FIELDS},
                "latent_recovery": scores.get("latent_recovery"),
                "behavior_correlation": scores.get("behavior_correlation"),
            }
        )


VIDEO_SCORE_FIELDS = (
    "log_likelihood",
    "log_likelihood_unobserved",
    "log_likelihood_conditioned",
    "conditioned_correlation",
    "unconditioned_correlation",
    "n_observed",
    "samples",
)


def _ground_truth_latents(dataset_config: dict) -> tuple[np.ndarray, list[str]] | None:
    """(latents, kinds) of a simulated video dataset (``meta/ground_truth``), or None for recorded data."""
    folder = Path(dataset_config["paths"][0]) / "meta" / "ground_truth"
    if not (folder / "latents.npy").is_file():
        return None
    latents = np.load(folder / "latents.npy", allow_pickle=False)
    kinds_file = folder / "latent_kinds.npy"
    kinds = np.load(kinds_file, allow_pickle=False).astype(str).tolist() if kinds_file.is_file() else None
    return latents, kinds


def _rebuild(names, dataset_config, model_config, seed, weights, device=None) -> tuple:
    from pipeline import identity
    from pipeline.sysid import fitting

    return fitting.rebuild(
        identity.resolve("dataset", names[0]),
        dataset_config,
        identity.resolve("model", names[1]),
        model_config,
        seed,
        weights,
        device=device,
    )


def _score(key, names, dataset_config, model_config, seed, weights, device=None) -> dict:
    from pipeline.sysid import fitting

    model, dataloaders = _rebuild(names, dataset_config, model_config, seed, weights, device)
    scores = fitting.evaluate(model, dataloaders, "test")
    return scores[key["dataset_id"]] if "dataset_id" in key else next(iter(scores.values()))


def _one_model(key: dict) -> tuple[dict, tuple, dict, dict, int, bytes]:
    """(full key, builder names, dataset config, model config, seed, weights) of one trained model."""
    rows = (TrainedModel & key).keys()
    if len(rows) != 1:
        raise LookupError(f"{key} matches {len(rows)} trained models (expected exactly one)")
    (full,) = rows
    dataset_config, model_config, seed = _configs(full)
    names = ((DatasetConfig & full).fetch1("builder"), (ModelConfig & full).fetch1("builder"))
    weights = (TrainedModel & full).fetch1("weights").read()
    return full, names, dataset_config, model_config, seed, weights


def load_model(key: dict, device: str | None = None) -> tuple:
    """The trained model at ``key`` with its stored weights loaded, and its data loaders.

    Parameters
    ----------
    key
        Restricts ``TrainedModel`` to exactly one row.
    device
        ``"cpu"``, ``"cuda"`` or None (CUDA when there is one).

    Returns
    -------
    (torch.nn.Module in eval mode, dataloaders ``{tier: {data_key: DataLoader}}``)
    """
    _, names, dataset_config, model_config, seed, weights = _one_model(key)
    return _rebuild(names, dataset_config, model_config, seed, weights, device)


def reproduce(key: dict, device: str | None = None) -> dict:
    """Rebuild the data and the model of one trained model from its key and recompute its scores.

    Parameters
    ----------
    key
        Restricts ``TrainedModel`` to exactly one row.
    device
        ``"cpu"``, ``"cuda"`` or None (CUDA when there is one).

    Returns
    -------
    dict
        ``key`` (the full primary key), ``scores`` (recomputed: the three means and per-unit
        arrays), ``stored`` (the ``Score`` row, or None if not populated), ``max_difference``
        (largest absolute difference between recomputed and stored means and per-unit values,
        or None), ``provenance`` of the training run.
    """
    try:
        full, names, dataset_config, model_config, seed, weights = _one_model(key)
    except LookupError as error:
        raise LookupError(f"reproduce: {error}") from None
    scores = _score(full, names, dataset_config, model_config, seed, weights, device=device)
    stored, difference = stored_score_difference(full, scores)
    return {
        "key": full,
        "scores": scores,
        "stored": stored,
        "max_difference": difference,
        "provenance": values.json_value((TrainedModel & full).fetch1("provenance")),
    }


def stored_score_difference(key: dict, scores: dict) -> tuple[dict | None, float | None]:
    """(the ``Score`` row at ``key``, the largest absolute difference of ``scores`` from it), or (None, None).

    The means and every unit's values are compared; a unit missing from the stored row counts
    as an infinite difference.
    """
    if not Score & key:
        return None, None
    stored = (Score & key).fetch1()
    units = {r["unit_id"]: r for r in (Score.Unit & key).to_dicts()}
    diffs = [abs(scores[name] - stored[name]) for name in ("single_trial_correlation", "correlation_to_average")]
    if stored["feve"] is not None:
        diffs.append(abs(scores["feve"] - stored["feve"]))
    for i, unit in enumerate(scores["unit_ids"]):
        row = units.get(int(unit))
        if row is None:
            diffs.append(float("inf"))
            continue
        for name in ("single_trial_correlation", "correlation_to_average", "feve"):
            diffs.append(abs(float(scores[f"unit_{name}"][i]) - row[name]))
    return stored, float(max(diffs))
