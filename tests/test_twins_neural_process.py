"""The K-shot neural process as plain functions: shapes, episodes, training, the K-shot curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models_helpers import synthetic_loaders
from pipeline.sysid import kshot
from pipeline.sysid.models import neural_process
from pipeline.sysid.models.neural_process import SetEncoder, add_sums, context_sums, predict, random_split
from pipeline.sysid.training import poisson_loss

torch.set_num_threads(1)

TINY = {"hidden_channels": 4, "layers": 1, "input_kernel": 5, "encoder_hidden": 8}


@pytest.fixture(scope="module")
def loaders():
    return synthetic_loaders(n_neurons=(8,), n_train=128, n_validation=32, height=12, width=12, batch_size=32, seed=3)


@pytest.fixture(scope="module")
def trained(loaders):
    model = neural_process(loaders, 0, **TINY)
    result = kshot.neural_process_trainer(model, loaders, 0, max_epochs=6, min_context=4, min_target=4)
    return model, result


def test_readout_inferred_from_k_pairs_has_one_location_and_weight_vector_per_neuron(loaders):
    model = neural_process(loaders, 0, **TINY).eval()
    batch = next(iter(loaders["train"]["d0"]))
    readout = model.infer(batch["images"][:10], batch["responses"][:10])
    assert readout["mask"].shape == (8, 12 * 12)  # a padded core keeps 12 x 12 positions
    assert torch.allclose(readout["mask"].sum(1), torch.ones(8))
    assert readout["weights"].shape == (8, 4) and readout["bias"].shape == (8,)
    rates = predict(model.core(batch["images"]), readout)
    assert rates.shape == (32, 8) and float(rates.min()) >= 0.0


def test_context_sums_of_two_halves_add_up_to_the_sums_of_the_whole():
    maps, responses = torch.randn(10, 3, 4, 5), torch.rand(10, 6)
    whole = context_sums(maps, responses)
    halves = add_sums(context_sums(maps[:4], responses[:4]), context_sums(maps[4:], responses[4:]))
    assert all(torch.allclose(whole[k], halves[k], atol=1e-5) for k in whole)
    assert float(whole["n"]) == 10.0 and whole["gr"].shape == (20, 3, 6)


def test_context_sums_name_mismatched_trials():
    with pytest.raises(ValueError, match=r"context maps \(10, 3, 4, 5\) and responses \(9, 6\)"):
        context_sums(torch.randn(10, 3, 4, 5), torch.rand(9, 6))


def test_episode_split_keeps_every_trial_once():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        context, target = random_split(32, generator, 4, 4)
        assert 4 <= len(context) <= 28 and sorted(torch.cat([context, target]).tolist()) == list(range(32))


def test_training_improves_the_validation_correlation(trained):
    _, result = trained
    history = [h["validation_correlation"] for h in result.output["history"]]
    assert result.score >= max(history) - 1e-4  # the best epoch's weights are kept
    assert result.score > 0.2 and result.output["best_epoch"] >= 1
    assert {"readout.d0.mask", "readout.d0.weights", "readout.d0.bias"} <= set(result.state_dict)


def test_more_context_trials_lower_the_loss_on_new_trials(trained, loaders):
    model, _ = trained
    model.eval()
    train = kshot.loader_arrays(loaders["train"]["d0"], np.arange(8))
    test = kshot.loader_arrays(loaders["validation"]["d0"], np.arange(8))
    losses = {}
    with torch.no_grad():
        maps = model.core(test["images"])
        for k in (4, 128):
            draws = []
            for seed in range(5):
                rows = torch.as_tensor(np.random.default_rng(seed).choice(128, k, replace=False))
                readout = model.infer(train["images"][rows], train["responses"][rows])
                draws.append(float(poisson_loss(predict(maps, readout), test["responses"])))
            losses[k] = np.mean(draws)
    assert losses[128] < 0.95 * losses[4]


def test_kshot_curve_scores_both_methods_at_every_k_clipped_to_the_data(trained, loaders):
    model, _ = trained
    context = kshot.loader_arrays(loaders["train"]["d0"], np.arange(8))
    test = kshot.loader_arrays(loaders["test"]["d0"], np.arange(8))
    points = kshot.kshot_curve(model, context, test, 0, ks=[10, 500, -1], readout_steps=150)
    assert [(p["k"], p["method"]) for p in points] == [
        (10, "neural_process"),
        (10, "fitted_readout"),
        (128, "neural_process"),
        (128, "fitted_readout"),
        (128, "neural_process"),
        (128, "fitted_readout"),
    ]
    assert all(p["seconds_per_neuron"] > 0 and p["unit_correlation_to_average"].shape == (8,) for p in points)
    # the core's pass over the K images is shared by both methods: timed once, apart
    assert all(p["core_seconds"] > 0 for p in points)
    assert points[0]["core_seconds"] == points[1]["core_seconds"]
    # with every trial the neural process predicts these neurons far above chance
    assert points[2]["correlation_to_average"] > 0.3
    assert all(-1.0 <= p["correlation_to_average"] <= 1.0 for p in points)


def test_feature_products_are_the_per_position_sums_of_feature_pairs():
    maps, responses = torch.randn(150, 3, 4, 5), torch.rand(150, 2)
    gg = context_sums(maps, responses)["gg"]
    assert gg.shape == (3, 3, 4, 5)
    assert torch.allclose(gg, torch.einsum("kchw,kdhw->cdhw", maps, maps), atol=1e-3)


def test_untrained_encoder_finds_a_glm_neurons_location_and_weight_direction_at_large_k():
    # a neuron whose rate is ELU(w . g(p0) + b) + 1 on correlated features; with many trials
    # the encoder's regression finds p0 and the direction of w before any training
    generator = torch.Generator().manual_seed(0)
    k, c, h, w = 4000, 6, 5, 7
    mixing = torch.eye(c) + 0.6 * torch.randn(c, c, generator=generator)
    maps = torch.einsum("dc,kdhw->kchw", mixing, torch.randn(k, c, h, w, generator=generator))
    true_w = torch.tensor([1.0, -0.5, 0.0, 0.3, 0.0, 0.2])
    drive = maps[:, :, 3, 2] @ true_w * 0.5
    responses = torch.poisson(torch.nn.functional.elu(drive) + 1.0, generator=generator)[:, None]
    encoder = SetEncoder(c).eval()
    with torch.no_grad():
        readout = encoder(context_sums(maps, responses))
    assert int(readout["mask"].argmax()) == 3 * w + 2 and float(readout["mask"].max()) > 0.8
    cosine = torch.nn.functional.cosine_similarity(readout["weights"][0], true_w, dim=0)
    # the spike-triggered average there, blurred by the features' correlations, is far off
    f = maps[:, :, 3, 2]
    sta = ((f - f.mean(0)) * (responses - responses.mean())).mean(0)
    assert float(cosine) > 0.9 > 0.6 > float(torch.nn.functional.cosine_similarity(sta, true_w, dim=0))


def test_the_encoders_learned_corrections_fade_as_k_outgrows_their_prior_trials():
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(4000, 3, 4, 4, generator=generator)
    responses = torch.poisson(torch.exp(0.5 * maps[:, 0, 1, 1]), generator=generator)[:, None]
    sums = context_sums(maps, responses)
    encoder = SetEncoder(3).eval()
    with torch.no_grad():
        plain = encoder(sums)["weights"]
        encoder.features[-1].bias.fill_(2.0)  # a gain of e^2 and large corrections at full weight
        encoder.log_prior_trials.fill_(0.0)  # worth one trial: 1/4001 of their weight here
        faded = encoder(sums)["weights"]
        encoder.log_prior_trials.fill_(30.0)  # worth far more trials than there are: full weight
        full = encoder(sums)["weights"]
    assert torch.allclose(faded, plain, rtol=2e-3, atol=2e-3)
    assert not torch.allclose(full, plain, rtol=0.5)


def test_kshot_curve_is_the_same_for_the_same_seed(trained, loaders):
    model, _ = trained
    context = kshot.loader_arrays(loaders["train"]["d0"], np.arange(8))
    test = kshot.loader_arrays(loaders["test"]["d0"], np.arange(8))
    first, second = (kshot.kshot_curve(model, context, test, 5, ks=[20], readout_steps=30) for _ in range(2))
    assert [p["correlation_to_average"] for p in first] == [p["correlation_to_average"] for p in second]
