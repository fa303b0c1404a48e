"""Training of models of visual cortex: Poisson loss, Adam, early stopping, the trainer builders."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline import identity
from pipeline.sysid import checkpoints, metrics


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


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


def default_device() -> torch.device:
    """CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def _progress(iterable, enabled: bool, total: int, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


@identity.register("trainer", "standard_trainer")
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
) -> TrainingResult:
    """Fit ``model`` with Adam on the Poisson loss, early-stopping on validation correlation.

    After ``patience`` epochs without an improvement of the validation correlation by more
    than ``tolerance``, the best weights are restored and the learning rate multiplied by
    ``lr_decay``; after ``lr_decay_steps`` such decays (or ``max_epochs``) training stops. The
    loss of a batch is the summed Poisson loss, times sqrt(n_train / batch size) when
    ``scale_loss`` (so that the regularizers weigh the same whatever the batch size), plus the
    model's ``regularizer(data_key)``.

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
        If a batch's loss is NaN or infinite, naming the epoch and the loss.
    """
    for name in ("train", "validation"):
        if not dataloaders.get(name):
            raise ValueError(f"dataloaders has no {name!r} loaders (expected {{{name!r}: {{data_key: DataLoader}}}})")
    if max_epochs < 1:
        raise ValueError(f"max_epochs = {max_epochs} (expected at least 1)")
    set_seed(seed)
    device = default_device()
    model.to(device)
    train = dataloaders["train"]
    n_batches = sum(len(loader) for loader in train.values())
    scales = {
        key: (math.sqrt(len(loader.dataset) / loader.batch_size) if scale_loss and loader.batch_size else 1.0)
        for key, loader in train.items()
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    best_score = validation_correlation(model, dataloaders["validation"])
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, Any]] = []
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
                best_score=best_score, best_state=checkpoints.cpu_state(best_state), best_epoch=best_epoch,
                history=history, waited=waited, decays=decays, train_seconds=train_seconds,
                train_images=train_images, resumed_from=resumed_from,
            )
            checkpoint.save(epoch - 1, checkpoints.trainer_state(model, optimizer, dataloaders, progress_state))
        model.train()
        started = time.perf_counter()
        total_loss, images = 0.0, 0
        for key, batch in _progress(_interleaved(train), progress, n_batches, f"epoch {epoch}"):
            optimizer.zero_grad(set_to_none=True)
            predictions = metrics.forward_batch(model, batch, key, device)
            loss = scales[key] * poisson_loss(predictions, batch["responses"].to(device, non_blocking=True))
            if regularize:
                loss = loss + model.regularizer(key)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}: loss is {value} (data_key {key!r}, lr {optimizer.param_groups[0]['lr']:g})"
                )
            loss.backward()
            optimizer.step()
            total_loss += value
            images += batch["images"].shape[0]
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
            "resumed_from": resumed_from,
        },
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    )
