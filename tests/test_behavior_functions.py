"""The behaviour stage's algorithms as plain functions: skeleton, camera, flow, diffusion, metrics."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.behavior import camera, data, estimators, metrics, skeleton
from pipeline.behavior.diffusion import MotionDenoiser
from pipeline.behavior.flow import ConditionalFlow
from pipeline.behavior.hypotheses import min_mpjpe_loss

torch.set_num_threads(1)  # the machine is shared: small tests on one thread


@pytest.fixture(scope="module")
def motion() -> skeleton.Motion:
    return skeleton.random_motion(skeleton.stick_figure(), 4, 60, seed=3)


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Random weights everywhere (the flow starts as the identity, which would test nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=generator))


# ------------------------------------------------------------------------------------ skeleton


def test_forward_kinematics_keeps_every_bone_length_in_every_frame(motion):
    figure = skeleton.stick_figure()
    lengths = skeleton.bone_lengths(figure, motion.joints)  # (4, 60, bones)
    expected = figure.lengths[[child for _, child in figure.bones]]
    assert lengths.shape == (4, 60, 10)
    assert np.abs(lengths - expected).max() < 1e-12


def test_joint_angles_stay_inside_their_limits(motion):
    figure = skeleton.stick_figure()
    assert np.all(motion.flexion >= figure.flexion[:, 0] - 1e-12)
    assert np.all(motion.flexion <= figure.flexion[:, 1] + 1e-12)
    assert np.all(motion.abduction >= figure.abduction[:, 0] - 1e-12)
    assert np.all(motion.abduction <= figure.abduction[:, 1] + 1e-12)


def test_motion_is_smooth_compared_with_its_speed(motion):
    velocity = np.linalg.norm(np.diff(motion.joints, axis=1), axis=-1).mean()
    acceleration = np.linalg.norm(np.diff(motion.joints, 2, axis=1), axis=-1).mean()
    # a 0.8 Hz sinusoid at 30 fps (the fastest component) has acceleration / speed = 2 pi 0.8 / 30 = 0.17
    assert acceleration < 0.25 * velocity


def test_zero_angles_stand_the_figure_upright_facing_the_camera():
    figure = skeleton.stick_figure()
    zeros = np.zeros(figure.n_joints)
    joints = skeleton.forward_kinematics(figure, zeros, zeros, np.array(0.0), np.array([0.0, 0.0, 5.0]))
    head, ankle = joints[figure.names.index("head")], joints[figure.names.index("l_ankle")]
    # image y points down: the head is above the pelvis by chest + head lengths, at the same depth
    assert head == pytest.approx([0.0, -0.75, 5.0])
    assert ankle[1] > 0.8 and ankle[2] == pytest.approx(5.0)


# ------------------------------------------------------------------------------------ camera


def test_projection_follows_the_pinhole_model():
    cam = camera.Camera(focal=1000.0, cx=640.0, cy=360.0)
    points = np.array([[0.0, 0.0, 5.0], [1.0, -0.5, 4.0]])
    assert camera.project(cam, points) == pytest.approx(np.array([[640.0, 360.0], [890.0, 235.0]]))


def test_projection_rejects_a_point_behind_the_camera():
    with pytest.raises(ValueError, match="1 joint\\(s\\) at z <= 0"):
        camera.project(camera.Camera(), np.array([[0.0, 0.0, -1.0]]))


def test_observation_occludes_the_requested_fraction_and_marks_it_by_confidence(motion):
    joints = skeleton.random_motion(skeleton.stick_figure(), 20, 200, seed=1).joints
    seen = camera.observe(camera.Camera(), joints, occlusion_rate=0.2, seed=0)
    fraction = seen.occluded[..., 1:].mean()
    assert 0.15 < fraction < 0.22
    assert not seen.occluded[..., 0].any()
    assert np.array_equal(seen.confidence < camera.OCCLUDED_BELOW, seen.occluded)


def test_normalized_keypoints_do_not_depend_on_distance():
    near = np.array([[100.0, 100.0], [150.0, 100.0], [100.0, 40.0]])
    far = 100.0 + (near - 100.0) / 3
    confidence = np.ones(3)
    assert camera.normalize(near, confidence) == pytest.approx(camera.normalize(far, confidence), abs=1e-6)
    assert camera.normalize(near, confidence)[0] == pytest.approx([0.0, 0.0])


def test_reprojection_residual_is_zero_for_a_scaled_orthographic_view():
    pose = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.4, 0.2], [-0.2, 0.5, -0.3]])
    keypoints = 2.5 * pose[:, :2]
    weight = torch.ones(3)
    assert float(camera.reprojection_residual(pose, keypoints, weight)) < 1e-10
    shifted = keypoints + torch.tensor([0.0, 0.1])
    assert float(camera.reprojection_residual(pose, shifted, weight)) > 1e-3


# ------------------------------------------------------------------------------------ flow


def test_flow_inverse_recovers_the_poses_to_1e4():
    flow = ConditionalFlow(30, 33, layers=6, hidden=32)
    _randomize(flow, std=0.05)  # weights of a trained flow's size; larger ones overflow float32
    x = torch.randn(64, 30)
    condition = torch.randn(64, 33)
    with torch.no_grad():
        z = flow.forward_map(x, condition)
        recovered = flow.inverse(z, condition)
    assert float((z - x).abs().max()) > 0.1  # the map is not the identity
    assert float((recovered - x).abs().max()) < 1e-4


def test_flow_density_integrates_to_one():
    flow = ConditionalFlow(2, 1, layers=4, hidden=16)
    _randomize(flow, seed=1)
    grid = torch.linspace(-12, 12, 601)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], -1)
    with torch.no_grad():
        density = flow.log_prob(points, torch.full((len(points), 1), 0.7)).exp()
    area = float(grid[1] - grid[0]) ** 2
    assert float(density.sum()) * area == pytest.approx(1.0, abs=1e-2)


def test_a_dropped_condition_is_the_marginal():
    flow = ConditionalFlow(4, 3, layers=4, hidden=16)
    _randomize(flow, seed=2)
    x, condition = torch.randn(8, 4), torch.randn(8, 3)
    with torch.no_grad():
        marginal = flow.log_prob(x)
        dropped = flow.log_prob(x, condition, drop=torch.ones(8, dtype=torch.bool))
        conditional = flow.log_prob(x, condition)
    assert torch.allclose(marginal, dropped, atol=1e-6)
    assert float((marginal - conditional).abs().max()) > 1e-2


def test_conditioner_depth_sets_the_hidden_layers_of_every_coupling():
    flow = ConditionalFlow(4, 3, layers=2, hidden=8, depth=3)
    linears = [[m for m in c.net if isinstance(m, torch.nn.Linear)] for c in flow.couplings]
    assert [len(layers) for layers in linears] == [4, 4]
    assert [layer.in_features for layer in linears[0]] == [4 + 3 + 1, 8, 8, 8]
    assert linears[0][-1].out_features == 8


def test_weight_decay_shrinks_weights_that_the_loss_does_not_use():
    # one Adam step on a zero loss: the decay's gradient 0.01 * w is all there is, and Adam's
    # normalized step moves w by the full learning rate, 1.0 to 0.9
    for decay, expected in [(0.0, 1.0), (0.01, 0.9)]:
        module = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            module.weight.fill_(1.0)
        estimators._optimize(module, lambda g: 0.0 * module.weight.sum(), steps=1, lr=0.1, seed=0, weight_decay=decay)
        assert module.weight.item() == pytest.approx(expected, abs=1e-6)


def test_occlusion_augmentation_hides_joints_as_the_camera_would():
    confidence = np.full((2000, 11), 0.9, dtype=np.float32)
    hidden = estimators.occlude(confidence, 0.2, torch.Generator().manual_seed(0))
    occluded = hidden < camera.OCCLUDED_BELOW
    assert not occluded[:, 0].any()  # the root stays: every pose is relative to it
    assert 0.19 < occluded[:, 1:].mean() < 0.21
    assert hidden[occluded].max() <= 0.3 and np.all(hidden[~occluded] == np.float32(0.9))
    # the condition zeroes the hidden keypoints
    keypoints = np.random.default_rng(0).normal(size=(2000, 11, 2)) * 50 + 300
    inputs = data.condition(keypoints, hidden)[:, :22].reshape(2000, 11, 2)
    assert np.all(inputs[occluded] == 0) and np.all(inputs[:, 1:][~occluded[:, 1:]] != 0)
    # a frame keeps one visible non-root joint however high the rate
    dense = estimators.occlude(confidence, 0.9, torch.Generator().manual_seed(1))
    assert np.all((dense[:, 1:] >= camera.OCCLUDED_BELOW).any(-1))


def test_flow_fits_a_conditional_gaussian_with_calibrated_samples():
    # x = 2c + noise of std 0.5: the fitted flow's samples must cover like the true distribution
    torch.manual_seed(0)
    flow = ConditionalFlow(2, 1, layers=2, hidden=16)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(300):
        c = torch.randn(128, 1)
        x = 2 * c + 0.5 * torch.randn(128, 2)
        loss = -flow.log_prob(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    c = torch.randn(500, 1)
    truth = (2 * c + 0.5 * torch.randn(500, 2)).numpy()
    samples = flow.sample(100, c, torch.Generator().manual_seed(0)).numpy()
    # two coordinates of one "joint" and a third at 0: calibration on (500, 1, 3); after 150 steps
    # the samples are still 12% too wide, which the calibration error shows (0.05)
    pad = lambda a: np.concatenate([a, np.zeros_like(a[..., :1])], -1)[..., None, :]  # noqa: E731
    assert metrics.expected_calibration_error(pad(samples), pad(truth)) < 0.05


# ------------------------------------------------------------------------------------ baseline and diffusion


def test_min_mpjpe_loss_takes_the_best_hypothesis():
    truth = torch.zeros(2, 3, 3)
    hypotheses = torch.stack([truth + torch.tensor([1.0, 0, 0]), truth + torch.tensor([0.0, 0.2, 0])])
    assert float(min_mpjpe_loss(hypotheses, truth)) == pytest.approx(0.2)


def test_an_untrained_denoiser_predicts_zero_noise_and_its_loss_is_one():
    model = MotionDenoiser(6, channels=16, blocks=1, steps=10)
    loss = model.loss(torch.randn(512, 4, 6), torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(1.0, abs=0.02)


def test_reprojection_guidance_pulls_samples_onto_the_keypoints():
    torch.manual_seed(0)
    model = MotionDenoiser(6, channels=16, blocks=1, steps=50)  # untrained: a standard-normal prior
    target = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    def energy(x0):
        joints = x0.reshape(*x0.shape[:2], 2, 3)
        pose = torch.cat([torch.zeros_like(joints[..., :1, :]), joints], -2)
        weight = torch.ones(*x0.shape[:2], 3)
        return camera.reprojection_residual(pose, target.expand(*x0.shape[:2], 3, 2), weight).sum(-1)

    free = model.sample(64, 2, generator=torch.Generator().manual_seed(1))
    guided = model.sample(64, 2, guidance=energy, guidance_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert float(energy(guided).mean()) < 0.2 * float(energy(free).mean())


def test_windows_cover_a_recording_ending_with_an_overlapping_one():
    assert estimators.window_starts(40, 16) == [0, 16, 24]
    assert estimators.window_starts(32, 16) == [0, 16]
    with pytest.raises(ValueError, match="recording has 8 frames"):
        estimators.window_starts(8, 16)


def test_a_config_key_the_builder_does_not_take_is_rejected():
    with pytest.raises(identity.ConfigError, match="does not take config key\\(s\\) \\['layer'\\]"):
        identity.normalize(estimators.cgnf, {"layer": 3})
    assert identity.registered("pose_model") == ["cgnf", "min_mpjpe", "motion_diffusion"]


def test_every_model_samples_hypotheses_of_the_recording_shape():
    recording = data.simulate(1, 20, seed=5)
    for builder, config in [
        ("cgnf", {"layers": 2, "hidden": 8}),
        ("min_mpjpe", {"hidden": 8, "depth": 1}),
        ("motion_diffusion", {"frames": 8, "channels": 8, "blocks": 1, "diffusion_steps": 5}),
    ]:
        model = estimators.build(builder, {**config, "hypotheses": 3}, recording.n_joints)
        out = model.sample(recording.keypoints[0], recording.confidence[0])
        assert out.shape == (3, 20, 11, 3), builder
        assert np.all(out[:, :, 0] == 0), builder


# ------------------------------------------------------------------------------------ metrics


def test_calibrated_gaussian_has_an_expected_calibration_error_near_zero():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(3000, 5, 3))
    samples = rng.normal(size=(20, 3000, 5, 3))
    assert metrics.expected_calibration_error(samples, truth) < 0.01


def test_calibration_error_of_a_calibrated_distribution_is_unbiased_with_few_hypotheses():
    # the median of hypotheses and truth together keeps all distances exchangeable: no bias at
    # 5 hypotheses, where the median of the hypotheses alone with np.quantile scores 0.15
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(4000, 5, 3))
    assert metrics.expected_calibration_error(rng.normal(size=(5, 4000, 5, 3)), truth) < 0.01
    assert metrics.expected_calibration_error(rng.normal(size=(200, 4000, 5, 3)), truth) < 0.01


def test_calibration_error_punishes_too_wide_as_much_as_too_narrow():
    rng = np.random.default_rng(5)
    truth = rng.normal(size=(4000, 5, 3))
    samples = rng.normal(size=(20, 4000, 5, 3))
    narrow = metrics.expected_calibration_error(samples / 1.25, truth)
    wide = metrics.expected_calibration_error(samples * 1.25, truth)
    assert 0.1 < narrow < 0.16 and 0.1 < wide < 0.16
    curve = np.nanmean(metrics.calibration_curve(samples * 1.25, truth, levels=[0.5]), 0)
    assert curve[0] > 0.6  # too wide: the truth sits inside half the hypotheses more often than half the time


def test_too_narrow_and_too_wide_distributions_have_large_calibration_errors():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(3000, 5, 3))
    samples = rng.normal(size=(20, 3000, 5, 3))
    narrow = metrics.expected_calibration_error(0.3 * samples, truth)
    wide = metrics.expected_calibration_error(3.0 * samples, truth)
    assert narrow > 0.2 and wide > 0.2


def test_calibration_on_a_mask_scores_only_the_masked_joints():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(2000, 2, 3))
    samples = rng.normal(size=(20, 2000, 2, 3))
    samples[:, :, 1] *= 0.1  # joint 1 far too narrow
    mask = np.zeros((2000, 2), dtype=bool)
    mask[:, 0] = True
    assert metrics.expected_calibration_error(samples, truth, mask) < 0.01
    assert np.isnan(metrics.expected_calibration_error(samples, truth, np.zeros((2000, 2), dtype=bool)))


def test_jitter_of_a_smooth_sequence_is_far_below_that_of_a_noisy_one():
    t = np.linspace(0, 2 * np.pi, 100)[:, None, None]
    smooth = np.sin(t) * np.ones((100, 4, 3))
    noisy = smooth + np.random.default_rng(0).normal(scale=0.01, size=smooth.shape)
    # second difference of white noise: per coordinate std sqrt(6) sigma; 3D norm mean ~ 3.91 sigma
    # one period in 100 frames: (2 pi / 99)^2 |sin| sqrt(3), about 0.0045 on average
    assert metrics.jitter(smooth) < 0.005
    assert metrics.jitter(noisy) == pytest.approx(0.0391, rel=0.05)


def test_mpjpe_scores_of_known_hypotheses():
    truth = np.zeros((2, 3, 3))
    hypotheses = np.stack([truth + [0.3, 0, 0], truth - [0.1, 0, 0]])
    assert metrics.mean_mpjpe(hypotheses, truth) == pytest.approx(0.1)
    assert metrics.min_mpjpe(hypotheses, truth) == pytest.approx(0.1)
    assert metrics.mpjpe(hypotheses[0], truth) == pytest.approx(0.3)


def test_metric_docstring_examples_hold():
    assert doctest.testmod(metrics).failed == 0
