"""Spike inference tables: SpikeMethod, GroundTruth, TrainingSet, SpikeModel, Activity."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import datajoint as dj
import numpy as np

from schemas import imaging, params, values


class _Lazy:
    # pipeline.spikes imports torch and numba: import it on first use, so that a worker or a
    # command that never infers spikes starts in a second rather than several
    def __getattr__(self, name):
        import pipeline.spikes

        return getattr(pipeline.spikes, name)


spikes = _Lazy()

schema = dj.Schema()


@schema
class SpikeMethod(params.ConfigTable, dj.Lookup):
    definition = params.config_definition("spike_method", "a spike inference method and its parameters")
    builder_kind = "spikes"

    @classmethod
    def insert_method(cls, builder: str, config: dict | None = None, note: str = "") -> dict:
        """Add a method (validated against its builder in ``pipeline.spikes``); return its key."""
        return params.insert_config(cls, builder, config, note)


@schema
class GroundTruth(dj.Manual):
    definition = """
    # one cell recorded with calcium imaging and electrophysiology at once
    truth_dataset        : varchar(64)    # e.g. spikefinder-4, DS09-GCaMP6f-m-V1
    recording            : varchar(128)   # the cell / recording within the dataset
    ---
    fps                  : float64        # frame rate (Hz)
    calcium              : <blob>         # (frames,) float32 fluorescence; NaN = no sample
    spikes               : <blob>         # (frames,) float32 true spike counts per frame
    indicator = ""       : varchar(32)
    source = ""          : varchar(255)   # name of the file it was imported from
    """

    @classmethod
    def insert_recordings(
        cls, recordings: list, indicator: str = "", source: str = "", skip_duplicates: bool = False
    ) -> int:
        """Insert ``pipeline.spikes.Recording`` objects (their dataset and name are the key)."""
        rows = [
            {
                "truth_dataset": r.dataset,
                "recording": r.name,
                "fps": float(r.fps),
                "calcium": r.calcium.astype(np.float32),
                "spikes": r.spikes.astype(np.float32),
                "indicator": indicator,
                "source": source or r.name,
            }
            for r in recordings
        ]
        cls.insert(rows, skip_duplicates=skip_duplicates)
        return len(rows)

    @classmethod
    def import_spikefinder(
        cls, calcium_csv: str | Path, spikes_csv: str | Path, dataset: str, indicator: str = ""
    ) -> int:
        """Import one spikefinder dataset (``N.*.calcium.csv`` and ``N.*.spikes.csv``, 100 Hz)."""
        recordings = spikes.read_spikefinder(calcium_csv, spikes_csv, dataset=dataset)
        return cls.insert_recordings(recordings, indicator, Path(calcium_csv).name)

    @classmethod
    def import_cascade(cls, path: str | Path, dataset: str | None = None, indicator: str = "") -> int:
        """Import CASCADE ground truth: one ``.mat`` file or every ``.mat`` in a folder.

        ``dataset`` defaults to the folder's name (``DS09-GCaMP6f-m-V1``).
        """
        path = Path(path)
        files = sorted(path.glob("*.mat")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no CASCADE .mat files (expected *.mat)")
        dataset = dataset or (path.name if path.is_dir() else path.parent.name)
        count = 0
        for mat in files:
            count += cls.insert_recordings(spikes.read_cascade(mat, dataset=dataset), indicator, mat.name)
        return count

    def recordings(self) -> list:
        """The rows here as ``pipeline.spikes.Recording`` objects, in key order."""
        rows = self.to_dicts(order_by=("truth_dataset", "recording"))
        return [
            spikes.Recording(r["calcium"], r["spikes"], r["fps"], dataset=r["truth_dataset"], name=r["recording"])
            for r in rows
        ]


@schema
class TrainingSet(dj.Manual):
    definition = """
    # a named set of ground-truth recordings that a supervised model is trained on
    training_set         : varchar(64)
    ---
    note = ""            : varchar(255)
    """

    class Member(dj.Part):
        definition = """
        -> master
        -> GroundTruth
        """

    @classmethod
    def create(cls, name: str, restriction=None, note: str = "") -> dict:
        """A training set of the GroundTruth rows matching ``restriction`` (default: all)."""
        members = (GroundTruth & restriction).keys() if restriction is not None else GroundTruth().keys()
        if not members:
            raise ValueError(f"training set {name!r}: no GroundTruth rows match {restriction!r}")
        key = {"training_set": name}
        with cls.connection.transaction:
            cls.insert1({**key, "note": note})
            cls.Member.insert([{**key, **m} for m in members])
        return key


def _as_text(series) -> str:
    """A ground-truth series as float32 text (what SpikeModel trains on), for populate's fetch hash."""
    return values.array_as_text(np.asarray(series, dtype=np.float32))


def _method_config(row: dict) -> dict:
    return values.json_value(row["config"])


@schema
class SpikeModel(dj.Computed):
    definition = """
    # a supervised spike-inference network trained on a training set
    -> TrainingSet
    -> SpikeMethod
    ---
    weights              : <npy@models>   # torch.save of the CPU state dict, as uint8 bytes
    network              : json           # the network and preprocessing config
    training_correlation : float64        # mean spikefinder correlation over the training recordings
    n_recordings         : int32
    wall_seconds         : float64
    versions             : json           # python, numpy, torch, host
    """

    @property
    def key_source(self):
        # a supervised method names its training set; other methods train nothing
        keys = [
            {"spike_method_hash": row["spike_method_hash"], "training_set": _method_config(row)["training_set"]}
            for row in (SpikeMethod & {"builder": "supervised"}).to_dicts()
        ]
        return (TrainingSet.proj() * SpikeMethod.proj()) & keys

    def make_fetch(self, key):
        row = (SpikeMethod & key).fetch1()
        members = GroundTruth & (TrainingSet.Member & key)
        rows = members.to_dicts(order_by=("truth_dataset", "recording"))
        # populate hashes the fetched data (deepdiff) before and after computing: arrays as hex
        # text hash in milliseconds, as arrays in tens of seconds for the full ground truth
        return _method_config(row), [
            (r["truth_dataset"], r["recording"], r["fps"], _as_text(r["calcium"]), _as_text(r["spikes"])) for r in rows
        ]

    def make_compute(self, key, config, rows):
        if not rows:
            raise ValueError(f"training set {key['training_set']!r} has no ground-truth recordings")
        recordings = [
            spikes.Recording(
                values.text_as_array(calcium), values.text_as_array(counts), fps, dataset=dataset, name=name
            )
            for dataset, name, fps, calcium, counts in rows
        ]
        training = {k: v for k, v in config.items() if k != "training_set"}
        start = time.time()
        model = spikes.train_spike_model(recordings, **training)
        weights = np.frombuffer(model.to_bytes(), dtype=np.uint8).copy()
        return weights, model.config, model.score, len(rows), time.time() - start

    def make_insert(self, key, weights, network, score, n_recordings, wall_seconds):
        import torch

        versions = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "host": platform.node(),
        }
        self.insert1(
            {
                **key,
                "weights": weights,
                "network": network,
                "training_correlation": float(score),
                "n_recordings": int(n_recordings),
                "wall_seconds": float(wall_seconds),
                "versions": versions,
            }
        )

    @staticmethod
    def load_model(key: dict) -> spikes.SpikeModel:
        """The trained network at ``key`` (CPU)."""
        row = (SpikeModel & key).fetch1()
        network = _method_config({"config": row["network"]})
        return spikes.SpikeModel.from_bytes(np.asarray(row["weights"]).tobytes(), network, row["training_correlation"])


@schema
class Activity(dj.Computed):
    definition = """
    # inferred spikes of every unit of a scan's traces, by one spike inference method
    -> imaging.Traces
    -> SpikeMethod
    ---
    fps                  : float64        # frame rate of the traces (Hz)
    n_units              : int32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        -> imaging.Traces.Unit
        ---
        spikes               : <blob>         # (frames,) float32 inferred spikes per frame; NaN where dF/F is
        """

    @property
    def key_source(self):
        # a supervised method runs once its SpikeModel is trained
        ready = [
            {"spike_method_hash": row["spike_method_hash"]}
            for row in SpikeMethod.to_dicts()
            if row["builder"] != "supervised"
            or SpikeModel
            & {"spike_method_hash": row["spike_method_hash"], "training_set": _method_config(row)["training_set"]}
        ]
        return (imaging.Traces.proj() * SpikeMethod.proj()) & ready

    def make_fetch(self, key):
        row = (SpikeMethod & key).fetch1()
        config = _method_config(row)
        units = (imaging.Traces.Unit & key).to_dicts(order_by="unit_id")
        fps = float((imaging.Traces & key).fetch1("fps"))
        weights = network = None
        if row["builder"] == "supervised":
            model_key = {"spike_method_hash": key["spike_method_hash"], "training_set": config["training_set"]}
            weights, network = (SpikeModel & model_key).fetch1("weights", "network")
            weights = np.asarray(weights)
        return row["builder"], config, [u["unit_id"] for u in units], [u["dff"] for u in units], fps, weights, network

    def make_compute(self, key, builder, config, unit_ids, traces, fps, weights, network):
        with imaging.naming_scan(key):
            if not unit_ids:
                raise ValueError("Traces has no units (0 cells segmented; expected at least 1)")
            lengths = {np.asarray(t).size for t in traces}
            if len(lengths) != 1:
                raise ValueError(f"Traces units have different lengths {sorted(lengths)} (expected one)")
            model = None
            if builder == "supervised":
                model = spikes.SpikeModel.from_bytes(weights.tobytes(), _method_config({"config": network}))
            inferred = spikes.infer_spikes(np.stack(traces), fps, builder, model, **config)
        return fps, unit_ids, inferred

    def make_insert(self, key, fps, unit_ids, inferred):
        self.insert1({**key, "fps": fps, "n_units": len(unit_ids)})
        self.Unit.insert(
            [{**key, "unit_id": int(u), "spikes": s.astype(np.float32)} for u, s in zip(unit_ids, inferred)]
        )


def export_pretrained(
    training_set: str, name: str = "default", path: str | Path | None = None, config: dict | None = None
) -> Path:
    """Write the shipped spike-inference weights from the database: the one command behind them.

    Inserts (or finds) the ``supervised`` method with the default configuration (updated by
    ``config``) on ``training_set``, trains its ``SpikeModel`` if it is not trained yet, and saves that model
    with its provenance as ``pipeline/spikes/weights/<name>.pt`` (or ``path``), which the
    ``pretrained`` spikes method loads. Training is deterministic on the CPU, so the same
    ground truth gives the same weights.

    Raises
    ------
    ValueError
        If the training set does not exist.
    """
    from pipeline.spikes import weights

    if not TrainingSet & {"training_set": training_set}:
        known = ", ".join(TrainingSet().to_arrays("training_set").tolist()) or "none"
        raise ValueError(f"training set {training_set!r} does not exist (expected one of: {known})")
    method = SpikeMethod.insert_method(
        "supervised", {**(config or {}), "training_set": training_set}, "shipped weights"
    )
    key = {"spike_method_hash": method["spike_method_hash"], "training_set": training_set}
    SpikeModel.populate(key)
    row = (SpikeModel & key).fetch1("training_correlation", "n_recordings", "wall_seconds", "versions")
    members = (TrainingSet.Member & key).to_arrays("truth_dataset")
    provenance = {
        "training_set": training_set,
        "spike_method_hash": key["spike_method_hash"],
        "datasets": sorted(set(members.tolist())),
        "n_recordings": int(row[1]),
        "training_correlation": float(row[0]),
        "wall_seconds": float(row[2]),
        # versions without the host: the file is shipped
        "versions": {k: v for k, v in values.json_value(row[3]).items() if k != "host"},
    }
    return weights.save(SpikeModel.load_model(key), path or weights.path_of(name), provenance)
