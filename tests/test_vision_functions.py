"""Pure functions of the vision stage: distortions, PGD, similarity, augmentor, stimuli, splits (no database)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import identity
from pipeline.vision import attacks, augment, data, distortions, models, neural, similarity, stimuli, training

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return stimuli.digits_stimuli(height=12, width=12, n_images=600)


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny CNN trained for a few epochs on 600 digits (seconds on one core)."""
    loaders = data.stimulus_split(0, images=digits["images"], labels=digits["labels"], batch_size=32)
    model = models.digit_cnn(loaders, 0, channels=[6, 12])
    result = training.plain_classifier(model, loaders, 0, epochs=6, lr=5e-3)
    return model.eval(), loaders, result


@pytest.mark.parametrize("kind", sorted(distortions.DISTORTIONS))
def test_distortion_of_strength_zero_is_the_identity(kind, digits):
    images = digits["images"][:20]
    assert np.array_equal(distortions.distort(images, kind, 0.0, seed=3), images)


def test_distortions_grow_with_strength(digits):
    images = digits["images"][:50]
    for kind, levels in distortions.STRENGTHS.items():
        changes = [float(np.abs(distortions.distort(images, kind, s) - images).mean()) for s in levels]
        assert len(levels) >= 3 and changes == sorted(changes) and changes[0] > 0, (kind, changes)


def test_unknown_distortion_names_the_known_ones(digits):
    with pytest.raises(ValueError, match=r"distortion 'fog' \(expected one of \['blur', 'contrast'"):
        distortions.distort(digits["images"][:2], "fog", 0.1)


def test_contrast_keeps_each_image_mean(digits):
    images = digits["images"][:10]
    out = distortions.distort(images, "contrast", 0.7)
    assert np.allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=1e-6)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(out - mean, 0.3 * (images - mean), atol=1e-6)


def test_salt_and_pepper_changes_about_the_fraction(digits):
    images = np.full((20, 1, 12, 12), 0.5, np.float32)
    out = distortions.distort(images, "salt_and_pepper", 0.2, seed=1)
    assert (out != 0.5).mean() == pytest.approx(0.2, abs=0.03)


def test_affine_shift_moves_a_pixel():
    image = np.zeros((1, 1, 8, 8), np.float32)
    image[0, 0, 3, 3] = 1.0
    out = distortions.affine_transform(image, shift=(0.5, 0.0))  # half the half-width = 2 pixels right
    assert np.unravel_index(out[0, 0].argmax(), (8, 8)) == (3, 5)


def test_fit_to_frame_centres_the_digit_in_a_wider_frame():
    images = np.ones((2, 8, 8), np.float32)
    out = stimuli.fit_to_frame(images, 16, 24)
    assert out.shape == (2, 16, 24)
    assert out[:, :, :4].sum() == 0 and out[:, :, 20:].sum() == 0 and out[:, :, 4:20].min() == pytest.approx(1.0)


def test_split_is_disjoint_covers_every_image_and_depends_on_seed():
    a, b = data.split_indices(100, 0, 0.15, 0.25), data.split_indices(100, 1, 0.15, 0.25)
    assert [len(a[t]) for t in ("train", "validation", "test")] == [60, 15, 25]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    assert not np.array_equal(a["test"], b["test"])


def test_similarity_penalty_is_zero_when_similarities_match():
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    target = similarity.similarity_matrix(3.0 * x + 2.0)  # same geometry after centring and scaling
    assert float(similarity.similarity_penalty(x, target)) == pytest.approx(0.0, abs=1e-10)
    other = similarity.similarity_matrix(torch.randn(16, 5, generator=torch.Generator().manual_seed(1)))
    assert float(similarity.similarity_penalty(x, other)) > 0.05


def test_similarity_matrix_is_symmetric_with_unit_diagonal():
    s = similarity.similarity_matrix(torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(2)))
    assert s.shape == (10, 10)
    assert torch.allclose(s, s.T) and torch.allclose(s.diagonal(), torch.ones(10), atol=1e-6)


def test_augmentor_respects_its_magnitude_even_when_pushed():
    aug = augment.SpatialAugmentor(magnitude=0.2)
    with torch.no_grad():
        for p in aug.generator.parameters():
            p.mul_(100.0)  # saturate the generator
    with torch.no_grad():
        theta = aug.transforms(64, torch.Generator().manual_seed(0))
    deviation = (theta - aug.identity).abs()
    assert float(deviation.max()) <= 0.2 + 1e-6 and float(deviation.max()) > 0.19
    assert aug(torch.rand(4, 1, 12, 12)).shape == (4, 1, 12, 12)


def test_shuffled_targets_keep_every_row_but_not_the_pairing():
    targets = np.arange(40, dtype=np.float32).reshape(20, 2)
    out = neural.shuffled_targets(targets, seed=0)
    assert sorted(out[:, 0].tolist()) == targets[:, 0].tolist()
    assert (out[:, 0] != targets[:, 0]).sum() >= 15


def test_plain_training_reaches_high_accuracy(trained):
    _, loaders, result = trained
    assert result.score > 0.8
    assert len(result.output["history"]) == 6


def test_pgd_lowers_the_accuracy_of_a_trained_model(trained):
    model, loaders, _ = trained
    test = loaders["test"].dataset.arrays
    clean = training.accuracy(model, test["images"], test["labels"])
    x = torch.from_numpy(test["images"])
    adversarial = attacks.pgd_attack(model, x, torch.from_numpy(test["labels"]), epsilon=0.1, steps=5)
    attacked = training.accuracy(model, adversarial, test["labels"])
    assert float((adversarial - x).abs().max()) <= 0.1 + 1e-6
    assert clean > 0.8 and attacked < clean - 0.3


def test_distillation_loss_is_zero_for_equal_logits():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    assert float(training.distillation_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_classifier_builders_are_registered_and_validated():
    assert {"digit_cnn", "digit_mlp"} <= set(identity.registered("classifier"))
    assert {"plain_classifier", "similarity_regularized", "cotrained", "hard_distillation"} <= set(
        identity.registered("vision_trainer")
    )
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['sim_weight'\]"):
        identity.normalize(training.similarity_regularized, {"sim_weight": 1.0})


def test_hard_distillation_reports_queries_and_its_augmentor(trained):
    teacher, loaders, _ = trained
    student = models.digit_mlp(loaders, 0, hidden=8)
    result = training.hard_distillation(student, loaders, 0, teacher=teacher, epochs=1, magnitude=0.25)
    n_train = len(loaders["train"].dataset)
    assert result.output["teacher_queries"] == 2 * n_train
    summary = result.output["augmentor"]
    assert summary["magnitude"] == 0.25
    assert max(abs(v) for row in summary["mean_deviation"] for v in row) <= 0.25


def test_conditional_augmentor_gives_different_images_different_transforms_within_magnitude():
    aug = augment.SpatialAugmentor(magnitude=0.3, conditional=True, code_size=1)
    images = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theta = aug.transforms(8, torch.Generator().manual_seed(1), images)
    assert float((theta - aug.identity).abs().max()) <= 0.3
    assert float(theta.std(0).max()) > 1e-4
    with pytest.raises(ValueError, match=r"a conditional augmentor needs the 8 images it transforms \(got None\)"):
        aug.transforms(8)
