"""Whole-image inference helpers that are not covered with the notebook glue."""
import keras
import numpy as np
import pytest

from advseg_utils import EvaluationResult, recalibrate_batchnorm
from advseg_utils.tables import ORIGINAL_MEAN_LABEL


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


def test_evaluation_reports_the_standard_and_the_original_codes_mean_labelled():
    # IoU: class 0 2/5, class 1 1/2, class 2 0 (no true positive): means 30.0 and 45.0
    confusion = np.array([[2, 0, 0], [1, 1, 0], [2, 0, 0]])
    result = EvaluationResult(confusion, ("a", "b", "c"))
    scores = result.as_dict()
    assert (scores["mean_iou"], scores["original_mean_iou"]) == pytest.approx((0.3, 0.45))
    *_, mean_row, original_row = result.table().splitlines()
    assert "**mean**" in mean_row and "30.0" in mean_row
    assert ORIGINAL_MEAN_LABEL in original_row and "45.0" in original_row
