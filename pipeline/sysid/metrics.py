"""Scores of predicted responses on a test tier shown in repeats (the Sensorium metrics)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "pearson",
    "single_trial_correlation",
    "correlation_to_average",
    "fev",
    "feve",
    "test_scores",
    "predict",
]


# frames per movie that the sample ids of video batches leave room for
FRAME_ID_STRIDE = 1_000_000


def _check(responses: np.ndarray, predictions: np.ndarray, image_ids: np.ndarray | None = None) -> None:
    if responses.ndim != 2 or responses.shape != predictions.shape:
        raise ValueError(
            f"responses {responses.shape} and predictions {predictions.shape} must both be (trials, neurons)"
        )
    if image_ids is not None and image_ids.shape != (responses.shape[0],):
        raise ValueError(f"image_ids has shape {image_ids.shape} (expected ({responses.shape[0]},), one per trial)")


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (ddof 0); a column without variance gives 0, not NaN.

    Parameters
    ----------
    x, y : (samples, neurons) arrays

    Returns
    -------
    (neurons,) float64
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).mean(axis=0) / (xc.std(axis=0) * yc.std(axis=0))
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def single_trial_correlation(responses: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Correlation of the prediction with every single test trial, per neuron.

    Parameters
    ----------
    responses, predictions : (trials, neurons)

    Returns
    -------
    (neurons,) Pearson r over all trials (ddof 0; NaN -> 0). Report its mean over neurons.
    """
    responses, predictions = np.asarray(responses), np.asarray(predictions)
    _check(responses, predictions)
    return pearson(responses, predictions)


def _repeat_groups(image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique image ids (sorted) and, per trial, the index of its image."""
    ids, inverse = np.unique(np.asarray(image_ids), return_inverse=True)
    return ids, inverse.reshape(-1)


def _image_means(values: np.ndarray, inverse: np.ndarray, n_images: int) -> np.ndarray:
    sums = np.zeros((n_images, values.shape[1]))
    np.add.at(sums, inverse, values)
    return sums / np.bincount(inverse, minlength=n_images)[:, None]


def correlation_to_average(responses: np.ndarray, predictions: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Correlation of predictions with responses averaged over repeats of the same image.

    Parameters
    ----------
    responses, predictions : (trials, neurons)
    image_ids : (trials,) which image each trial showed

    Returns
    -------
    (neurons,) Pearson r (ddof 0; NaN -> 0) over images of the repeat-averaged responses and
    predictions.
    """
    responses, predictions, image_ids = np.asarray(responses), np.asarray(predictions), np.asarray(image_ids)
    _check(responses, predictions, image_ids)
    ids, inverse = _repeat_groups(image_ids)
    return pearson(_image_means(responses, inverse, len(ids)), _image_means(predictions, inverse, len(ids)))


def _variances(responses: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total variance and noise variance (mean over images of the variance over repeats), ddof 1."""
    responses = np.asarray(responses, dtype=np.float64)
    ids, inverse = _repeat_groups(image_ids)
    counts = np.bincount(inverse, minlength=len(ids))
    if counts.min() < 2:
        bad = ids[counts < 2][:5].tolist()
        raise ValueError(f"image(s) {bad} shown only once: FEV needs every test image in at least 2 repeats")
    means = _image_means(responses, inverse, len(ids))
    squares = np.zeros_like(means)
    np.add.at(squares, inverse, (responses - means[inverse]) ** 2)
    noise = (squares / (counts - 1)[:, None]).mean(axis=0)
    total = responses.var(axis=0, ddof=1)
    return total, noise


def fev(responses: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance per neuron: (Var_total - s2_noise) / Var_total.

    ``Var_total`` is the variance over all trials and ``s2_noise`` the mean over images of the
    variance over repeats (both ddof 1). A neuron without variance gets 0.

    Returns
    -------
    (neurons,) float64
    """
    responses, image_ids = np.asarray(responses), np.asarray(image_ids)
    _check(responses, responses, image_ids)
    total, noise = _variances(responses, image_ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (total - noise) / total
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def feve(responses: np.ndarray, predictions: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance explained per neuron.

    FEVE = 1 - (MSE - s2_noise) / (Var_total - s2_noise), MSE over all trials. Report its mean
    over the neurons with ``fev >= 0.15`` (see ``test_scores``); a neuron without explainable
    variance gets 0 here (it is below that threshold anyway).

    Returns
    -------
    (neurons,) float64
    """
    responses, predictions, image_ids = np.asarray(responses), np.asarray(predictions), np.asarray(image_ids)
    _check(responses, predictions, image_ids)
    total, noise = _variances(responses, image_ids)
    mse = ((responses.astype(np.float64) - predictions) ** 2).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - (mse - noise) / (total - noise)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def test_scores(
    responses: np.ndarray, predictions: np.ndarray, image_ids: np.ndarray, fev_threshold: float = 0.15
) -> dict:
    """The three Sensorium scores of one test tier, summary and per neuron.

    Returns
    -------
    dict with ``single_trial_correlation``, ``correlation_to_average`` (means over neurons),
    ``feve`` (mean over neurons with FEV >= ``fev_threshold``; NaN if there are none),
    ``n_units_feve``, and per neuron (arrays (neurons,)): ``unit_single_trial_correlation``,
    ``unit_correlation_to_average``, ``unit_feve``, ``unit_fev``.
    """
    st = single_trial_correlation(responses, predictions)
    ca = correlation_to_average(responses, predictions, image_ids)
    unit_fev = fev(responses, image_ids)
    unit_feve = feve(responses, predictions, image_ids)
    keep = unit_fev >= fev_threshold
    return {
        "single_trial_correlation": float(st.mean()),
        "correlation_to_average": float(ca.mean()),
        "feve": float(unit_feve[keep].mean()) if keep.any() else float("nan"),
        "n_units_feve": int(keep.sum()),
        "unit_single_trial_correlation": st,
        "unit_correlation_to_average": ca,
        "unit_feve": unit_feve,
        "unit_fev": unit_fev,
    }


test_scores.__test__ = False  # not a pytest test despite its name


@torch.no_grad()
def predict(model: torch.nn.Module, loader, data_key: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Responses, predictions and image ids of every trial in ``loader``.

    The model is put in eval mode and stays on its own device; batches are moved to it one at
    a time. Behaviour and pupil position are passed when the batch has them.

    Video batches (``responses`` (B, T, N), see ``pipeline.sysid.video``) are flattened over
    time: every (trial, frame) is one sample and frames of repeats of one movie share an id
    (``video_id * FRAME_ID_STRIDE + frame``), so the scores below apply per frame unchanged.

    Returns
    -------
    responses, predictions : (samples, neurons) float32; samples are trials, or trial frames
    image_ids : (samples,) int64
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    responses, predictions, image_ids = [], [], []
    try:
        for batch in loader:
            prediction = forward_batch(model, batch, data_key, device).cpu().numpy()
            response = batch["responses"].numpy()
            if response.ndim == 3:  # video: (B, T, N) -> (B * T, N), one id per movie frame
                frames = batch["start"].numpy()[:, None] + np.arange(response.shape[1])[None, :]
                ids = batch["video_id"].numpy()[:, None] * FRAME_ID_STRIDE + frames
                response = response.reshape(-1, response.shape[-1])
                prediction = prediction.reshape(response.shape)
                ids = ids.reshape(-1)
            else:
                ids = batch["image_id"].numpy()
            predictions.append(prediction)
            responses.append(response)
            image_ids.append(ids)
    finally:
        model.train(was_training)
    if not responses:
        raise ValueError(f"loader for data_key {data_key!r} is empty (expected at least one batch)")
    return (
        np.concatenate(responses).astype(np.float32),
        np.concatenate(predictions).astype(np.float32),
        np.concatenate(image_ids).astype(np.int64),
    )


def forward_batch(model: torch.nn.Module, batch: dict, data_key: str | None, device: torch.device) -> torch.Tensor:
    """The model's (B, neurons) prediction for one dict batch ((B, T, neurons) for video), moved to ``device``."""
    extra = {
        name: batch[name].to(device, non_blocking=True)
        for name in ("behavior", "pupil_center")
        if batch.get(name) is not None
    }
    stimulus = batch["videos"] if "videos" in batch else batch["images"]
    return model(stimulus.to(device, non_blocking=True), data_key=data_key, **extra)
