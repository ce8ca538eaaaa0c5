"""Whole-image inference helpers that are not covered with the notebook glue."""
import keras
import numpy as np

from advseg_utils import recalibrate_batchnorm


def _generator_with_batchnorm(frozen: bool) -> keras.Model:
    images = keras.Input((None, None, 3))
    inner = keras.Sequential([keras.layers.Conv2D(4, 1, name="conv"), keras.layers.BatchNormalization(momentum=0.999)], name="backbone")
    inner.layers[-1].trainable = not frozen
    return keras.Model(images, keras.layers.Conv2D(3, 1)(inner(images)))


def test_recalibration_sets_moving_statistics_to_those_of_the_images():
    generator = _generator_with_batchnorm(frozen=False)
    images = np.random.default_rng(0).normal(5.0, 3.0, size=(4, 6, 7, 3)).astype(np.float32)
    batchnorm = generator.get_layer("backbone").layers[-1]
    weights_before = [w.copy() for w in generator.get_weights()]

    recalibrate_batchnorm(generator, images)

    features = generator.get_layer("backbone").get_layer("conv")(images).numpy().reshape(-1, 4)
    np.testing.assert_allclose(batchnorm.moving_mean.numpy(), features.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batchnorm.moving_variance.numpy(), features.var(axis=0), rtol=1e-3, atol=1e-5)
    assert batchnorm.momentum == 0.999  # restored
    changed = [i for i, (a, b) in enumerate(zip(weights_before, generator.get_weights())) if not np.array_equal(a, b)]
    assert len(changed) == 2  # the moving mean and variance, nothing trainable


def test_recalibration_leaves_frozen_batchnorm_alone():
    generator = _generator_with_batchnorm(frozen=True)
    before = [w.copy() for w in generator.get_weights()]
    recalibrate_batchnorm(generator, np.ones((2, 5, 5, 3), np.float32) * 7)
    for a, b in zip(before, generator.get_weights()):
        np.testing.assert_array_equal(a, b)
