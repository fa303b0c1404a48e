"""Divisive normalization: the layer, the cores' norm option, the builder, the simulated pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.simulation.neurons import Neurons, make_neurons, neuron_rates, pool_energy
from pipeline.simulation.stimuli import natural_images
from pipeline.sysid.models import DivisiveNormalization, StackedCNNCore, divisive_normalization, make_norm
from models_helpers import synthetic_loaders

torch.set_num_threads(1)


def test_divisive_normalization_keeps_the_shape():
    layer = DivisiveNormalization(6, pool_kernel=3)
    assert layer(torch.randn(2, 6, 9, 11)).shape == (2, 6, 9, 11)
    assert layer.pool_weights().shape == (6, 6, 3, 3) and float(layer.pool_weights().detach().min()) > 0.0


def test_divisive_normalization_is_contrast_invariant_when_sigma_is_small():
    torch.manual_seed(0)
    layer = DivisiveNormalization(4, pool_kernel=3, sigma=1e-6)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(layer(7.0 * x), layer(x), atol=1e-4)
    # and the sign of the input is kept: it divides by a positive pool
    assert torch.equal(torch.sign(layer(x)), torch.sign(x))


def test_divisive_normalization_is_linear_when_sigma_is_large():
    torch.manual_seed(0)
    layer = DivisiveNormalization(4, pool_kernel=3, sigma=1e4)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(layer(3.0 * x), 3.0 * layer(x), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize(
    "kind, cls", [("batch", torch.nn.BatchNorm2d), ("layer", torch.nn.GroupNorm), ("divisive", DivisiveNormalization)]
)
def test_make_norm_builds_each_kind(kind, cls):
    assert isinstance(make_norm(kind, 8), cls)


def test_make_norm_names_an_unknown_kind():
    with pytest.raises(ValueError, match=r"norm = 'group' \(expected one of \['batch', 'layer', 'divisive'\]\)"):
        make_norm("group", 8)


def test_layer_norm_core_output_is_independent_of_the_batch():
    torch.manual_seed(0)
    core = StackedCNNCore(1, 4, layers=2, input_kernel=5, hidden_kernel=3, norm="layer").train()
    images = torch.randn(3, 1, 12, 12)
    assert torch.allclose(core(images)[:1], core(images[:1]), atol=1e-6)


def test_batch_norm_core_keeps_its_state_dict_names():
    core = StackedCNNCore(1, 4, layers=2, input_kernel=5, hidden_kernel=3)
    assert sorted(k for k in core.state_dict() if k.startswith("norms.0")) == [
        "norms.0.bias",
        "norms.0.num_batches_tracked",
        "norms.0.running_mean",
        "norms.0.running_var",
        "norms.0.weight",
    ]


def test_divisive_normalization_model_doubles_the_maps_and_the_control_does_not():
    loaders = synthetic_loaders(n_neurons=(5,), height=12, width=12)
    with_dn = divisive_normalization(loaders, 0, hidden_channels=4, input_kernel=5)
    without = divisive_normalization(loaders, 0, hidden_channels=4, input_kernel=5, normalize=False)
    assert with_dn.core.outchannels == 8 and without.core.outchannels == 4
    images = next(iter(loaders["test"]["d0"]))["images"]
    assert with_dn(images).shape == without(images).shape == (16, 5)
    assert float(with_dn(images).min()) >= 0.0


def test_unpooled_control_has_the_maps_of_the_dn_model_without_its_pool():
    loaders = synthetic_loaders(n_neurons=(5,), height=12, width=12)
    with_dn = divisive_normalization(loaders, 0, hidden_channels=4, input_kernel=5, pool_kernel=3)
    control = divisive_normalization(loaders, 0, hidden_channels=4, input_kernel=5, pool_kernel=3, pool=False)
    assert control.core.outchannels == with_dn.core.outchannels == 8

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(with_dn) - count(control) == 4 * 4 * 3 * 3  # the pool's weights, nothing else
    # without a pool the layer is affine per channel: doubling the input doubles the output minus the bias
    layer = control.core.divisive
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        layer.bias.fill_(0.3)
        assert torch.allclose(layer(2 * x) - 0.3, 2 * (layer(x) - 0.3), atol=1e-5)


def test_population_without_pools_is_the_one_made_before_pools_existed():
    plain = make_neurons(10, 12, 16, seed=4)
    assert "norm_strength" not in plain.to_dict()
    pooled = make_neurons(10, 12, 16, seed=4, normalized_fraction=0.5)
    images = natural_images(20, 12, 16, seed=1)
    keep = ~pooled.normalized
    assert 0 < pooled.normalized.sum() < 10
    np.testing.assert_array_equal(neuron_rates(plain, images)[:, keep], neuron_rates(pooled, images)[:, keep])
    assert Neurons.from_dict(plain.to_dict()).norm_strength.tolist() == [0.0] * 10


def test_pooled_neurons_are_suppressed_by_high_contrast():
    neurons = make_neurons(10, 12, 16, seed=4, normalized_fraction=1.0)
    images = natural_images(200, 12, 16, seed=1)
    flat = images - images.mean(axis=(1, 2), keepdims=True)
    low, high = 128.0 + 0.2 * flat, 128.0 + 1.0 * flat
    # a linear unit's drive would grow 5 times; a normalized one grows much less
    contrast = lambda x: (np.asarray(x, np.float64) - 128.0) / 64.0  # noqa: E731
    energy_ratio = pool_energy(neurons, contrast(high)).mean() / pool_energy(neurons, contrast(low)).mean()
    assert energy_ratio == pytest.approx(5.0, rel=1e-6)
    from pipeline.simulation.neurons import _drive

    z_low = _drive(neurons, contrast(low)) / neurons.scale
    p_low = pool_energy(neurons, contrast(low)) / neurons.norm_scale
    p_high = pool_energy(neurons, contrast(high)) / neurons.norm_scale
    gain_low = 1.0 / (1.0 + neurons.norm_strength * p_low**2)
    gain_high = 1.0 / (1.0 + neurons.norm_strength * p_high**2)
    assert np.median(gain_high / gain_low) < 0.5 and z_low.shape == (200, 10)


def test_divisive_normalization_with_exponent_one_divides_by_sigma_squared_plus_energy():
    torch.manual_seed(0)
    layer = DivisiveNormalization(3, pool_kernel=1, sigma=0.5)
    with torch.no_grad():
        layer.exponent_logit.fill_(30.0)  # q = sigmoid(30) = 1 in float32
        layer.pool_logits.fill_(float(np.log(np.expm1(2.0))))  # every weight 2
    x = torch.randn(2, 3, 4, 4)
    expected = x / (0.25 + 2.0 * x.pow(2).sum(1, keepdim=True))
    assert float(layer.exponent()[0]) == 1.0
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_divisive_normalization_core_normalizes_the_linear_responses_of_its_last_layer():
    from pipeline.sysid.models import DivisiveNormalizationCore

    torch.manual_seed(0)
    core = DivisiveNormalizationCore(1, 4, 2, 5, 3, True, pool_kernel=3).eval()
    images = torch.randn(3, 1, 10, 10)
    x = torch.nn.functional.elu(core.norms[0](core.convs[0](images)))
    linear = core.norms[1](core.convs[1](x))  # signed: the energy pool sees both signs
    out = core(images)
    assert out.shape == (3, 8, 10, 10) and float(linear.min()) < -0.5
    assert torch.allclose(out[:, :4], torch.nn.functional.elu(linear), atol=1e-6)
    assert torch.allclose(out[:, 4:], torch.nn.functional.elu(core.divisive(linear)), atol=1e-6)
