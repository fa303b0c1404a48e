"""Specification of the trainer: it learns, it is deterministic on CPU, it fails loudly."""

import numpy as np
import pytest
import torch

from models_helpers import synthetic_loaders
from pipeline import identity
from pipeline.sysid import metrics, models, training

torch.set_num_threads(1)

TINY = {"hidden_channels": 4, "layers": 1, "input_kernel": 5, "gamma_readout": 1e-5}


def fit(loaders, seed=0, **config):
    model = models.cnn_factorized(loaders, seed, **identity.normalize(models.cnn_factorized, TINY))
    trainer_config = identity.normalize(training.standard_trainer, {"max_epochs": 6, "lr": 0.01, **config})
    return model, training.standard_trainer(model, loaders, seed, progress=False, **trainer_config)


def test_training_reduces_loss_and_improves_validation_correlation():
    loaders = synthetic_loaders(n_neurons=(6,), n_train=256, n_validation=64)
    model, result = fit(loaders)
    history = result.output["history"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert result.score > 0.2
    responses, predictions, image_ids = metrics.predict(model, loaders["test"]["d0"], "d0")
    assert metrics.correlation_to_average(responses, predictions, image_ids).mean() > 0.3
    assert result.output["device"] == "cpu"
    assert all(t.device.type == "cpu" for t in result.state_dict.values())


def test_training_is_deterministic_on_cpu():
    _, a = fit(synthetic_loaders(n_train=32, n_validation=16), max_epochs=2)
    _, b = fit(synthetic_loaders(n_train=32, n_validation=16), max_epochs=2)
    assert a.score == b.score
    for name, tensor in a.state_dict.items():
        torch.testing.assert_close(tensor, b.state_dict[name], rtol=0, atol=0)


def test_nan_loss_raises_training_diverged_naming_epoch_and_loss():
    loaders = synthetic_loaders(n_train=16, n_validation=8)
    loaders["train"]["d0"].dataset.arrays["responses"][3, 0] = float("nan")
    with pytest.raises(training.TrainingDiverged, match=r"epoch 1: loss is nan"):
        fit(loaders, max_epochs=3)


def test_early_stopping_restores_best_weights_and_stops_after_lr_decays():
    loaders = synthetic_loaders(n_train=32, n_validation=16)
    model, result = fit(loaders, max_epochs=50, lr=1e-9, patience=1, lr_decay_steps=2)
    # nothing improves at lr 1e-9: two epochs of patience, two decays, then stop
    assert result.output["epochs"] == 2
    assert result.output["best_epoch"] == 0
    assert result.score == pytest.approx(training.validation_correlation(model, loaders["validation"]), abs=1e-12)


def test_trainer_needs_validation_loaders():
    loaders = synthetic_loaders(n_train=16, n_validation=8)
    del loaders["validation"]
    with pytest.raises(ValueError, match="dataloaders has no 'validation' loaders"):
        fit(loaders)


def test_poisson_loss_is_minimal_at_the_responses():
    responses = torch.tensor([[0.0, 2.0, 5.0]])
    at_target = training.poisson_loss(responses.clamp(min=1e-6), responses)
    assert float(at_target) < float(training.poisson_loss(responses + 0.5, responses))
    assert float(training.poisson_loss(torch.ones(1, 1), torch.ones(1, 1))) == pytest.approx(1.0)


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match=r"seed = '1' \(expected an int\)"):
        training.set_seed("1")


def test_every_model_trains_on_a_simulated_filetree_population(tmp_path):
    from pipeline.simulation.population import simulate_population

    from test_models_architecture import SMALL

    folder = simulate_population(
        tmp_path / "population", n_neurons=8, n_train=40, n_test_images=4, repeats=3, seed=0, height=16, width=16
    )
    loaders = identity.resolve("dataset", "filetree")(0, paths=[str(folder)], data_keys=["sim"], batch_size=16)
    trainer = identity.resolve("trainer", "standard_trainer")
    for name, config in SMALL.items():
        model_fn = identity.resolve("model", name)
        model = model_fn(loaders, 0, **identity.normalize(model_fn, config))
        result = trainer(model, loaders, 0, progress=False, **identity.normalize(trainer, {"max_epochs": 2}))
        assert np.isfinite(result.score), name
        responses, predictions, image_ids = metrics.predict(model, loaders["test"]["sim"], "sim")
        assert predictions.shape == responses.shape == (12, 8), name
        assert sorted(set(image_ids.tolist())) == sorted(
            set(loaders["test"]["sim"].dataset.arrays["image_id"].tolist())
        )


def test_bfloat16_forward_learns_as_float32_and_keeps_float32_weights():
    loaders = synthetic_loaders(n_neurons=(6,), n_train=256, n_validation=64)
    _, full = fit(loaders)
    model, half = fit(synthetic_loaders(n_neurons=(6,), n_train=256, n_validation=64), precision="bfloat16")
    assert half.score > 0.2
    assert abs(half.score - full.score) < 0.05
    assert {t.dtype for t in half.state_dict.values() if t.is_floating_point()} == {torch.float32}
    assert half.score == pytest.approx(training.validation_correlation(model, loaders["validation"]), abs=1e-12)


def test_unknown_precision_is_refused_at_insert_time():
    with pytest.raises(identity.ConfigError, match=r"precision = 'half' \(expected one of \['bfloat16', 'float32'\]\)"):
        identity.normalize(training.standard_trainer, {"precision": "half"})
