"""Machine vision with neural data: stimulus sets, predicted responses, classifiers, robustness, distillation.

A ``StimulusSet`` is a named set of labelled images, already fitted to the input size of the
models of visual cortex that will see it. ``PredictedResponses`` is a trained model's
(``sysid.TrainedModel``) responses to a stimulus set, or those of the same architecture
before training (``ModelState`` "untrained", a control). A ``NeuralTarget`` names the
targets a classifier is trained with: none, or one ``PredictedResponses`` row of its stimulus
set. ``TrainedClassifier`` is the product of a neural target, a data, model and trainer
config and a seed, trained outside any transaction (three-part make) with the builders of
``pipeline.vision``; ``RobustnessScore`` tests it on distorted and attacked test images;
``DistilledClassifier`` distils it (the teacher) into a student, and tests both out of domain.

Why a table of its own and not ``sysid.TrainedModel``: a trained model there is keyed by a
neural ``Dataset`` (a FileTree folder), its trainers return validation correlations and its
``Score`` is the Sensorium metrics; a classifier has a stimulus set and neural targets
instead, and is scored by accuracy. The builder contract, ``fitting.fit``, the provenance and
the weights' format are shared.
"""

from __future__ import annotations


import datajoint as dj
import numpy as np

from . import params, stores, sysid, values

schema = dj.Schema()

# trainers that distil a teacher: they belong to DistilledClassifier, never to TrainedClassifier
DISTILLERS = ("knowledge_distillation", "hard_distillation")


# --------------------------------------------------------------------------------------- #
# stimulus sets and predicted responses
# --------------------------------------------------------------------------------------- #


@schema
class StimulusSet(dj.Manual):
    definition = """
    # a named set of labelled images, fitted to the input size of models of visual cortex
    stimulus_set : varchar(64)     # name
    ---
    builder      : varchar(128)    # stimulus_set builder that made the images
    config       : json            # its normalized config (size, cropping)
    images       : <npy@raw>       # (n, 1, height, width) float32 in [0, 1]
    labels       : <blob>          # (n,) int64 classes
    n_images     : int32
    height       : int32
    width        : int32
    note = ""    : varchar(255)
    """


def insert_stimulus_set(name: str, builder: str, config: dict | None = None, note: str = "") -> dict:
    """Make the images of ``builder(**config)`` and store them as stimulus set ``name``.

    Raises ``ConfigError`` / ``UnknownBuilderError`` before anything is inserted when the
    builder does not resolve or does not take the config.
    """
    from pipeline import identity

    if not name or len(name) > 64:
        raise ValueError(f"stimulus set name {name!r} (expected 1 to 64 characters)")
    fn = identity.resolve("stimulus_set", builder)
    normalized = identity.normalize(fn, config, name=f"stimulus_set builder {builder!r}")
    made = fn(**normalized)
    images = np.asarray(made["images"], dtype=np.float32)
    StimulusSet.insert1(
        {
            "stimulus_set": name,
            "builder": builder,
            "config": normalized,
            "images": images,
            "labels": np.asarray(made["labels"], dtype=np.int64),
            "n_images": len(images),
            "height": int(images.shape[2]),
            "width": int(images.shape[3]),
            "note": note,
        }
    )
    return {"stimulus_set": name}


def stimulus_arrays(key: dict) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 1, H, W) float32, labels (n,) int64) of the stimulus set at ``key``."""
    images, labels = (StimulusSet & key).fetch1("images", "labels")
    return np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)


@schema
class ModelState(dj.Lookup):
    definition = """
    # which weights of a trained model predict: its trained ones, or its initialization (a control)
    model_state : varchar(16)
    ---
    description : varchar(255)
    """
    contents = [
        ("trained", "the stored weights of the trained model"),
        ("untrained", "the same architecture and seed, before training"),
    ]


@schema
class PredictedResponses(dj.Computed):
    definition = """
    # a model of visual cortex's responses to every image of a stimulus set
    -> sysid.TrainedModel
    -> StimulusSet
    -> ModelState
    ---
    data_key     : varchar(64)     # the readout that predicted
    n_neurons    : int32
    unit_ids     : <blob>          # (neurons,) int64
    responses    : <npy@models>    # (images, neurons) float32, rows in stimulus-set order
    """

    @property
    def key_source(self):
        # a stimulus set is images: models of movies are not driven by it
        return sysid.image_models() * StimulusSet.proj() * ModelState.proj()

    def make_fetch(self, key):
        model_key = {k: key[k] for k in sysid.TrainedModel.primary_key}
        full, names, dataset_config, model_config, seed, weights = sysid._one_model(model_key)
        images, _ = stimulus_arrays(key)
        return names, dataset_config, model_config, seed, values.bytes_as_text(weights), values.array_as_text(images)

    def make_compute(self, key, names, dataset_config, model_config, seed, weights, images):
        from pipeline import identity
        from pipeline.sysid import fitting
        from pipeline.vision import neural

        images = values.text_as_array(images)
        dataset_fn, model_fn = identity.resolve("dataset", names[0]), identity.resolve("model", names[1])
        if key["model_state"] == "trained":
            model, loaders = fitting.rebuild(
                dataset_fn, dataset_config, model_fn, model_config, seed, values.text_as_bytes(weights), device="cpu"
            )
        else:  # the builders seed the initialization: these are the weights training started from
            model, loaders = fitting.build(dataset_fn, dataset_config, model_fn, model_config, seed)
            model.eval()
        data_key = key["dataset_id"]
        responses = neural.encoder_predictions(model, loaders, data_key, images)
        unit_ids = np.asarray(loaders["train"][data_key].dataset.unit_ids, dtype=np.int64)
        return data_key, responses, unit_ids

    def make_insert(self, key, data_key, responses, unit_ids):
        self.insert1(
            {**key, "data_key": data_key, "n_neurons": responses.shape[1], "unit_ids": unit_ids, "responses": responses}
        )


@schema
class NeuralTarget(dj.Manual):
    definition = """
    # the neural targets of classifiers trained on a stimulus set: none, or predicted responses to it
    -> StimulusSet
    target       : varchar(32)     # e.g. none, v1, v1_untrained
    ---
    note = ""    : varchar(255)
    """

    class Predicted(dj.Part):
        definition = """
        # the predicted responses of a target (a target without a row has none)
        -> master
        ---
        -> PredictedResponses
        """


def add_neural_target(stimulus_set: str, target: str, predicted: dict | None = None, note: str = "") -> dict:
    """Name the targets ``target`` of ``stimulus_set``: none, or the ``PredictedResponses`` row at ``predicted``."""
    key = {"stimulus_set": stimulus_set, "target": target}
    rows = []
    if predicted is not None:
        rows = (PredictedResponses & {**predicted, "stimulus_set": stimulus_set}).keys()
        if len(rows) != 1:
            raise LookupError(
                f"neural target {target!r}: {predicted} matches {len(rows)} PredictedResponses rows of stimulus set "
                f"{stimulus_set!r} (expected exactly one; populate PredictedResponses first)"
            )
    with NeuralTarget.connection.transaction:
        NeuralTarget.insert1({**key, "note": note})
        if rows:
            NeuralTarget.Predicted.insert1({**rows[0], **key})
    return key


def target_responses(key: dict) -> np.ndarray | None:
    """(images, neurons) predicted responses of the neural target at ``key``, or None for a target without."""
    source = NeuralTarget.Predicted & {k: key[k] for k in NeuralTarget.primary_key}
    if not source:
        return None
    return np.asarray(
        (PredictedResponses & source.proj(*PredictedResponses.primary_key)).fetch1("responses"), dtype=np.float32
    )


# --------------------------------------------------------------------------------------- #
# classifiers
# --------------------------------------------------------------------------------------- #


@schema
class ClassifierDataConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("classifier_data", "how a stimulus set is split and batched for a classifier")
    builder_kind = "vision_dataset"


@schema
class ClassifierConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("classifier", "a classifier architecture")
    builder_kind = "classifier"


@schema
class ClassifierTrainerConfig(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("classifier_trainer", "how a classifier is trained, or a student distilled")
    builder_kind = "vision_trainer"


def _data_config(key: dict) -> tuple[dict, dict]:
    """(dataset config, its arrays packed: the stimulus set's images and labels and the neural targets)."""
    _, config = params.load_config(ClassifierDataConfig, key)
    for name in ("images", "labels", "targets"):
        if config.get(name) is not None:
            raise ValueError(
                f"classifier data config sets {name} (expected None: the stimulus set and neural target give it)"
            )
    images, labels = stimulus_arrays(key)
    arrays = {"images": images, "labels": labels, "targets": target_responses(key)}
    return config, {name: values.array_as_text(value) for name, value in arrays.items()}


def _with_arrays(config: dict, arrays: dict) -> dict:
    return {**config, **{name: values.text_as_array(value) for name, value in arrays.items()}}


def _builder_names(key: dict, trainer_table=ClassifierTrainerConfig) -> dict:
    return {
        "dataset": (ClassifierDataConfig & key).fetch1("builder"),
        "model": (ClassifierConfig & key).fetch1("builder"),
        "trainer": (trainer_table & key).fetch1("builder"),
    }


@schema
class TrainedClassifier(dj.Computed):
    definition = """
    # a classifier trained on a stimulus set, with neural targets, data, model and trainer configs and a seed
    -> NeuralTarget
    -> ClassifierDataConfig
    -> ClassifierConfig
    -> ClassifierTrainerConfig
    -> sysid.Seed
    ---
    accuracy    : float64          # best validation accuracy
    output      : json             # trainer's history
    weights     : <object@models>  # torch state dict of CPU tensors (.pt)
    provenance  : json             # packages, git commit, torch / CUDA, host, GPU, wall time, seed
    """

    @property
    def key_source(self):
        trainers = ClassifierTrainerConfig - [{"builder": b} for b in DISTILLERS]
        return NeuralTarget * ClassifierDataConfig.proj() * ClassifierConfig.proj() * trainers.proj() * sysid.Seed

    def make_fetch(self, key):
        dataset_config, arrays = _data_config(key)
        _, model_config = params.load_config(ClassifierConfig, key)
        _, trainer_config = params.load_config(ClassifierTrainerConfig, key)
        return _builder_names(key), dataset_config, arrays, model_config, trainer_config, int(key["seed"])

    def make_compute(self, key, names, dataset_config, arrays, model_config, trainer_config, seed):
        from pipeline import identity
        from pipeline.sysid import fitting

        dataset_config = _with_arrays(dataset_config, arrays)
        fit = fitting.fit(
            identity.resolve("vision_dataset", names["dataset"]),
            dataset_config,
            identity.resolve("classifier", names["model"]),
            model_config,
            identity.resolve("vision_trainer", names["trainer"]),
            trainer_config,
            seed,
        )
        return fit.score, fit.output, fitting.state_dict_bytes(fit.state_dict), fit.provenance

    def make_insert(self, key, accuracy, output, weights, provenance):
        self.insert1(
            {**key, "accuracy": accuracy, "output": output, "weights": (".pt", weights), "provenance": provenance}
        )

    def delete(self, *args, **kwargs):
        """Delete rows (and their scores and students) and the stored weights of both."""
        refs = stores.stored_refs(self, "weights") + stores.stored_refs(DistilledClassifier & self.proj(), "weights")
        count = super().delete(*args, **kwargs)
        stores.remove_unreferenced(schema, refs)
        return count


def _classifier_spec(key: dict) -> dict:
    """Everything that rebuilds the trained classifier at ``key`` (exactly one row), fetched: plain values and text."""
    rows = (TrainedClassifier & key).keys()
    if len(rows) != 1:
        raise LookupError(f"{key} matches {len(rows)} trained classifiers (expected exactly one)")
    (full,) = rows
    dataset_config, arrays = _data_config(full)
    _, model_config = params.load_config(ClassifierConfig, full)
    weights = (TrainedClassifier & full).fetch1("weights").read()
    return {
        "key": full,
        "names": _builder_names(full),
        "dataset_config": dataset_config,
        "arrays": arrays,
        "model_config": model_config,
        "seed": int(full["seed"]),
        "weights": values.bytes_as_text(weights),
    }


def _rebuild_classifier(spec: dict, device: str | None = None) -> tuple:
    from pipeline import identity
    from pipeline.sysid import fitting

    return fitting.rebuild(
        identity.resolve("vision_dataset", spec["names"]["dataset"]),
        _with_arrays(spec["dataset_config"], spec["arrays"]),
        identity.resolve("classifier", spec["names"]["model"]),
        spec["model_config"],
        spec["seed"],
        values.text_as_bytes(spec["weights"]),
        device=device,
    )


def load_classifier(key: dict, device: str | None = None) -> tuple:
    """The trained classifier at ``key`` (exactly one row) with its weights, and its data loaders.

    Returns
    -------
    (torch.nn.Module in eval mode, ``{"train", "validation", "test"}`` DataLoaders)
    """
    return _rebuild_classifier(_classifier_spec(key), device)


@schema
class RobustnessScore(dj.Computed):
    definition = """
    # test-tier accuracy of a classifier: clean, per distortion and strength, under a PGD attack
    -> TrainedClassifier
    ---
    clean_accuracy : float64
    pgd_accuracy   : float64       # under L-inf PGD
    pgd_epsilon    : float64       # its radius, in [0, 1] pixel units
    pgd_steps      : int32
    n_images       : int32         # test images
    """

    class Distortion(dj.Part):
        definition = """
        -> master
        distortion : varchar(32)   # gaussian_noise, blur, contrast, salt_and_pepper
        level      : int16         # 1, 2, ...: increasing strength
        ---
        strength   : float64       # noise std, blur sigma (pixels), contrast reduction, pixel fraction
        accuracy   : float64
        """

    def make_fetch(self, key):
        return (_classifier_spec(key),)

    def make_compute(self, key, spec):
        from pipeline.vision import robustness

        model, loaders = _rebuild_classifier(spec)
        test = loaders["test"].dataset.arrays
        scores = robustness.robustness(model, test["images"], test["labels"], seed=int(key["seed"]))
        return scores, len(test["labels"])

    def make_insert(self, key, scores, n_images):
        self.insert1(
            {
                **key,
                "clean_accuracy": scores["clean"],
                "pgd_accuracy": scores["pgd"]["accuracy"],
                "pgd_epsilon": float(scores["pgd"]["epsilon"]),
                "pgd_steps": int(scores["pgd"]["steps"]),
                "n_images": n_images,
            }
        )
        levels: dict[str, int] = {}
        rows = []
        for row in sorted(scores["distortions"], key=lambda r: (r["distortion"], r["strength"])):
            levels[row["distortion"]] = levels.get(row["distortion"], 0) + 1
            rows.append(
                {
                    **key,
                    "distortion": row["distortion"],
                    "level": levels[row["distortion"]],
                    "strength": row["strength"],
                    "accuracy": row["accuracy"],
                }
            )
        self.Distortion.insert(rows)


# --------------------------------------------------------------------------------------- #
# distillation
# --------------------------------------------------------------------------------------- #


@schema
class DistilledClassifier(dj.Computed):
    definition = """
    # a student distilled from a trained classifier (the teacher), plain or with hard augmentations
    -> TrainedClassifier
    -> ClassifierConfig.proj(student_hash="classifier_hash")
    -> ClassifierTrainerConfig.proj(distillation_hash="classifier_trainer_hash")
    ---
    accuracy        : float64          # student's best validation accuracy
    teacher_queries : int64            # images the teacher was asked about during distillation
    output          : json             # trainer's history
    weights         : <object@models>  # the student's state dict (.pt)
    provenance      : json
    """

    class Domain(dj.Part):
        definition = """
        # test-tier accuracy of student and teacher, in domain and on transformed test images
        -> master
        domain           : varchar(32)   # in_domain, rotated_30, shifted_25, scaled_70
        ---
        student_accuracy : float64
        teacher_accuracy : float64
        """

    @property
    def key_source(self):
        distillers = ClassifierTrainerConfig & [{"builder": b} for b in DISTILLERS]
        return (
            TrainedClassifier.proj()
            * ClassifierConfig.proj(student_hash="classifier_hash")
            * distillers.proj(distillation_hash="classifier_trainer_hash")
        )

    def make_fetch(self, key):
        teacher_key = {k: key[k] for k in TrainedClassifier.primary_key}
        student = {"classifier_hash": key["student_hash"]}
        distiller = {"classifier_trainer_hash": key["distillation_hash"]}
        _, student_config = params.load_config(ClassifierConfig, student)
        _, trainer_config = params.load_config(ClassifierTrainerConfig, distiller)
        names = {
            "student": (ClassifierConfig & student).fetch1("builder"),
            "trainer": (ClassifierTrainerConfig & distiller).fetch1("builder"),
        }
        if trainer_config.get("teacher") is not None:
            raise ValueError(
                "distillation config sets teacher (expected None: the key's TrainedClassifier is the teacher)"
            )
        return _classifier_spec(teacher_key), names, student_config, trainer_config

    def make_compute(self, key, teacher, names, student_config, trainer_config):
        from pipeline import identity
        from pipeline.sysid import fitting
        from pipeline.vision import robustness

        teacher, loaders = _rebuild_classifier(teacher, device="cpu")
        fit = fitting.fit(
            lambda seed, **_: loaders,
            {},
            identity.resolve("classifier", names["student"]),
            student_config,
            identity.resolve("vision_trainer", names["trainer"]),
            {**trainer_config, "teacher": teacher},
            int(key["seed"]),
        )
        student = identity.resolve("classifier", names["student"])(loaders, int(key["seed"]), **student_config)
        student.load_state_dict(fit.state_dict)
        student.eval()
        test = loaders["test"].dataset.arrays
        teacher.to("cpu")
        domains = {
            name: (accuracy, robustness.out_of_domain(teacher, test["images"], test["labels"])[name])
            for name, accuracy in robustness.out_of_domain(student, test["images"], test["labels"]).items()
        }
        queries = int(fit.output.get("teacher_queries", 0))
        return fit.score, queries, fit.output, fitting.state_dict_bytes(fit.state_dict), fit.provenance, domains

    def make_insert(self, key, accuracy, queries, output, weights, provenance, domains):
        self.insert1(
            {
                **key,
                "accuracy": accuracy,
                "teacher_queries": queries,
                "output": output,
                "weights": (".pt", weights),
                "provenance": provenance,
            }
        )
        self.Domain.insert(
            {**key, "domain": name, "student_accuracy": s, "teacher_accuracy": t} for name, (s, t) in domains.items()
        )

    def delete(self, *args, **kwargs):
        """Delete rows and the students' stored weights."""
        refs = stores.stored_refs(self, "weights")
        count = super().delete(*args, **kwargs)
        stores.remove_unreferenced(schema, refs)
        return count


__all__ = [
    "ClassifierConfig",
    "ClassifierDataConfig",
    "ClassifierTrainerConfig",
    "DistilledClassifier",
    "ModelState",
    "NeuralTarget",
    "PredictedResponses",
    "RobustnessScore",
    "StimulusSet",
    "TrainedClassifier",
    "add_neural_target",
    "insert_stimulus_set",
    "load_classifier",
    "stimulus_arrays",
    "target_responses",
]
