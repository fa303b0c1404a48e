"""Specification of the model modules: shapes, equivariance, regularizers, composition."""

import numpy as np
import pytest
import torch

from models_helpers import synthetic_loaders
from pipeline import identity
from pipeline.sysid import models

torch.set_num_threads(1)

SMALL = {
    "cnn_factorized": {"hidden_channels": 4, "layers": 2, "input_kernel": 5, "hidden_kernel": 3},
    "rotation_factorized": {"features": 2, "rotations": 8, "layers": 2, "input_kernel": 5, "hidden_kernel": 3},
    "cnn_gaussian": {
        "hidden_channels": 4,
        "layers": 2,
        "input_kernel": 5,
        "hidden_kernel": 3,
        "shifter": True,
        "modulator": True,
    },
    "linear_nonlinear": {"downsample": 2},
}


@pytest.fixture(scope="module")
def loaders():
    return synthetic_loaders(n_neurons=(5, 7), n_train=32, n_validation=16, batch_size=8)


def build(name, loaders, **config):
    fn = identity.resolve("model", name)
    return fn(loaders, 0, **identity.normalize(fn, {**SMALL[name], **config}))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_gives_non_negative_rates_per_data_key(name, loaders):
    model = build(name, loaders)
    batch = next(iter(loaders["train"]["d1"]))
    out = model(batch["images"], "d1", behavior=batch["behavior"], pupil_center=batch["pupil_center"])
    assert out.shape == (8, 7)
    assert bool((out >= 0).all())
    assert model(batch["images"], "d0", batch["behavior"], batch["pupil_center"]).shape == (8, 5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_regularizer_is_positive_and_finite(name, loaders):
    value = build(name, loaders).regularizer("d0").detach()
    assert value.ndim == 0
    assert 0 < float(value) < float("inf")


def test_models_share_one_core_and_have_one_readout_per_data_key(loaders):
    model = build("cnn_factorized", loaders)
    assert sorted(model.readout) == ["d0", "d1"]
    assert model.readout["d0"].mask.shape == (5, 12 * 12)  # 16 - 5 + 1 = 12: valid first layer
    assert model.readout["d1"].features.shape == (7, 4)


def test_model_without_data_key_needs_one_dataset(loaders):
    model = build("cnn_factorized", loaders)
    with pytest.raises(ValueError, match=r"data_key is needed: this model has readouts for \['d0', 'd1'\]"):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(KeyError, match="data_key 'd9' has no readout"):
        model(torch.zeros(2, 1, 16, 16), "d9")


def test_shifter_moves_gaussian_readout_and_is_required(loaders):
    model = build("cnn_gaussian", loaders, modulator=False).eval()
    images = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.nn.init.normal_(model.shifter["d0"].mlp[-2].weight)
        a = model(images, "d0", pupil_center=torch.zeros(2, 2))
        b = model(images, "d0", pupil_center=torch.full((2, 2), 2.0))
    assert float((a - b).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="has a shifter and needs pupil_center"):
        model(images, "d0")


def test_modulator_starts_as_gain_one():
    modulator = models.BehaviorModulator(n_neurons=4, behavior_dims=3)
    rates = torch.arange(8.0).reshape(2, 4)
    torch.testing.assert_close(modulator(rates, torch.randn(2, 3)), rates)
    with pytest.raises(ValueError, match=r"behavior has shape \(2, 2\) \(expected \(batch, 3\)\)"):
        modulator(rates, torch.randn(2, 2))


def test_gaussian_readout_reads_the_map_at_its_mean_position_in_eval():
    readout = models.GaussianReadout((1, 5, 5), n_neurons=1, init_sigma=0.5).eval()
    with torch.no_grad():
        readout.mu.copy_(torch.tensor([[0.5, -1.0]]))  # x = 3, y = 0 on a 5 x 5 map
        readout.features.fill_(1.0)
        readout.bias.zero_()
    maps = torch.arange(25.0).reshape(1, 1, 5, 5)
    with torch.no_grad():
        assert float(readout(maps)) == pytest.approx(3.0)
        readout.train()
        assert float(readout(maps.repeat(16, 1, 1, 1)).std()) > 0  # positions are sampled in training


def test_factorized_readout_is_mask_times_features():
    readout = models.FactorizedReadout((2, 2, 2), n_neurons=1)
    with torch.no_grad():
        readout.mask.copy_(torch.tensor([[1.0, 0.0, 0.0, 2.0]]))
        readout.features.copy_(torch.tensor([[3.0, -1.0]]))
        readout.bias.fill_(0.5)
    maps = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    # 3 * (0 + 2 * 3) - (4 + 2 * 7) + 0.5
    with torch.no_grad():
        assert float(readout(maps)) == pytest.approx(0.5)
        assert float(readout.regularizer()) == pytest.approx(1e-3 * 3 * 4)


def test_rotating_input_by_90_degrees_permutes_orientation_channels():
    torch.manual_seed(0)
    core = models.RotationEquivariantCore(
        1, features=3, rotations=8, layers=3, input_kernel=5, hidden_kernel=3, pad_input=True
    ).eval()
    images = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        out = core(images).reshape(2, 3, 8, 12, 12)
        rotated = core(torch.rot90(images, 1, dims=(2, 3))).reshape(2, 3, 8, 12, 12)
    # 90 degrees is 2 of 8 steps; rot90 turns from rows to columns, i.e. clockwise in our angles
    expected = torch.rot90(torch.roll(out, shifts=-2, dims=2), 1, dims=(3, 4))
    torch.testing.assert_close(rotated, expected, atol=1e-4, rtol=1e-4)
    assert float((rotated - torch.rot90(out, 1, dims=(3, 4))).abs().max()) > 0.1  # not invariant


def test_rotation_core_shares_filters_across_rotations():
    core = models.RotationEquivariantCore(1, features=2, rotations=8, layers=1, input_kernel=7)
    weight = core.filters(0).detach()  # (features * rotations, 1, 7, 7)
    torch.testing.assert_close(weight[2], torch.rot90(weight[0], -1, dims=(1, 2)), atol=1e-5, rtol=1e-5)
    # 28 ring harmonics on a 7-pixel kernel (rings 0..3 with 1, 5, 9, 13 functions) per feature
    assert sum(p.numel() for p in core.parameters() if p.requires_grad) == 2 * 28 + 2 * 2  # + batch norm


def test_steerable_basis_has_unit_norm_and_turns_exactly_by_90_degrees():
    basis = models.steerable_basis(9, rotations=8)
    assert basis.shape == (8, 45, 9, 9)  # rings 0..4 with 1, 5, 9, 13, 17 functions
    np.testing.assert_allclose((basis[0] ** 2).sum(axis=(1, 2)), np.ones(45), rtol=1e-5)
    np.testing.assert_array_equal(basis[2], np.rot90(basis[0], -1, axes=(1, 2)))
    assert models.ring_harmonics(5)[:4] == [(0, 0, "cos"), (1, 0, "cos"), (1, 1, "cos"), (1, 1, "sin")]


def test_steerable_basis_is_zero_outside_the_inscribed_disk():
    basis = models.steerable_basis(9, rotations=3)
    corners = basis[..., [0, 0, -1, -1], [0, -1, 0, -1]]
    assert float(np.abs(corners).max()) == 0.0
    assert float(np.abs(basis[..., 4, 0]).max()) > 0.05  # the middle of an edge is inside


def test_steerable_basis_copies_at_45_degrees_stay_in_its_span():
    # rotation by any angle maps the span of the functions onto itself
    basis = models.steerable_basis(9, rotations=8).reshape(8, 45, -1).astype(np.float64)
    q, _ = np.linalg.qr(basis[0].T)
    rotated = basis[1].T
    leaving = np.linalg.norm(rotated - q @ (q.T @ rotated)) / np.linalg.norm(rotated)
    assert leaving < 1e-5


def test_steerable_basis_rejects_even_kernels():
    with pytest.raises(ValueError, match=r"kernel_size = 4 \(expected an odd positive number of pixels\)"):
        models.steerable_basis(4)


def test_laplace_smoothness_is_zero_for_flat_interior_and_positive_for_noise():
    flat = torch.zeros(1, 1, 7, 7)
    flat[..., 2:5, 2:5] = 1.0
    noise = torch.randn(1, 1, 7, 7)
    assert float(models.laplace_smoothness(noise)) > float(models.laplace_smoothness(flat)) > 0


def test_model_config_normalizes_ints_to_floats():
    config = identity.normalize(models.cnn_factorized, {"gamma_input": 2})
    assert config["gamma_input"] == 2.0 and isinstance(config["gamma_input"], float)
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['channels'\]"):
        identity.normalize(models.cnn_factorized, {"channels": 8})


def test_data_keys_that_name_module_attributes_or_hold_dots_get_readouts():
    # data keys are folder names: "pop", "train" and "a.b" are refused by nn.ModuleDict
    keys = ["pop", "train", "a.b"]
    synthetic = synthetic_loaders(n_neurons=(3, 4, 5), n_train=16, n_validation=8, batch_size=8)
    renamed = {tier: dict(zip(keys, by_key.values())) for tier, by_key in synthetic.items()}
    model = build("cnn_factorized", renamed)
    assert list(model.readout) == keys
    assert model.readout["a.b"].features.shape == (5, 4)
    prefixes = {k.split(".")[1] for k in model.state_dict() if k.startswith("readout.")}
    assert prefixes == {"pop", "x_747261696e", "x_612e62"}  # hex of the UTF-8 bytes of "train", "a.b"
    again = build("cnn_factorized", renamed, hidden_channels=4)
    again.load_state_dict(model.state_dict())
    images = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(again.eval()(images, "train"), model.eval()(images, "train"))
    assert again(images, "pop").shape == (2, 3)
