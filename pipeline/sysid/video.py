"""Video datasets: the Sensorium 2023 "dynamic" FileTree layout, clip loaders, and the scores of video models.

The layout (one folder per dataset, one ``.npy`` per trial and field, time last)::

    data/videos/<i>.npy         (H, W, T)    the movie shown on trial i
    data/responses/<i>.npy      (n_neurons, T) responses per frame
    data/behavior/<i>.npy       (2, T)       pupil dilation, running speed
    data/pupil_center/<i>.npy   (2, T)       eye position (x, y)
    meta/neurons/<name>.npy     (n_neurons, ...) unit_ids, cell_motor_coordinates, ...
    meta/trials/{tiers, trial_idx, video_id}.npy   (n_trials,)
    meta/statistics/<field>/all/{mean,std,min,max,median}.npy
    meta/<anything else>/...    kept as-is (e.g. meta/ground_truth/latents of simulations)

``video_id`` names the movie of a trial (repeats of a test movie share it); a folder without
it (the public Sensorium 2023 folders) gets ids from the movies' content. Trials of
different lengths are cut to the shortest. ``behavior`` and ``pupil_center`` may be absent.

The dataset builder ``video_filetree`` (kind ``"dataset"``) gives loaders whose batches are::

    videos (B, 1, T, H, W), responses (B, T, N), behavior (B, T, 2), pupil_center (B, T, 2),
    video_id (B,), trial_idx (B,), start (B,)   -- ``start``: first frame of the clip in its trial

Training batches are clips of ``clip_frames`` frames; validation and test batches are whole
trials. ``pipeline.sysid.metrics.predict`` flattens time, so the Sensorium scores of
``Score`` (per-frame correlation, correlation to the average over repeats, FEVE) apply to video
models unchanged, with one "image" per (movie, frame).
"""

from __future__ import annotations

import hashlib
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
from pipeline.sysid.data import TIERS, FileTreeError, _load, _trial_files, check_neurons_and_tiers, make_loaders

VIDEO_FIELDS = ("videos", "responses", "behavior", "pupil_center")
OPTIONAL = ("behavior", "pupil_center")
BEHAVIOR_NAMES = ("pupil_dilation", "running_speed")


@dataclass
class VideoTree:
    """A video dataset in memory (time on the second axis of every per-trial array).

    Attributes
    ----------
    videos : (n_trials, T, H, W) float32
    responses : (n_trials, T, n_neurons) float32
    behavior : (n_trials, T, 2) float32 or None -- pupil dilation, running speed
    pupil_center : (n_trials, T, 2) float32 or None
    tiers, video_ids, trial_idx : (n_trials,)
    neurons : dict of (n_neurons, ...) arrays with ``unit_ids``
    meta : further meta arrays by path under ``meta/`` (e.g. ``ground_truth/latents``)
    """

    videos: np.ndarray
    responses: np.ndarray
    tiers: np.ndarray
    video_ids: np.ndarray
    trial_idx: np.ndarray
    neurons: dict[str, np.ndarray]
    behavior: np.ndarray | None = None
    pupil_center: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.videos = np.asarray(self.videos, dtype=np.float32)
        self.responses = np.asarray(self.responses, dtype=np.float32)
        self.tiers = np.asarray(self.tiers).astype(str)
        self.video_ids = np.asarray(self.video_ids).astype(np.int64)
        self.trial_idx = np.asarray(self.trial_idx).astype(np.int64)
        self.neurons = {k: np.asarray(v) for k, v in self.neurons.items()}
        for name in OPTIONAL:
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
        return int(self.responses.shape[2])

    @property
    def frames(self) -> int:
        return int(self.responses.shape[1])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.videos.shape[2]), int(self.videos.shape[3])

    @property
    def unit_ids(self) -> np.ndarray:
        return self.neurons["unit_ids"]

    def validate(self, where: str = "video FileTree") -> None:
        """Raise ``FileTreeError`` naming the field and what was expected, if inconsistent."""
        if self.responses.ndim != 3:
            raise FileTreeError(f"{where}: responses have shape {self.responses.shape} (expected (trials, T, neurons))")
        n, t, n_neurons = self.responses.shape
        if self.videos.ndim != 4 or self.videos.shape[:2] != (n, t):
            raise FileTreeError(f"{where}: videos have shape {self.videos.shape} (expected ({n}, {t}, H, W))")
        for name in OPTIONAL:
            value = getattr(self, name)
            if value is not None and value.shape != (n, t, 2):
                raise FileTreeError(f"{where}: {name} has shape {value.shape} (expected ({n}, {t}, 2))")
        for name in ("tiers", "video_ids", "trial_idx"):
            if getattr(self, name).shape != (n,):
                raise FileTreeError(f"{where}: {name} has shape {getattr(self, name).shape} (expected ({n},))")
        check_neurons_and_tiers(self.neurons, n_neurons, self.tiers, where)
        for name in ("videos", "responses", *OPTIONAL):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value).all():
                trial = int(np.nonzero(~np.isfinite(value.reshape(n, -1)).all(1))[0][0])
                raise FileTreeError(f"{where}: {name} of trial {trial} has NaN or infinite values (expected finite)")


def takes_video(kind: str, name: str) -> bool:
    """Whether the ``kind`` builder ``name`` takes movies (its function has ``takes_video = True``).

    A dataset builder that reads video folders, or a model builder that reads video batches,
    says so with that attribute (a lab's own builder too); ``TrainedModel`` pairs them with
    video datasets only, and the others with image datasets only. A name that does not
    resolve counts as an image builder (its job then fails with the resolution error).
    """
    try:
        return bool(getattr(identity.resolve(kind, name), "takes_video", False))
    except identity.UnknownBuilderError:
        return False


def is_video_filetree(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a video FileTree (it has ``data/videos``)."""
    return (Path(path) / "data" / "videos").is_dir()


def _content_ids(videos: list[np.ndarray]) -> np.ndarray:
    """Ids that equal movies share: the order of first appearance of each movie's digest."""
    seen: dict[str, int] = {}
    out = []
    for video in videos:
        digest = hashlib.sha1(np.ascontiguousarray(video).tobytes()).hexdigest()
        out.append(seen.setdefault(digest, len(seen)))
    return np.asarray(out, dtype=np.int64)


def read_video_filetree(path: str | os.PathLike) -> VideoTree:
    """Read and validate a video FileTree folder (see the module docstring).

    Raises
    ------
    FileTreeError
        Naming the folder, the file and what was expected.
    """
    folder = Path(path)
    where = f"video FileTree {folder}"
    if not folder.is_dir():
        raise FileTreeError(f"{where}: not a folder (expected data/ and meta/ inside)")
    tiers_file = folder / "meta" / "trials" / "tiers.npy"
    if not tiers_file.is_file():
        raise FileTreeError(f"{where}: missing meta/trials/tiers.npy (expected one tier per trial)")
    tiers = _load(tiers_file, where).astype(str)
    n = int(tiers.shape[0])
    trial_file = folder / "meta" / "trials" / "trial_idx.npy"
    trial_idx = _load(trial_file, where) if trial_file.is_file() else np.arange(n)
    fields: dict[str, list[np.ndarray] | None] = {}
    for name in VIDEO_FIELDS:
        if name in OPTIONAL and not (folder / "data" / name).is_dir():
            fields[name] = None
            continue
        fields[name] = [_load(p, where) for p in _trial_files(folder, name, n, where)]
    lengths: set[int] = set()
    for name, values in fields.items():
        if values is None:
            continue
        for i, value in enumerate(values):
            ndim = 3 if name == "videos" else 2
            if value.ndim != ndim or (name in OPTIONAL and value.shape[0] != 2):
                expected = "(H, W, T)" if name == "videos" else ("(2, T)" if name in OPTIONAL else "(neurons, T)")
                raise FileTreeError(f"{where}: data/{name}/{i}.npy has shape {value.shape} (expected {expected})")
            lengths.add(value.shape[-1])
    frames = min(lengths) if lengths else 0
    if frames < 1:
        raise FileTreeError(f"{where}: trials have no frames (expected T >= 1 in data/videos)")
    cut = {
        name: None if values is None else np.stack([np.moveaxis(v[..., :frames], -1, 0) for v in values])
        for name, values in fields.items()
    }
    ids_file = folder / "meta" / "trials" / "video_id.npy"
    video_ids = _load(ids_file, where) if ids_file.is_file() else _content_ids(fields["videos"])  # type: ignore[arg-type]
    neurons = {p.stem: _load(p, where) for p in sorted((folder / "meta" / "neurons").glob("*.npy"))}
    meta = {}
    for file in sorted((folder / "meta").rglob("*.npy")):
        rel = file.relative_to(folder / "meta").with_suffix("").as_posix()
        if rel.split("/")[0] not in ("trials", "neurons", "statistics"):
            meta[rel] = _load(file, where)
    return VideoTree(
        videos=cut["videos"],
        responses=cut["responses"],
        behavior=cut["behavior"],
        pupil_center=cut["pupil_center"],
        tiers=tiers,
        video_ids=video_ids,
        trial_idx=trial_idx,
        neurons=neurons,
        meta=meta,
    )


def write_video_filetree(path: str | os.PathLike, tree: VideoTree, *, overwrite: bool = False) -> Path:
    """Write ``tree`` as a video FileTree folder (written beside ``path``, then renamed into place)."""
    folder = Path(path)
    tree.validate()
    if folder.exists() and not overwrite:
        raise FileExistsError(f"video FileTree {folder}: exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name in VIDEO_FIELDS:
            value = getattr(tree, name)
            if value is None:
                continue
            sub = staging / "data" / name
            sub.mkdir(parents=True)
            for i in range(tree.n_trials):
                np.save(sub / f"{i}.npy", np.moveaxis(value[i], 0, -1))  # time last
            stats = staging / "meta" / "statistics" / name / "all"
            stats.mkdir(parents=True)
            axes = (0, 1) if name != "videos" else None
            for stat, fn in (
                ("mean", np.mean),
                ("std", np.std),
                ("min", np.min),
                ("max", np.max),
                ("median", np.median),
            ):
                np.save(stats / f"{stat}.npy", np.asarray(fn(value, axis=axes), dtype=np.float32))
        trials = staging / "meta" / "trials"
        trials.mkdir(parents=True)
        np.save(trials / "tiers.npy", tree.tiers)
        np.save(trials / "trial_idx.npy", tree.trial_idx)
        np.save(trials / "video_id.npy", tree.video_ids)
        neurons = staging / "meta" / "neurons"
        neurons.mkdir(parents=True)
        for name, value in tree.neurons.items():
            np.save(neurons / f"{name}.npy", value)
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


def trials_video_tree(
    movies: dict[int, np.ndarray],
    responses: np.ndarray,
    video_ids: np.ndarray,
    trial_idx: np.ndarray,
    unit_ids: np.ndarray,
    *,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    tiers: np.ndarray | None = None,
) -> VideoTree:
    """A video dataset from per-frame trial responses, with tiers assigned as for images (``assign_tiers``).

    Parameters
    ----------
    movies
        video_id -> (T, H, W) movie, one frame per imaging frame of the trial.
    responses
        (trials, T, units).
    video_ids, trial_idx
        (trials,) the movie shown and the trial's index.
    unit_ids
        (units,).
    behavior, pupil_center
        (trials, T, 2) each (pupil dilation and running speed; eye position), or None.
    seed, validation_fraction, tiers
        As ``pipeline.sysid.data.trials_filetree``.
    """
    from pipeline.sysid.data import assign_tiers, given_tiers

    video_ids = np.asarray(video_ids, dtype=np.int64)
    missing = sorted(set(video_ids.tolist()) - set(int(i) for i in movies))
    if missing:
        raise FileTreeError(f"trials show video id(s) {missing[:10]} that have no movie")
    responses = np.asarray(responses, dtype=np.float32)
    frames = responses.shape[1]
    for i in np.unique(video_ids):
        shape = np.shape(movies[int(i)])
        if len(shape) != 3 or shape[0] != frames:
            raise FileTreeError(
                f"movie {int(i)} has shape {shape} (expected ({frames}, H, W): one frame per response frame)"
            )
    tiers = assign_tiers(video_ids, seed, validation_fraction) if tiers is None else given_tiers(tiers, len(video_ids))
    return VideoTree(
        videos=np.stack([np.asarray(movies[int(i)], dtype=np.float32) for i in video_ids]),
        responses=responses,
        tiers=tiers,
        video_ids=video_ids,
        trial_idx=np.asarray(trial_idx, dtype=np.int64),
        neurons={"unit_ids": np.asarray(unit_ids, dtype=np.int64)},
        behavior=behavior,
        pupil_center=pupil_center,
    )


# --------------------------------------------------------------------------------------- #
# loaders
# --------------------------------------------------------------------------------------- #


def video_statistics(tree: VideoTree, train: np.ndarray) -> dict[str, Any]:
    """Normalization constants from the train trials (as the static loaders: responses per-neuron std)."""
    if not train.any():
        raise FileTreeError("video dataset has no train trials to compute normalization statistics from")
    responses = tree.responses[train].std(axis=(0, 1))
    floor = max(float(responses.mean()) * 0.01, 1e-8)
    stats: dict[str, Any] = {
        "videos_mean": float(tree.videos[train].mean()),
        "videos_std": float(max(tree.videos[train].std(), 1e-8)),
        "responses_std": np.maximum(responses, floor).astype(np.float32),
    }
    if tree.behavior is not None:
        stats["behavior_std"] = np.maximum(tree.behavior[train].std(axis=(0, 1)), 1e-8).astype(np.float32)
    if tree.pupil_center is not None:
        stats["pupil_center_mean"] = tree.pupil_center[train].mean(axis=(0, 1)).astype(np.float32)
        stats["pupil_center_std"] = np.maximum(tree.pupil_center[train].std(axis=(0, 1)), 1e-8).astype(np.float32)
    return stats


class VideoDataset(Dataset):
    """Windows of the trials of one tier: clips (training) or whole trials, as dicts of CPU tensors.

    Attributes
    ----------
    data_key, tier : str
    n_neurons : int
    frame_shape : (H, W)
    unit_ids : (n_neurons,) int64
    has_behavior : bool (False: batches carry zeros)
    statistics : dict (the train statistics used, ``{}`` without normalization)
    windows : (n_windows, 2) int64 rows of (trial index within the tier, first frame)
    window_frames : int
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
        window_frames: int,
    ) -> None:
        self.arrays = arrays
        self.data_key, self.tier = data_key, tier
        self.neurons, self.unit_ids = neurons, neurons["unit_ids"]
        self.n_neurons = int(arrays["responses"].shape[2])
        self.frame_shape = tuple(arrays["videos"].shape[2:])
        self.has_behavior, self.statistics = has_behavior, statistics
        frames = int(arrays["responses"].shape[1])
        self.window_frames = min(int(window_frames), frames)
        starts = np.arange(0, frames - self.window_frames + 1, self.window_frames)
        trials = np.arange(arrays["responses"].shape[0])
        self.windows = np.stack(np.meshgrid(trials, starts, indexing="ij"), -1).reshape(-1, 2).astype(np.int64)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        trial, start = (int(v) for v in self.windows[index])
        window = slice(start, start + self.window_frames)
        out = {
            name: torch.from_numpy(np.ascontiguousarray(self.arrays[name][trial, window]))
            for name in ("responses", "behavior", "pupil_center")
        }
        out["videos"] = torch.from_numpy(np.ascontiguousarray(self.arrays["videos"][trial, window]))[None]
        for name in ("video_id", "trial_idx"):
            out[name] = torch.tensor(int(self.arrays[name][trial]))
        out["start"] = torch.tensor(start)
        return out


def video_tier_datasets(
    tree: VideoTree,
    *,
    data_key: str,
    tiers: list[str],
    clip_frames: int,
    normalize: bool = True,
    neuron_ids: list[int] | None = None,
) -> dict[str, VideoDataset]:
    """Per-tier ``VideoDataset``s: train in clips of ``clip_frames``, the others as whole trials."""
    where = f"video dataset {data_key!r}"
    if clip_frames < 1:
        raise FileTreeError(f"{where}: clip_frames = {clip_frames} (expected at least 1)")
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown:
        raise FileTreeError(f"{where}: tiers {unknown} (expected some of {list(TIERS)})")
    columns = np.arange(tree.n_neurons)
    if neuron_ids is not None:
        position = {int(u): i for i, u in enumerate(tree.unit_ids.tolist())}
        missing = [u for u in neuron_ids if int(u) not in position]
        if missing:
            raise FileTreeError(f"{where}: neuron_ids {missing[:10]} not in meta/neurons/unit_ids")
        columns = np.array([position[int(u)] for u in neuron_ids], dtype=np.int64)
    stats = video_statistics(tree, tree.tiers == "train") if normalize else {}
    has_behavior = tree.behavior is not None and tree.pupil_center is not None
    out = {}
    for tier in tiers:
        rows = np.nonzero(tree.tiers == tier)[0]
        if not len(rows):
            continue
        videos = tree.videos[rows]
        responses = tree.responses[rows][..., columns]
        zeros = np.zeros((len(rows), tree.frames, 2), dtype=np.float32)
        behavior = tree.behavior[rows] if has_behavior else zeros
        pupil = tree.pupil_center[rows] if has_behavior else zeros
        if normalize:
            videos = (videos - stats["videos_mean"]) / stats["videos_std"]
            responses = responses / stats["responses_std"][columns]
            if has_behavior:
                behavior = behavior / stats["behavior_std"]
                pupil = (pupil - stats["pupil_center_mean"]) / stats["pupil_center_std"]
        arrays = {
            "videos": videos.astype(np.float32),
            "responses": responses.astype(np.float32),
            "behavior": behavior.astype(np.float32),
            "pupil_center": pupil.astype(np.float32),
            "video_id": tree.video_ids[rows],
            "trial_idx": tree.trial_idx[rows],
        }
        neurons = {k: v[columns] for k, v in tree.neurons.items()}
        out[tier] = VideoDataset(
            arrays,
            data_key=data_key,
            tier=tier,
            neurons=neurons,
            has_behavior=has_behavior,
            statistics=stats,
            window_frames=clip_frames if tier == "train" else tree.frames,
        )
    if "train" in tiers and "train" not in out:
        raise FileTreeError(f"{where}: no trials in the train tier (expected some)")
    return out


@identity.register(
    "dataset", name="video_filetree", validate=identity.bounds(minimum={"batch_size": 1, "clip_frames": 1})
)
def video_filetree_loaders(
    seed: int,
    *,
    paths: list[str] | None = None,
    data_keys: list[str] | None = None,
    tiers: list[str] = ("train", "validation", "test"),  # type: ignore[assignment]
    normalize: bool = True,
    neuron_ids: list[int] | None = None,
    clip_frames: int = 30,
    batch_size: int = 8,
    shuffle: bool = True,
) -> dict[str, dict[str, DataLoader]]:
    """Data loaders over one or more video FileTree folders (one data key each).

    Parameters
    ----------
    seed
        Seeds the train shuffling.
    paths, data_keys
        Video FileTree folders and their names (the ``Dataset`` table passes both).
    tiers, normalize, neuron_ids
        As ``filetree``; statistics come from the train tier.
    clip_frames
        Frames per training clip (each train trial gives ``T // clip_frames`` clips).
    batch_size
        Clips (or trials) per batch.
    shuffle
        Shuffle the train clips.
    """
    if not paths:
        raise FileTreeError("video_filetree dataset: no paths given (expected one or more video FileTree folders)")
    paths = [str(p) for p in paths]
    keys = list(data_keys) if data_keys is not None else [Path(p).name for p in paths]
    if len(keys) != len(paths) or len(set(keys)) != len(keys):
        raise FileTreeError(f"video_filetree dataset: data_keys {keys} (expected {len(paths)} distinct names)")
    datasets = {
        key: video_tier_datasets(
            read_video_filetree(path),
            data_key=key,
            tiers=list(tiers),
            clip_frames=clip_frames,
            normalize=normalize,
            neuron_ids=neuron_ids,
        )
        for key, path in zip(keys, paths)
    }
    return make_loaders(datasets, seed, batch_size=batch_size, shuffle=shuffle)  # type: ignore[arg-type]


video_filetree_loaders.takes_video = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------- #
# scores of video models beyond the Sensorium ones
# --------------------------------------------------------------------------------------- #


def split_neurons(n_neurons: int, seed: int = 0) -> np.ndarray:
    """(n_neurons,) bool: a random half of the neurons (True) that conditioned scores observe."""
    visible = np.zeros(n_neurons, dtype=bool)
    visible[np.random.default_rng(seed).permutation(n_neurons)[: n_neurons // 2]] = True
    return visible


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-3) -> np.ndarray:
    """Least-squares weights (with an intercept row last) of y on x, lightly ridge-regularized."""
    x1 = np.concatenate([x, np.ones((x.shape[0], 1))], 1)
    gram = x1.T @ x1 + alpha * x.shape[0] * np.eye(x1.shape[1])
    return np.linalg.solve(gram, x1.T @ y)


def _fit_correlation(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """Per column of y: correlation on the test samples of the linear prediction fitted on the train samples."""
    from pipeline.sysid.metrics import pearson

    w = _ridge(train_x, train_y)
    predicted = np.concatenate([test_x, np.ones((test_x.shape[0], 1))], 1) @ w
    return pearson(test_y, predicted)


@torch.no_grad()
def video_scores(
    model: torch.nn.Module,
    dataloaders: dict,
    data_key: str | None = None,
    *,
    samples: int = 32,
    seed: int = 0,
    true_latents: np.ndarray | None = None,
    latent_kinds: list[str] | None = None,
) -> dict[str, Any]:
    """Log-likelihoods, conditioned prediction and latent recovery of a latent video model on the test tier.

    A random half of the neurons (``split_neurons(n, seed)``) is observed, the other half
    scored. Log-likelihoods are per neuron and frame (nats, of the normalized responses), the
    latents integrated out by ``samples`` Monte-Carlo draws: from the prior (``log_likelihood``
    over every neuron, ``log_likelihood_unobserved`` over the scored half), or from the
    posterior given the observed half (``log_likelihood_conditioned``, the scored half).
    ``conditioned_correlation`` is the scored half's per-frame correlation of the prediction
    with the latents at that posterior mean (``unconditioned_correlation``: at z = 0).

    With ``true_latents`` ((all trials, T, K), indexed by ``trial_idx``), ``latent_recovery``
    gives, per true latent, the correlation on the test trials of the best linear read-out of
    the inferred latents (every neuron observed), fitted on the validation trials;
    ``behavior_correlation`` does the same for pupil dilation and running speed.
    """
    from pipeline.sysid.metrics import forward_batch, pearson

    if not hasattr(model, "log_likelihood"):
        raise TypeError(f"{type(model).__name__} has no likelihood (expected a LatentVideoModel, builder video_latent)")
    loaders = dataloaders.get("test") or {}
    key = data_key if data_key is not None else next(iter(loaders), None)
    if key not in loaders:
        raise ValueError(f"dataloaders have no test loader for data_key {key!r} (expected one of {list(loaders)})")
    model.eval()
    device = next(model.parameters()).device
    n = loaders[key].dataset.n_neurons
    visible = torch.from_numpy(split_neurons(n, seed))
    generator = torch.Generator().manual_seed(seed)
    ll_all, ll_unobserved, ll_conditioned = [], [], []
    responses, conditioned, unconditioned = [], [], []
    for batch in loaders[key]:
        ll_all.append(model.log_likelihood(batch, key, None, samples, generator).cpu())
        ll_conditioned.append(model.log_likelihood(batch, key, visible, samples, generator)[..., ~visible].cpu())
        ll_unobserved.append(ll_all[-1][..., ~visible])
        responses.append(batch["responses"][..., ~visible].reshape(-1, int((~visible).sum())))
        conditioned.append(
            model.predict_conditioned(batch, key, visible)[..., ~visible].cpu().reshape(responses[-1].shape)
        )
        unconditioned.append(forward_batch(model, batch, key, device)[..., ~visible].cpu())
    out: dict[str, Any] = {
        "log_likelihood": float(torch.cat([x.reshape(-1) for x in ll_all]).mean()),
        "log_likelihood_unobserved": float(torch.cat([x.reshape(-1) for x in ll_unobserved]).mean()),
        "log_likelihood_conditioned": float(torch.cat([x.reshape(-1) for x in ll_conditioned]).mean()),
        "n_observed": int(visible.sum()),
        "samples": int(samples),
    }
    y = torch.cat(responses).numpy()
    out["conditioned_correlation"] = float(pearson(y, torch.cat(conditioned).numpy()).mean())
    if model.latent_dim:
        flat = torch.cat([u.reshape(-1, y.shape[1]) for u in unconditioned]).numpy()
        out["unconditioned_correlation"] = float(pearson(y, flat).mean())
    else:
        out["unconditioned_correlation"] = out["conditioned_correlation"]
    if not model.latent_dim or true_latents is None:
        return out

    def inferred(tier: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, truth, behavior = [], [], []
        for batch in dataloaders[tier][key]:
            mu = model.infer_latents(batch, key).cpu().numpy()
            frames = batch["start"].numpy()[:, None] + np.arange(mu.shape[1])[None]
            z.append(mu.reshape(-1, mu.shape[-1]))
            truth.append(true_latents[batch["trial_idx"].numpy()[:, None], frames].reshape(-1, true_latents.shape[-1]))
            behavior.append(batch["behavior"].numpy().reshape(-1, batch["behavior"].shape[-1]))
        return np.concatenate(z), np.concatenate(truth), np.concatenate(behavior)

    fit_tier = "validation" if dataloaders.get("validation") else "train"
    z_fit, truth_fit, behavior_fit = inferred(fit_tier)
    z_test, truth_test, behavior_test = inferred("test")
    kinds = list(latent_kinds) if latent_kinds is not None else [f"latent_{i}" for i in range(truth_test.shape[1])]
    recovery = _fit_correlation(z_fit, truth_fit, z_test, truth_test)
    out["latent_recovery"] = [{"latent": i, "kind": str(kinds[i]), "r": float(r)} for i, r in enumerate(recovery)]
    if loaders[key].dataset.has_behavior:
        r = _fit_correlation(z_fit, behavior_fit, z_test, behavior_test)
        out["behavior_correlation"] = {name: float(v) for name, v in zip(BEHAVIOR_NAMES, r)}
    return out
