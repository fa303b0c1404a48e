"""Stimulus/response datasets: the Sensorium FileTree format and the data-loader builders.

The FileTree layout (one folder per dataset, one ``.npy`` per trial and field)::

    data/images/<i>.npy          (1, H, W)   stimulus shown on trial i
    data/responses/<i>.npy       (n_neurons,) response of every neuron on trial i
    data/behavior/<i>.npy        (3,)        pupil radius, its derivative, running speed
    data/pupil_center/<i>.npy    (2,)        eye position (x, y)
    meta/neurons/<name>.npy      (n_neurons, ...) unit_ids, area, layer, cell_motor_coordinates, ...
    meta/statistics/<field>/{all,stimulus_frame}/{mean,std,min,max,median}.npy
    meta/trials/{tiers, frame_image_id, trial_idx}.npy   (n_trials,)
    meta/<anything else>/...     kept as-is (e.g. meta/ground_truth/rates.npy of simulations)

``i`` runs over 0 .. n_trials - 1, the row of the trial in ``meta/trials``; tiers are
``train``, ``validation``, ``test`` and ``final_test``. ``behavior`` and ``pupil_center`` may be
absent as a whole (a recording without an eye camera / treadmill); batches then carry zeros
and the dataset says ``has_behavior = False``.

A dataset builder (kind ``"dataset"``) is ``fn(seed, *, paths, ...config) -> dataloaders`` with
``dataloaders[tier][data_key]`` a ``torch.utils.data.DataLoader`` whose batches are dicts of
CPU tensors (picklable, so ``num_workers > 0`` works)::

    images (B, 1, H, W) float32, responses (B, N) float32, behavior (B, 3) float32,
    pupil_center (B, 2) float32, image_id (B,) int64, trial_idx (B,) int64
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import identity

FIELDS = ("images", "responses", "behavior", "pupil_center")
OPTIONAL_FIELDS = ("behavior", "pupil_center")
TIERS = ("train", "validation", "test", "final_test")
TRIAL_FIELDS = ("tiers", "frame_image_id", "trial_idx")
STATISTIC_SECTIONS = ("all", "stimulus_frame")


class FileTreeError(ValueError):
    """A FileTree folder (or in-memory dataset) that does not follow the layout."""


@dataclass
class FileTree:
    """A dataset in memory, exactly what one FileTree folder holds.

    Attributes
    ----------
    images : (n_trials, 1, H, W) float32
    responses : (n_trials, n_neurons) float32
    behavior : (n_trials, 3) float32 or None
    pupil_center : (n_trials, 2) float32 or None
    tiers : (n_trials,) str, each one of ``TIERS``
    image_ids : (n_trials,) int64, ``meta/trials/frame_image_id``
    trial_idx : (n_trials,) int64
    neurons : dict of (n_neurons, ...) arrays; ``unit_ids`` is required
    meta : dict of any further meta arrays by path under ``meta/`` without ``.npy``
        (e.g. ``"ground_truth/rates"``)
    """

    images: np.ndarray
    responses: np.ndarray
    tiers: np.ndarray
    image_ids: np.ndarray
    trial_idx: np.ndarray
    neurons: dict[str, np.ndarray]
    behavior: np.ndarray | None = None
    pupil_center: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.images.ndim == 3:
            self.images = self.images[:, None]
        self.responses = np.asarray(self.responses, dtype=np.float32)
        self.tiers = np.asarray(self.tiers).astype(str)
        self.image_ids = np.asarray(self.image_ids).astype(np.int64)
        self.trial_idx = np.asarray(self.trial_idx).astype(np.int64)
        self.neurons = {k: np.asarray(v) for k, v in self.neurons.items()}
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=np.float32))
        self.meta = {k: np.asarray(v) for k, v in self.meta.items()}
        self.validate()

    @property
    def n_trials(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[1])

    @property
    def unit_ids(self) -> np.ndarray:
        return self.neurons["unit_ids"]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the stimulus images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def validate(self, where: str = "FileTree") -> None:
        """Raise ``FileTreeError`` naming the field and what was expected, if inconsistent."""
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise FileTreeError(f"{where}: images have shape {self.images.shape} (expected (n_trials, 1, H, W))")
        if self.responses.ndim != 2:
            raise FileTreeError(
                f"{where}: responses have shape {self.responses.shape} (expected (n_trials, n_neurons))"
            )
        n, n_neurons = self.responses.shape
        expected = {
            "images": (self.images.shape[0], f"({n}, 1, H, W)"),
            "meta/trials/tiers": (self.tiers.shape[0], f"({n},)"),
            "meta/trials/frame_image_id": (self.image_ids.shape[0], f"({n},)"),
            "meta/trials/trial_idx": (self.trial_idx.shape[0], f"({n},)"),
        }
        for name, (length, shape) in expected.items():
            if length != n:
                raise FileTreeError(f"{where}: {name} has {length} trials (expected {shape}, as responses)")
        for name, width in (("behavior", 3), ("pupil_center", 2)):
            value = getattr(self, name)
            if value is not None and value.shape != (n, width):
                raise FileTreeError(f"{where}: {name} has shape {value.shape} (expected ({n}, {width}))")
        check_neurons_and_tiers(self.neurons, n_neurons, self.tiers, where)


def check_neurons_and_tiers(neurons: dict[str, np.ndarray], n_neurons: int, tiers: np.ndarray, where: str) -> None:
    """Raise ``FileTreeError`` for missing or duplicate unit ids, neuron meta of another length, unknown tiers."""
    if "unit_ids" not in neurons:
        raise FileTreeError(f"{where}: meta/neurons/unit_ids is missing (expected ({n_neurons},))")
    for name, value in neurons.items():
        if value.ndim == 0 or value.shape[0] != n_neurons:
            raise FileTreeError(
                f"{where}: meta/neurons/{name} has shape {value.shape} (expected ({n_neurons}, ...), "
                f"one entry per neuron in responses)"
            )
    if len(np.unique(neurons["unit_ids"])) != n_neurons:
        raise FileTreeError(f"{where}: meta/neurons/unit_ids has duplicates (expected {n_neurons} distinct ids)")
    bad = sorted(set(np.asarray(tiers).tolist()) - set(TIERS))
    if bad:
        raise FileTreeError(f"{where}: meta/trials/tiers has unknown tier(s) {bad} (expected some of {list(TIERS)})")


# --------------------------------------------------------------------------------------- #
# reading and writing
# --------------------------------------------------------------------------------------- #


def _load(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise FileTreeError(f"{where}: {path.name} cannot be read without pickle ({error})") from None
    except OSError as error:
        raise FileTreeError(f"{where}: {path.name} is not a readable .npy file ({error})") from None


def _trial_files(folder: Path, name: str, n: int, where: str) -> list[Path]:
    sub = folder / "data" / name
    if not sub.is_dir():
        raise FileTreeError(f"{where}: missing field folder data/{name} (expected one .npy per trial, {n} trials)")
    names = {p.name for p in sub.iterdir() if p.suffix == ".npy"}
    expected = {f"{i}.npy" for i in range(n)}
    missing = sorted(expected - names, key=lambda s: int(s[:-4]))
    if missing:
        raise FileTreeError(
            f"{where}: data/{name} has {len(names)} files, missing {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (expected 0.npy .. {n - 1}.npy, one per trial in meta/trials)"
        )
    extra = sorted(names - expected)
    if extra:
        raise FileTreeError(
            f"{where}: data/{name} has {len(names)} files, extra {', '.join(extra[:5])} "
            f"(expected {n}, one per trial in meta/trials)"
        )
    return [sub / f"{i}.npy" for i in range(n)]


def _stack_field(folder: Path, name: str, n: int, shape: tuple | None, where: str) -> np.ndarray:
    files = _trial_files(folder, name, n, where)
    first = _load(files[0], where) if n else np.zeros(shape or (0,), dtype=np.float32)
    shape = tuple(first.shape) if shape is None else shape
    out = np.empty((n, *shape), dtype=np.float32)
    for i, path in enumerate(files):
        value = _load(path, where)
        if value.shape != shape:
            raise FileTreeError(f"{where}: data/{name}/{i}.npy has shape {value.shape} (expected {shape})")
        out[i] = value
    return out


def read_filetree(path: str | os.PathLike) -> FileTree:
    """Read and validate a FileTree folder.

    Parameters
    ----------
    path
        The folder (the one that holds ``data/`` and ``meta/``).

    Returns
    -------
    FileTree

    Raises
    ------
    FileTreeError
        Naming the folder, the field and what was expected, for a missing field or file, a
        shape that differs from the others, or trial / neuron counts that do not match.
    """
    folder = Path(path)
    where = f"FileTree {folder}"
    if not folder.is_dir():
        raise FileTreeError(f"{where}: not a folder (expected data/ and meta/ inside)")
    trials = {}
    for name in TRIAL_FIELDS:
        file = folder / "meta" / "trials" / f"{name}.npy"
        if not file.is_file():
            raise FileTreeError(f"{where}: missing meta/trials/{name}.npy (expected one entry per trial)")
        trials[name] = _load(file, where)
    n = int(trials["tiers"].shape[0])
    for name, value in trials.items():
        if value.shape != (n,):
            raise FileTreeError(
                f"{where}: meta/trials/{name}.npy has shape {value.shape} (expected ({n},) as meta/trials/tiers)"
            )
    neurons_dir = folder / "meta" / "neurons"
    if not (neurons_dir / "unit_ids.npy").is_file():
        raise FileTreeError(f"{where}: missing meta/neurons/unit_ids.npy (expected one id per neuron)")
    neurons = {p.stem: _load(p, where) for p in sorted(neurons_dir.glob("*.npy"))}
    n_neurons = int(neurons["unit_ids"].shape[0])

    responses = _stack_field(folder, "responses", n, (n_neurons,), where)
    images = _stack_field(folder, "images", n, None, where)
    if images.ndim != 4 or images.shape[1] != 1:
        raise FileTreeError(f"{where}: data/images/0.npy has shape {images.shape[1:]} (expected (1, H, W))")
    optional = {}
    for name, width in (("behavior", 3), ("pupil_center", 2)):
        optional[name] = _stack_field(folder, name, n, (width,), where) if (folder / "data" / name).exists() else None

    meta = {}
    for file in sorted((folder / "meta").rglob("*.npy")):
        rel = file.relative_to(folder / "meta").with_suffix("").as_posix()
        if rel.split("/")[0] in ("neurons", "statistics") or rel in {f"trials/{t}" for t in TRIAL_FIELDS}:
            continue
        meta[rel] = _load(file, where)
    try:
        return FileTree(
            images=images,
            responses=responses,
            tiers=trials["tiers"],
            image_ids=trials["frame_image_id"],
            trial_idx=trials["trial_idx"],
            neurons=neurons,
            meta=meta,
            **optional,
        )
    except FileTreeError as error:
        raise FileTreeError(str(error).replace("FileTree:", f"{where}:", 1)) from None


def statistics(tree: FileTree) -> dict[str, dict[str, np.ndarray]]:
    """Summary statistics of every field over all trials, as in ``meta/statistics``.

    Returns
    -------
    dict
        ``stats[field][name]`` for name in mean, std, min, max, median: a scalar for images,
        (n_neurons,) for responses, (3,) for behavior, (2,) for pupil_center.
    """
    out = {}
    for name in FIELDS:
        value = getattr(tree, name)
        if value is None or value.shape[0] == 0:
            continue
        axis = None if name == "images" else 0
        out[name] = {
            "mean": np.mean(value, axis=axis),
            "std": np.std(value, axis=axis),
            "min": np.min(value, axis=axis),
            "max": np.max(value, axis=axis),
            "median": np.median(value, axis=axis),
        }
    return out


def write_filetree(path: str | os.PathLike, tree: FileTree, *, overwrite: bool = False) -> Path:
    """Write ``tree`` as a FileTree folder at ``path`` (the exact Sensorium layout).

    The folder is written beside its destination and renamed into place, so a reader never
    sees half a dataset. ``meta/statistics`` is computed over all trials (both sections).

    Parameters
    ----------
    path
        Destination folder; must not exist unless ``overwrite``.
    tree
        The dataset.
    overwrite
        Replace an existing folder.

    Returns
    -------
    pathlib.Path
        The folder written.
    """
    folder = Path(path)
    tree.validate()
    if folder.exists() and not overwrite:
        raise FileExistsError(f"FileTree {folder}: exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in FIELDS:
            value = getattr(tree, name)
            if value is None:
                continue
            sub = staging / "data" / name
            sub.mkdir(parents=True)
            for i in range(tree.n_trials):
                np.save(sub / f"{i}.npy", value[i])
        trials = staging / "meta" / "trials"
        trials.mkdir(parents=True)
        np.save(trials / "tiers.npy", tree.tiers)
        np.save(trials / "frame_image_id.npy", tree.image_ids)
        np.save(trials / "trial_idx.npy", tree.trial_idx)
        neurons = staging / "meta" / "neurons"
        neurons.mkdir(parents=True)
        for name, value in tree.neurons.items():
            np.save(neurons / f"{name}.npy", value)
        for name, stats in statistics(tree).items():
            for section in STATISTIC_SECTIONS:
                sub = staging / "meta" / "statistics" / name / section
                sub.mkdir(parents=True)
                for stat, value in stats.items():
                    np.save(sub / f"{stat}.npy", np.asarray(value, dtype=np.float32))
        for rel, value in tree.meta.items():
            file = staging / "meta" / f"{rel}.npy"
            file.parent.mkdir(parents=True, exist_ok=True)
            np.save(file, value)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def export_filetree(source: str | os.PathLike, destination: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy a FileTree folder (images or video) to ``destination`` after validating it (read, then write)."""
    from pipeline.sysid import video

    if video.is_video_filetree(source):
        return video.write_video_filetree(destination, video.read_video_filetree(source), overwrite=overwrite)
    return write_filetree(destination, read_filetree(source), overwrite=overwrite)


def read_any_filetree(path: str | os.PathLike):
    """A ``FileTree`` (images) or a ``pipeline.sysid.video.VideoTree`` (a folder with ``data/videos``)."""
    from pipeline.sysid import video

    return video.read_video_filetree(path) if video.is_video_filetree(path) else read_filetree(path)


# --------------------------------------------------------------------------------------- #
# data loaders
# --------------------------------------------------------------------------------------- #


class TrialDataset(Dataset):
    """The trials of one tier of one dataset, as dicts of CPU tensors.

    Holds only numpy arrays and plain attributes, so it pickles (``num_workers > 0``).

    Attributes
    ----------
    data_key : str
    tier : str
    n_neurons : int
    image_shape : tuple (1, H, W)
    unit_ids : (n_neurons,) int64
    neurons : dict of per-neuron meta arrays (positions, areas, ...)
    has_behavior : bool
        False when the folder had no behavior / pupil_center (batches carry zeros).
    statistics : dict
        The train-tier statistics the data were normalized with (``{}`` without normalization).
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        *,
        data_key: str,
        tier: str,
        neurons: dict[str, np.ndarray],
        has_behavior: bool,
        statistics: dict[str, Any],
    ) -> None:
        self.arrays = arrays
        self.data_key = data_key
        self.tier = tier
        self.neurons = neurons
        self.unit_ids = neurons["unit_ids"]
        self.n_neurons = int(arrays["responses"].shape[1])
        self.image_shape = tuple(arrays["images"].shape[1:])
        self.has_behavior = has_behavior
        self.statistics = statistics

    def __len__(self) -> int:
        return int(self.arrays["responses"].shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.asarray(value[index])) for name, value in self.arrays.items()}


def train_statistics(tree: FileTree, train: np.ndarray) -> dict[str, Any]:
    """The normalization constants, from the trials selected by the boolean mask ``train``.

    Images: scalar mean and std. Responses: per-neuron std, floored at 1% of its mean over
    neurons (silent neurons are not blown up). Behavior: per-column std (no centring, as the
    Sensorium loaders). Pupil centre: per-column mean and std.
    """
    if not train.any():
        raise FileTreeError("dataset has no train trials to compute normalization statistics from")
    images = tree.images[train]
    responses = tree.responses[train].std(axis=0)
    floor = max(float(responses.mean()) * 0.01, 1e-8)
    stats: dict[str, Any] = {
        "images_mean": float(images.mean()),
        "images_std": float(max(images.std(), 1e-8)),
        "responses_std": np.maximum(responses, floor).astype(np.float32),
    }
    if tree.behavior is not None:
        stats["behavior_std"] = np.maximum(tree.behavior[train].std(axis=0), 1e-8).astype(np.float32)
    if tree.pupil_center is not None:
        stats["pupil_center_mean"] = tree.pupil_center[train].mean(axis=0).astype(np.float32)
        stats["pupil_center_std"] = np.maximum(tree.pupil_center[train].std(axis=0), 1e-8).astype(np.float32)
    return stats


def _select_neurons(tree: FileTree, neuron_ids: list[int] | None, where: str) -> np.ndarray:
    if neuron_ids is None:
        return np.arange(tree.n_neurons)
    position = {int(u): i for i, u in enumerate(tree.unit_ids.tolist())}
    missing = [u for u in neuron_ids if int(u) not in position]
    if missing:
        raise FileTreeError(f"{where}: neuron_ids {missing[:10]} not in meta/neurons/unit_ids")
    return np.array([position[int(u)] for u in neuron_ids], dtype=np.int64)


def tier_datasets(
    tree: FileTree,
    seed: int,
    *,
    data_key: str,
    tiers: list[str],
    normalize: bool = True,
    neuron_ids: list[int] | None = None,
    image_ids: list[int] | None = None,
    exclude_image_ids: list[int] | None = None,
    train_fraction: float = 1.0,
) -> dict[str, TrialDataset]:
    """Split one dataset into per-tier ``TrialDataset``s, selected and normalized.

    Parameters
    ----------
    tree
        The dataset.
    seed
        Seeds the ``train_fraction`` subsample of train trials.
    data_key
        Name of the dataset in the loaders (one readout per data key).
    tiers
        The tiers to return.
    normalize
        Normalize every tier with the statistics of the (selected) train tier.
    neuron_ids
        Keep these unit ids, in this order (default all).
    image_ids, exclude_image_ids
        Keep only trials showing these images / drop trials showing these.
    train_fraction
        Keep this fraction of the train trials (a seeded random subset), in (0, 1].
    """
    where = f"dataset {data_key!r}"
    bad = sorted(set(tiers) - set(TIERS))
    if bad:
        raise FileTreeError(f"{where}: unknown tier(s) {bad} (expected some of {list(TIERS)})")
    if not 0.0 < train_fraction <= 1.0:
        raise FileTreeError(f"{where}: train_fraction = {train_fraction} (expected in (0, 1])")
    units = _select_neurons(tree, neuron_ids, where)
    keep = np.ones(tree.n_trials, dtype=bool)
    if image_ids is not None:
        keep &= np.isin(tree.image_ids, np.asarray(image_ids, dtype=np.int64))
    if exclude_image_ids is not None:
        keep &= ~np.isin(tree.image_ids, np.asarray(exclude_image_ids, dtype=np.int64))
    train = keep & (tree.tiers == "train")
    if train_fraction < 1.0:
        rows = np.flatnonzero(train)
        chosen = np.random.default_rng(seed).permutation(rows)[: max(1, int(round(train_fraction * len(rows))))]
        train = np.zeros_like(train)
        train[chosen] = True
        keep &= (tree.tiers != "train") | train
    sub = FileTree(
        images=tree.images,
        responses=tree.responses[:, units],
        tiers=tree.tiers,
        image_ids=tree.image_ids,
        trial_idx=tree.trial_idx,
        neurons={k: v[units] for k, v in tree.neurons.items()},
        behavior=tree.behavior,
        pupil_center=tree.pupil_center,
    )
    stats = train_statistics(sub, train) if normalize else {}
    out = {}
    for tier in tiers:
        rows = np.flatnonzero(keep & (tree.tiers == tier))
        images = sub.images[rows]
        responses = sub.responses[rows]
        behavior = sub.behavior[rows] if sub.behavior is not None else np.zeros((len(rows), 3), np.float32)
        pupil = sub.pupil_center[rows] if sub.pupil_center is not None else np.zeros((len(rows), 2), np.float32)
        if normalize:
            images = (images - stats["images_mean"]) / stats["images_std"]
            responses = responses / stats["responses_std"]
            if sub.behavior is not None:
                behavior = behavior / stats["behavior_std"]
            if sub.pupil_center is not None:
                pupil = (pupil - stats["pupil_center_mean"]) / stats["pupil_center_std"]
        arrays = {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "responses": np.ascontiguousarray(responses, dtype=np.float32),
            "behavior": np.ascontiguousarray(behavior, dtype=np.float32),
            "pupil_center": np.ascontiguousarray(pupil, dtype=np.float32),
            "image_id": sub.image_ids[rows].astype(np.int64),
            "trial_idx": sub.trial_idx[rows].astype(np.int64),
        }
        out[tier] = TrialDataset(
            arrays,
            data_key=data_key,
            tier=tier,
            neurons=sub.neurons,
            has_behavior=sub.behavior is not None,
            statistics=stats,
        )
    return out


def make_loaders(
    datasets: dict[str, dict[str, TrialDataset]],
    seed: int,
    *,
    batch_size: int = 64,
    shuffle: bool = True,
    num_workers: int = 0,
) -> dict[str, dict[str, DataLoader]]:
    """Data loaders ``[tier][data_key]`` from ``tier_datasets`` results keyed by data key.

    The train tier is shuffled with a generator seeded by ``seed`` (same order every run);
    the other tiers keep trial order. Loaders never move data off the CPU.
    """
    loaders: dict[str, dict[str, DataLoader]] = {}
    for offset, (data_key, tiers) in enumerate(datasets.items()):
        for tier, dataset in tiers.items():
            generator = torch.Generator().manual_seed(int(seed) * 1000 + offset)
            loaders.setdefault(tier, {})[data_key] = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=shuffle and tier == "train",
                generator=generator,
                num_workers=num_workers,
                persistent_workers=False,
            )
    return loaders


@identity.register(
    "dataset",
    name="filetree",
    validate=identity.bounds(minimum={"batch_size": 1}, above={"train_fraction": 0.0}, maximum={"train_fraction": 1.0}),
)
def filetree_loaders(
    seed: int,
    *,
    paths: list[str] | None = None,
    data_keys: list[str] | None = None,
    tiers: list[str] = ("train", "validation", "test"),  # type: ignore[assignment]
    normalize: bool = True,
    neuron_ids: list[int] | None = None,
    image_ids: list[int] | None = None,
    exclude_image_ids: list[int] | None = None,
    train_fraction: float = 1.0,
    batch_size: int = 64,
    shuffle: bool = True,
) -> dict[str, dict[str, DataLoader]]:
    """Data loaders over one or more FileTree folders (one data key each).

    Parameters
    ----------
    seed
        Seeds the train shuffling and the ``train_fraction`` subsample.
    paths
        FileTree folders. The ``Dataset`` table passes these; a stored ``DatasetConfig``
        leaves them unset.
    data_keys
        One name per path (default: the folder names). The ``Dataset`` table passes its key.
    tiers, normalize, neuron_ids, image_ids, exclude_image_ids, train_fraction
        See ``tier_datasets``; applied to every dataset.
    batch_size
        Trials per batch.
    shuffle
        Shuffle the train tier.

    Returns
    -------
    dict
        ``loaders[tier][data_key]`` -> DataLoader of dict batches.
    """
    if not paths:
        raise FileTreeError("filetree dataset: no paths given (expected one or more FileTree folders)")
    paths = [str(p) for p in paths]
    keys = list(data_keys) if data_keys is not None else [Path(p).name for p in paths]
    if len(keys) != len(paths) or len(set(keys)) != len(keys):
        raise FileTreeError(f"filetree dataset: data_keys {keys} (expected {len(paths)} distinct names, one per path)")
    datasets = {}
    for data_key, path in zip(keys, paths):
        datasets[data_key] = tier_datasets(
            read_filetree(path),
            seed,
            data_key=data_key,
            tiers=list(tiers),
            normalize=normalize,
            neuron_ids=neuron_ids,
            image_ids=image_ids,
            exclude_image_ids=exclude_image_ids,
            train_fraction=train_fraction,
        )
    return make_loaders(datasets, seed, batch_size=batch_size, shuffle=shuffle)


def _given_tiers(tiers: np.ndarray, n_trials: int) -> np.ndarray:
    given = np.asarray(tiers).astype(str)
    if given.shape != (n_trials,):
        raise FileTreeError(f"tiers have shape {given.shape} (expected ({n_trials},), one per trial)")
    unknown = sorted(set(given.tolist()) - set(TIERS))
    if unknown:
        raise FileTreeError(f"unknown tier(s) {unknown} (expected some of {list(TIERS)})")
    return given.astype("<U10")


def assign_tiers(stimulus_ids: np.ndarray, seed: int = 0, validation_fraction: float = 0.1) -> np.ndarray:
    """Tiers of trials by the stimulus they showed (an image or a movie).

    Stimuli shown on more than one trial make the ``test`` tier (their repeats give the noise
    estimate of correlation to average and FEVE); the other stimuli are split into
    ``validation`` (a seeded random ``validation_fraction`` of them) and ``train``.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise FileTreeError(f"validation_fraction = {validation_fraction} (expected in [0, 1))")
    stimulus_ids = np.asarray(stimulus_ids, dtype=np.int64)
    ids, counts = np.unique(stimulus_ids, return_counts=True)
    repeated = ids[counts > 1]
    single = ids[counts == 1]
    chosen = np.random.default_rng(seed).permutation(single)[: int(round(validation_fraction * len(single)))]
    return np.where(
        np.isin(stimulus_ids, repeated), "test", np.where(np.isin(stimulus_ids, chosen), "validation", "train")
    ).astype("<U10")


def given_tiers(tiers: np.ndarray, n_trials: int) -> np.ndarray:
    """The lab's own tiers, checked: one of ``TIERS`` per trial."""
    return _given_tiers(tiers, n_trials)


def trials_filetree(
    images: dict[int, np.ndarray],
    responses: np.ndarray,
    image_ids: np.ndarray,
    trial_idx: np.ndarray,
    unit_ids: np.ndarray,
    *,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    neurons: dict[str, np.ndarray] | None = None,
    tiers: np.ndarray | None = None,
) -> FileTree:
    """A FileTree dataset from trial responses, with tiers assigned (or given).

    Images shown on more than one trial make the ``test`` tier (their repeats give the
    noise estimate of correlation to average and FEVE); the other images are split into
    ``validation`` (a seeded random ``validation_fraction`` of them) and ``train``.

    Parameters
    ----------
    images
        image_id -> (H, W) or (1, H, W) stimulus.
    responses
        (trials, units) response of every unit on every trial.
    image_ids, trial_idx
        (trials,) the image shown and the trial's index.
    unit_ids
        (units,) ids of the units (columns of ``responses``).
    behavior, pupil_center
        (trials, 3) and (trials, 2), or None.
    seed
        Seeds the train / validation split.
    validation_fraction
        Fraction of the once-shown images that go to validation.
    neurons
        Further per-unit meta arrays (area, layer, coordinates, ...).
    tiers
        (trials,) the lab's own tiers (each one of ``TIERS``), used instead of the assignment.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    missing = sorted(set(image_ids.tolist()) - set(int(i) for i in images))
    if missing:
        raise FileTreeError(f"trials show image id(s) {missing[:10]} that have no image")
    tiers = assign_tiers(image_ids, seed, validation_fraction) if tiers is None else _given_tiers(tiers, len(image_ids))
    stack = (
        np.stack(
            [np.asarray(images[int(i)], dtype=np.float32).reshape(1, *np.shape(images[int(i)])[-2:]) for i in image_ids]
        )
        if len(image_ids)
        else np.zeros((0, 1, 1, 1), np.float32)
    )
    return FileTree(
        images=stack,
        responses=responses,
        tiers=tiers,
        image_ids=image_ids,
        trial_idx=trial_idx,
        neurons={"unit_ids": np.asarray(unit_ids, dtype=np.int64), **(neurons or {})},
        behavior=behavior,
        pupil_center=pupil_center,
    )
