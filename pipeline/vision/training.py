"""Trainers of classifiers: plain, similarity-regularized, co-trained, and distillation (plain KD, HARD).

Every trainer is ``fn(model, dataloaders, seed, progress, *, ...config) -> TrainingResult``
(``pipeline.sysid.training``): ``score`` is the best validation accuracy, ``state_dict`` the
weights of that epoch. Neural targets come in the batches (``stimulus_split`` with
``targets``); ``shuffle_targets`` is the control that pairs every image with another image's
responses.

References
----------
Li et al. 2019, arXiv:1911.05072 (similarity regularization); Safarani et al. 2021,
arXiv:2107.14344 (co-training with neural responses); Nix, Burg & Sinz 2023,
arXiv:2305.14890 (HARD distillation).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import identity
from pipeline.device import choose_device
from pipeline.sysid.training import TrainingDiverged, TrainingResult, set_seed

from .augment import SpatialAugmentor
from .neural import shuffled_targets
from .similarity import similarity_matrix, similarity_penalty


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, batch_size: int = 512
) -> float:
    """Fraction of ``images`` (n, C, H, W) whose arg-max logit is the label (n,)."""
    predictions = predict_labels(model, images, batch_size)
    return float((predictions == np.asarray(labels)).mean())


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: torch.Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(n,) predicted classes of (n, C, H, W) images (the model is put in eval mode and back)."""
    device = next(model.parameters()).device
    images = torch.as_tensor(np.asarray(images, dtype=np.float32))
    was_training = model.training
    model.eval()
    out = [model(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy()


def random_affine(images: torch.Tensor, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """Each image warped by a random affine transform within ``magnitude`` of the identity (data augmentation)."""
    n = images.shape[0]
    noise = (torch.rand(n, 2, 3, generator=generator) * 2 - 1) * magnitude
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + noise
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def _target_table(dataloaders: dict, shuffle: bool, seed: int) -> torch.Tensor:
    """Neural targets by stimulus-set row (train tier only), permuted among images for the control."""
    arrays = dataloaders["train"].dataset.arrays
    if "targets" not in arrays:
        raise ValueError("this trainer needs neural targets in the batches (stimulus_split with targets), got none")
    targets = shuffled_targets(arrays["targets"], seed) if shuffle else arrays["targets"]
    table = np.zeros((int(arrays["index"].max()) + 1, targets.shape[1]), dtype=np.float32)
    table[arrays["index"]] = targets
    return torch.from_numpy(table)


def _fit(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_loss: Callable[[torch.nn.Module, dict, torch.device], tuple[torch.Tensor, dict]],
    parameters: list | None = None,
) -> TrainingResult:
    """Adam on ``batch_loss`` for ``epochs``; keeps the weights of the best validation accuracy."""
    for tier in ("train", "validation"):
        if tier not in dataloaders:
            raise ValueError(f"dataloaders has no {tier!r} loader (expected stimulus_split loaders)")
    if epochs < 1:
        raise ValueError(f"epochs = {epochs} (expected at least 1)")
    device = choose_device()
    model.to(device)
    validation = dataloaders["validation"].dataset.arrays
    optimizer = torch.optim.Adam(parameters or list(model.parameters()), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch = -1.0, None, 0
    history, started = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        totals: dict[str, float] = {}
        for batch in dataloaders["train"]:
            optimizer.zero_grad(set_to_none=True)
            loss, parts = batch_loss(model, batch, device)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged at epoch {epoch}: loss is {value} (lr {lr:g})")
            loss.backward()
            optimizer.step()
            for name, part in {"loss": value, **parts}.items():
                totals[name] = totals.get(name, 0.0) + float(part) / len(dataloaders["train"])
        score = accuracy(model, validation["images"], validation["labels"])
        history.append({"epoch": epoch, **totals, "validation_accuracy": score})
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    return TrainingResult(
        score=best,
        output={
            "history": history,
            "best_epoch": best_epoch,
            "seconds": time.perf_counter() - started,
            "device": str(device),
        },
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    )


@identity.register("vision_trainer", "plain_classifier")
def plain_classifier(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = False,
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    augment_magnitude: float = 0.0,
) -> TrainingResult:
    """Cross-entropy only; with ``augment_magnitude`` > 0, random affine data augmentation of that size.

    Returns
    -------
    TrainingResult: best validation accuracy, its weights, ``output["history"]`` per epoch.
    """
    set_seed(seed)
    generator = torch.Generator().manual_seed(int(seed))

    def batch_loss(model, batch, device):
        images = batch["images"]
        if augment_magnitude > 0:
            images = random_affine(images, augment_magnitude, generator)
        return F.cross_entropy(model(images.to(device)), batch["labels"].to(device)), {}

    return _fit(
        model, dataloaders, seed, progress, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_loss=batch_loss
    )


@identity.register("vision_trainer", "similarity_regularized")
def similarity_regularized(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = False,
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    similarity_weight: float = 1.0,
    shuffle_targets: bool = False,
) -> TrainingResult:
    """Cross-entropy + ``similarity_weight`` x the similarity penalty (Li et al. 2019).

    The penalty compares the similarity matrix of the batch's intermediate representation
    (``model.features``) with that of the neural targets of the same images.
    """
    set_seed(seed)
    table = _target_table(dataloaders, shuffle_targets, seed)

    def batch_loss(model, batch, device):
        logits, features = model.logits_and_features(batch["images"].to(device))
        target = similarity_matrix(table[batch["index"]].to(device))
        penalty = similarity_penalty(features, target)
        ce = F.cross_entropy(logits, batch["labels"].to(device))
        return ce + similarity_weight * penalty, {"similarity_penalty": float(penalty.detach())}

    return _fit(
        model, dataloaders, seed, progress, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_loss=batch_loss
    )


@identity.register("vision_trainer", "cotrained")
def cotrained(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = False,
    *,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    response_weight: float = 1.0,
    shuffle_targets: bool = False,
) -> TrainingResult:
    """Cross-entropy + ``response_weight`` x MSE of the response head on z-scored targets (Safarani et al. 2021).

    The model needs a response head (``digit_cnn(response_head=True)``) on an intermediate
    layer; targets are standardized per neuron with the train tier's mean and std.
    """
    set_seed(seed)
    table = _target_table(dataloaders, shuffle_targets, seed)
    train_targets = dataloaders["train"].dataset.arrays["targets"]
    mean = torch.from_numpy(train_targets.mean(0))
    std = torch.from_numpy(np.maximum(train_targets.std(0), 1e-6))

    def batch_loss(model, batch, device):
        logits, features = model.logits_and_features(batch["images"].to(device))
        target = ((table[batch["index"]] - mean) / std).to(device)
        mse = F.mse_loss(model.responses(features), target)
        ce = F.cross_entropy(logits, batch["labels"].to(device))
        return ce + response_weight * mse, {"response_mse": float(mse.detach())}

    return _fit(
        model, dataloaders, seed, progress, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_loss=batch_loss
    )


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened outputs, times temperature^2 (Hinton et al. 2015).

    Parameters
    ----------
    student_logits, teacher_logits : (B, classes)

    Returns
    -------
    scalar tensor >= 0, 0 when the logits are equal
    """
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, 1),
            F.log_softmax(teacher_logits / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def _distill(
    model,
    dataloaders,
    seed,
    progress,
    *,
    teacher,
    epochs,
    lr,
    weight_decay,
    temperature,
    magnitude: float | None,
    augmentor_lr: float,
    conditional: bool = False,
) -> TrainingResult:
    """Distil ``teacher`` into ``model`` on the train images (no labels); HARD when ``magnitude`` is given."""
    if teacher is None:
        raise ValueError("distillation needs a teacher (a trained classifier), got None")
    set_seed(seed)
    device = choose_device()
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    augmentor = None
    if magnitude is not None:
        channels = int(dataloaders["train"].dataset.arrays["images"].shape[1])
        augmentor = SpatialAugmentor(magnitude, conditional=conditional, channels=channels).to(device)
        augmentor_optimizer = torch.optim.Adam(augmentor.parameters(), lr=augmentor_lr)
    queries = {"teacher": 0}

    def batch_loss(model, batch, device):
        images = batch["images"].to(device)
        with torch.no_grad():
            teacher_logits = teacher(images)
        queries["teacher"] += len(images)
        loss = distillation_loss(model(images), teacher_logits, temperature)
        parts = {"clean_kd": float(loss.detach())}
        if augmentor is not None:
            # the augmentor ascends the teacher-student disagreement on its transformed images ...
            hard = augmentor(images)
            hard_teacher = teacher(hard)
            queries["teacher"] += len(images)
            disagreement = distillation_loss(model(hard), hard_teacher, temperature)
            augmentor_optimizer.zero_grad(set_to_none=True)
            (-disagreement).backward(inputs=list(augmentor.parameters()))
            augmentor_optimizer.step()
            # ... and the student descends it on the same images, with the teacher's answers
            hard_loss = distillation_loss(model(hard.detach()), hard_teacher.detach(), temperature)
            loss = loss + hard_loss
            parts["hard_kd"] = float(hard_loss.detach())
        return loss, parts

    result = _fit(
        model,
        dataloaders,
        seed,
        progress,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_loss=batch_loss,
        parameters=list(model.parameters()),
    )
    result.output["teacher_queries"] = queries["teacher"]
    if augmentor is not None:
        result.output["augmentor"] = augmentor_summary(augmentor, dataloaders["train"].dataset.arrays["images"])
    return result


@torch.no_grad()
def augmentor_summary(augmentor: SpatialAugmentor, images: torch.Tensor, n: int = 512) -> dict:
    """Mean and spread of the augmentor's transforms of (up to ``n`` of) ``images`` (n, C, H, W): a
    spread far below ``magnitude`` means it has collapsed onto one transform.

    Returns
    -------
    dict with ``mean_deviation`` and ``std_deviation`` (2x3 lists: per affine entry, of theta - identity)
    and ``magnitude``
    """
    images = torch.as_tensor(np.asarray(images[:n], dtype=np.float32)).to(augmentor.identity.device)
    theta = augmentor.transforms(len(images), torch.Generator().manual_seed(0), images)
    deviation = (theta - augmentor.identity).cpu()
    return {
        "mean_deviation": deviation.mean(0).tolist(),
        "std_deviation": deviation.std(0).tolist(),
        "magnitude": augmentor.magnitude,
    }


@identity.register("vision_trainer", "knowledge_distillation")
def knowledge_distillation(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = False,
    *,
    teacher: torch.nn.Module | None = None,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    temperature: float = 4.0,
) -> TrainingResult:
    """Plain knowledge distillation of ``teacher`` into ``model`` on the clean train images.

    ``teacher`` is filled by ``DistilledClassifier`` (a stored config leaves it None).
    ``output["teacher_queries"]`` counts the images the teacher was asked about.
    """
    return _distill(
        model,
        dataloaders,
        seed,
        progress,
        teacher=teacher,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        temperature=temperature,
        magnitude=None,
        augmentor_lr=0.0,
    )


@identity.register("vision_trainer", "hard_distillation")
def hard_distillation(
    model: torch.nn.Module,
    dataloaders: dict,
    seed: int,
    progress: bool = False,
    *,
    teacher: torch.nn.Module | None = None,
    epochs: int = 20,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    temperature: float = 4.0,
    magnitude: float = 0.3,
    augmentor_lr: float = 3e-3,
    conditional: bool = False,
) -> TrainingResult:
    """HARD: distillation on clean images plus images warped by an adversarial spatial augmentor.

    Each batch, the ``SpatialAugmentor`` (affine entries within ``magnitude`` of the identity)
    takes a gradient step up the teacher-student KL on its warped images, and the student a
    step down it on the same images (and on the clean ones). Costs two teacher queries per
    image per epoch (plain KD: one). With ``conditional`` the augmentor sees each image.
    ``output["augmentor"]`` (``augmentor_summary``) tells whether it collapsed onto one transform.
    """
    return _distill(
        model,
        dataloaders,
        seed,
        progress,
        teacher=teacher,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        temperature=temperature,
        magnitude=magnitude,
        augmentor_lr=augmentor_lr,
        conditional=conditional,
    )
