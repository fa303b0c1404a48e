"""Training of models of visual cortex: Poisson loss, Adam, early stopping, the trainer builders."""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline import identity
from pipeline.device import choose_device
from pipeline.sysid import checkpoints, metrics


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite, or exploded far above where it started."""


class SmallValidationWarning(UserWarning):
    """A validation set too small for its correlation to say which epoch is best."""


# A batch loss this many times the first batch's (of its data_key) is an explosion, not noise:
# with lr=1e6 the loss goes from ~1e2 to ~1e20 in one step and stays finite, so a NaN check
# alone stores such a model (FEVE -1e43) as valid. Healthy training lowers the loss.
DIVERGENCE_FACTOR = 1e6

# Validation trials per data_key: with fewer than 2 the correlation is undefined; below 10 it
# is so noisy that early stopping picks epochs by chance (2 trials: r is always +-1).
MIN_VALIDATION_TRIALS = 2
FEW_VALIDATION_TRIALS = 10


@dataclass
class TrainingResult:
    """What a trainer returns.

    Attributes
    ----------
    score : best mean validation single-trial correlation (over data_keys and neurons).
    output : history and figures of the run (plain JSON types).
    state_dict : the best weights, on the CPU.
    """

    score: float
    output: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict)


def set_seed(seed: int) -> None:
    """The one place where seeds are set: Python, numpy and torch (CPU and every GPU)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed = {seed!r} (expected an int)")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))


def poisson_loss(predictions: torch.Tensor, responses: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Poisson negative log likelihood up to a constant, summed: sum(pred - resp * log(pred + eps))."""
    return (predictions - responses * torch.log(predictions + eps)).sum()


def validation_correlation(model: torch.nn.Module, loaders: dict) -> float:
    """Mean single-trial correlation over neurons of every data_key (weighted by neurons)."""
    total, count = 0.0, 0
    for key, loader in loaders.items():
        responses, predictions, _ = metrics.predict(model, loader, key)
        r = metrics.single_trial_correlation(responses, predictions)
        total += float(r.sum())
        count += r.size
    return total / max(count, 1)


def _interleaved(train: dict):
    """(data_key, batch) pairs cycling over data_keys until every loader is exhausted."""
    iterators = {key: iter(loader) for key, loader in train.items()}
    while iterators:
        for key in list(iterators):
            try:
                yield key, next(iterators[key])
            except StopIteration:
                del iterators[key]


def _check_validation_size(loaders: dict) -> list[str]:
    """Raise for a validation set that cannot be scored; warn (and return the warnings) for a tiny one."""
    notes = []
    for key, loader in loaders.items():
        n = len(loader.dataset)
        if n < MIN_VALIDATION_TRIALS:
            raise ValueError(
                f"validation set of data_key {key!r} has {n} trial(s) (expected at least {MIN_VALIDATION_TRIALS} "
                "to compute a correlation)"
            )
        if n < FEW_VALIDATION_TRIALS:
            note = (
                f"validation set of data_key {key!r} has only {n} trials (expected at least {FEW_VALIDATION_TRIALS}): "
                "its correlation is too noisy to choose the best epoch"
            )
            warnings.warn(note, SmallValidationWarning, stacklevel=3)
            notes.append(note)
    return notes


def _check_loss(value: float, reference: float, epoch: int, key: str, lr: float) -> None:
    """Raise TrainingDiverged for a NaN/infinite loss or one DIVERGENCE_FACTOR above ``reference``."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged at epoch {epoch}: loss is {value} (data_key {key!r}, lr {lr:g})")
    limit = DIVERGENCE_FACTOR * max(abs(reference), 1.0)
    if abs(value) > limit:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}: loss is {value:.3g}, above {limit:.3g} "
            f"({DIVERGENCE_FACTOR:g} x the first batch's {reference:.3g}; data_key {key!r}, lr {lr:g})"
        )


def _progress(iterable, enabled: bool, total: int, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


PRECISIONS = {"float32", "bfloat16"}
_TRAINER_BOUNDS = identity.bounds(
    minimum={"max_epochs": 1, "lr_decay_steps": 1, "patience": 1, "tolerance": 0.0},
    above={"lr": 0.0, "lr_decay": 0.0},
    maximum={"lr_decay": 1.0},
)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} (expected one of {sorted(PRECISIONS)})")


def _check_trainer(config: dict) -> None:
    """The trainer's validation hook: positive sizes and rates, a known precision."""
    _TRAINER_BOUNDS(config)
    _check_precision(config["precision"])


@identity.register("trainer", "standard_trainer", validate=_check_trainer)
def standard_trainer(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = True,
    checkpoint: checkpoints.EpochFiles | None = None,
    *,
    max_epochs: int = 100,
    lr: float = 5e-3,
    lr_decay: float = 0.3,
    lr_decay_steps: int = 3,
    patience: int = 5,
    tolerance: float = 1e-4,
    scale_loss: bool = True,
    regularize: bool = True,
    precision: str = "float32",
) -> TrainingResult:
    """Fit ``model`` with Adam on the Poisson loss, early-stopping on validation correlation.

    A model that defines ``training_loss(batch, data_key, device)`` (a summed scalar) is fitted
    on that instead: its own likelihood, as the latent video model's negative ELBO.

    After ``patience`` epochs without an improvement of the validation correlation by more
    than ``tolerance``, the best weights are restored and the learning rate multiplied by
    ``lr_decay``; after ``lr_decay_steps`` such decays (or ``max_epochs``) training stops. The
    loss of a batch is the summed Poisson loss, times sqrt(n_train / batch size) when
    ``scale_loss`` (so that the regularizers weigh the same whatever the batch size), plus the
    model's ``regularizer(data_key)``.

    ``precision="bfloat16"`` runs the training batches' forward pass under bfloat16 autocast
    (weights, optimizer state, loss and validation stay float32): on CPUs with AMX or
    AVX512-BF16 and on recent GPUs it is several times faster for convolutional cores, at an
    unchanged validation correlation (``benchmarks/sysid.py``); elsewhere it can be slower.

    Parameters
    ----------
    model : Encoder-like module (``forward(images, data_key, behavior, pupil_center)``).
    dataloaders : {"train": {key: loader}, "validation": {key: loader}, ...}; data stays on
        the CPU and is moved to the device one batch at a time.
    seed : seeds Python, numpy and torch (``set_seed``) before the first batch.
    progress : a tqdm bar per epoch (not part of the config: it changes no result).
    checkpoint : where to save the training state every ``checkpoint.every`` epochs and to
        resume from (``pipeline.sysid.checkpoints``); not part of the config: a resumed run
        ends with the same weights, score and history as one never stopped.

    Returns
    -------
    TrainingResult with the best validation correlation as ``score``, the CPU state dict of
    the best weights and ``output`` = {"history": [...per epoch...], "epochs", "best_epoch",
    "seconds_per_epoch", "images_per_second", "device", "resumed_from" (the epochs after which
    training was resumed from a checkpoint)}.

    Raises
    ------
    TrainingDiverged
        If a batch's loss is NaN or infinite, or more than ``DIVERGENCE_FACTOR`` times the
        first batch's loss of its data_key, naming the epoch and the loss.
    ValueError
        If a validation loader holds fewer than ``MIN_VALIDATION_TRIALS`` trials; below
        ``FEW_VALIDATION_TRIALS`` a ``SmallValidationWarning`` is issued and recorded in
        ``output["warnings"]``.
    """
    for name in ("train", "validation"):
        if not dataloaders.get(name):
            raise ValueError(f"dataloaders has no {name!r} loaders (expected {{{name!r}: {{data_key: DataLoader}}}})")
    if max_epochs < 1:
        raise ValueError(f"max_epochs = {max_epochs} (expected at least 1)")
    notes = _check_validation_size(dataloaders["validation"])
    _check_precision(precision)
    set_seed(seed)
    device = choose_device()
    model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    train = dataloaders["train"]
    n_batches = sum(len(loader) for loader in train.values())
    scales = {
        key: (math.sqrt(len(loader.dataset) / loader.batch_size) if scale_loss and loader.batch_size else 1.0)
        for key, loader in train.items()
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # a model with its own likelihood (e.g. the latent video model's ELBO) supplies its loss
    own_loss = getattr(model, "training_loss", None)

    best_score = validation_correlation(model, dataloaders["validation"])
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, Any]] = []
    first_loss: dict[str, float] = {}
    waited, decays, train_seconds, train_images = 0, 0, 0.0, 0
    epoch, first, resumed_from = 0, 1, []
    resumed = checkpoints.resume(checkpoint, model, optimizer, dataloaders)
    if resumed is not None:
        epoch, state = resumed
        first, resumed_from = epoch + 1, [*state["resumed_from"], epoch]
        best_score, best_state, best_epoch = state["best_score"], state["best_state"], state["best_epoch"]
        history, waited, decays = state["history"], state["waited"], state["decays"]
        train_seconds, train_images = state["train_seconds"], state["train_images"]
    for epoch in range(first, max_epochs + 1):
        if checkpoint is not None and epoch > first and checkpoint.due(epoch - 1):
            progress_state = dict(
                best_score=best_score,
                best_state=checkpoints.cpu_state(best_state),
                best_epoch=best_epoch,
                history=history,
                waited=waited,
                decays=decays,
                train_seconds=train_seconds,
                train_images=train_images,
                resumed_from=resumed_from,
            )
            checkpoint.save(epoch - 1, checkpoints.trainer_state(model, optimizer, dataloaders, progress_state))
        model.train()
        started = time.perf_counter()
        total_loss, images = 0.0, 0
        for key, batch in _progress(_interleaved(train), progress, n_batches, f"epoch {epoch}"):
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = own_loss(batch, key, device) if own_loss else metrics.forward_batch(model, batch, key, device)
            if own_loss:
                loss = scales[key] * out.float()
            else:
                loss = scales[key] * poisson_loss(out.float(), batch["responses"].to(device, non_blocking=True))
            if regularize:
                loss = loss + model.regularizer(key)
            value = float(loss.detach())
            _check_loss(value, first_loss.setdefault(key, value), epoch, key, optimizer.param_groups[0]["lr"])
            loss.backward()
            optimizer.step()
            total_loss += value
            images += batch["responses"].shape[0]
        seconds = time.perf_counter() - started
        train_seconds += seconds
        train_images += images
        score = validation_correlation(model, dataloaders["validation"])
        history.append(
            {
                "epoch": epoch,
                "loss": total_loss / max(n_batches, 1),
                "validation_correlation": score,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "finished_at": time.time(),
            }
        )
        if score > best_score + tolerance:
            best_score, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
            continue
        waited += 1
        if waited >= patience:
            model.load_state_dict(best_state)
            decays += 1
            waited = 0
            if decays >= lr_decay_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] *= lr_decay
    model.load_state_dict(best_state)
    return TrainingResult(
        score=float(best_score),
        output={
            "history": history,
            "epochs": epoch,
            "best_epoch": best_epoch,
            "seconds_per_epoch": train_seconds / max(epoch, 1),
            "images_per_second": train_images / train_seconds if train_seconds else float("nan"),
            "device": str(device),
            "warnings": notes,
            "resumed_from": resumed_from,
        },
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    )
