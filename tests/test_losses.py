"""The losses on hand-built cases: values computed by hand, gradients that must (not) flow."""
import math

import numpy as np
import pytest
import tensorflow as tf

from advseg_utils.method import (
    adversarial_loss,
    confident_pseudo_labels,
    cross_entropy_loss,
    discriminator_accuracy,
    discriminator_loss,
    one_hot_with_ignore,
    semi_supervised_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def as_map(values, dtype=tf.float32):
    """A list of pixels -> a [1, 1, W, ...] map."""
    return tf.constant([[values]], dtype=dtype)


def test_one_hot_of_an_ignored_pixel_is_all_zero():
    one_hot = one_hot_with_ignore(as_map([0, 2, 255], tf.int32), num_classes=3)
    np.testing.assert_array_equal(one_hot[0, 0], [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert one_hot.dtype == tf.float32


def test_cross_entropy_is_the_mean_over_non_ignored_pixels():
    labels = as_map([0, 1, 255], tf.int32)
    logits = tf.Variable(as_map([[0.0, 0.0, 0.0], [0.0, LN3, 0.0], [9.0, -9.0, 5.0]]))
    with tf.GradientTape() as tape:
        loss = cross_entropy_loss(labels, logits)
    # pixel 0: -ln(1/3); pixel 1: -ln(3/5); pixel 2 ignored -> (ln 3 + ln 5/3) / 2 = ln(5) / 2
    assert float(loss) == pytest.approx(math.log(5.0) / 2, rel=1e-6)
    gradient = tape.gradient(loss, logits).numpy()[0, 0]
    np.testing.assert_array_equal(gradient[2], 0.0)
    assert np.abs(gradient[:2]).sum() > 0


def test_cross_entropy_is_float32_for_half_precision_logits():
    loss = cross_entropy_loss(as_map([0], tf.int32), as_map([[0.0, 0.0]], tf.float16))
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(LN2, rel=1e-6)


def test_a_fully_ignored_batch_gives_zero_loss_and_zero_gradient():
    logits = tf.Variable(as_map([[1.0, 2.0], [3.0, 4.0]]))
    with tf.GradientTape() as tape:
        loss = cross_entropy_loss(as_map([255, 255], tf.int32), logits)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, logits), 0.0)


def test_adversarial_loss_leaves_masked_out_pixels_out():
    d_logits = as_map([[0.0], [0.0], [10.0]])
    mask = as_map([True, True, False], tf.bool)
    assert float(adversarial_loss(d_logits, 1.0, mask)) == pytest.approx(LN2, rel=1e-6)
    # target 0 at logit ln 3: -ln(1 - sigmoid(ln 3)) = -ln(1/4)
    assert float(adversarial_loss(as_map([[LN3]]), 0.0)) == pytest.approx(math.log(4.0), rel=1e-6)


def test_discriminator_loss_pools_all_fake_pixels_into_one_mean():
    fake_labeled, fake_unlabeled = as_map([[0.0], [LN3]]), as_map([[LN3]])
    real = as_map([[0.0], [100.0]])
    loss = discriminator_loss(
        [fake_labeled, fake_unlabeled],
        [as_map([True, False], tf.bool), as_map([True], tf.bool)],
        real,
        as_map([True, False], tf.bool),
    )
    # fake: pixels ln 2 and ln 4 -> 1.5 ln 2; real: ln 2; each half weighted 1/2
    assert float(loss) == pytest.approx(1.25 * LN2, rel=1e-6)


def test_discriminator_accuracy_counts_correct_masked_pixels():
    d_logits = as_map([[1.0], [-1.0], [2.0], [-3.0]])
    mask = as_map([True, True, True, False], tf.bool)
    assert float(discriminator_accuracy(d_logits, real=True, mask=mask)) == pytest.approx(2 / 3)
    assert float(discriminator_accuracy(d_logits, real=False, mask=mask)) == pytest.approx(1 / 3)


def test_pixels_at_or_below_the_threshold_are_ignored():
    logits = as_map([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    # sigmoid(0) is exactly 0.5 = T: excluded; sigmoid(1e-3) just above: kept
    d_logits = as_map([[0.0], [1e-3], [-1.0], [2.0]])
    labels, confident = confident_pseudo_labels(logits, d_logits, t_semi=0.5)
    np.testing.assert_array_equal(labels[0, 0], [255, 1, 255, 1])
    np.testing.assert_array_equal(confident[0, 0], [False, True, False, True])


def test_the_default_threshold_is_strict_at_its_exact_value():
    at = float(np.log(0.25))  # sigmoid(ln 1/4) = 0.2
    t_semi = float(tf.sigmoid(tf.constant(at)))  # the float32 value D's confidence takes there
    _, confident = confident_pseudo_labels(as_map([[1.0, 0.0]] * 2), as_map([[at], [at + 1e-3]]), t_semi)
    np.testing.assert_array_equal(confident[0, 0], [False, True])


def test_semi_ratio_is_the_share_of_confident_unlabeled_pixels():
    # sigmoid > 0.3 (logit > -0.847) for 1.0, -0.5 and 3.0: three of the batch's eight pixels
    d_logits = tf.reshape([1.0, -1.0, -2.0, -0.5, 3.0, -4.0, -1.5, -0.9], [2, 2, 2, 1])
    _, semi_ratio = semi_supervised_loss(tf.zeros([2, 2, 2, 3]), d_logits, t_semi=0.3)
    assert float(semi_ratio) == pytest.approx(3 / 8)


def test_semi_loss_trains_g_on_confident_pixels_only_and_nothing_flows_into_d():
    logits = tf.Variable(as_map([[LN3, 0.0, 0.0], [0.0, 0.0, 5.0]]))
    d_logits = tf.Variable(as_map([[3.0], [-3.0]]))  # confident, not confident (T = 0.2)
    with tf.GradientTape(persistent=True) as tape:
        loss, semi_ratio = semi_supervised_loss(logits, d_logits, t_semi=0.2)
    assert float(loss) == pytest.approx(math.log(5.0 / 3.0), rel=1e-6)  # -ln(3/5) on pixel 0
    assert float(semi_ratio) == pytest.approx(0.5)
    gradient = tape.gradient(loss, logits).numpy()[0, 0]
    assert np.abs(gradient[0]).sum() > 0.1
    np.testing.assert_array_equal(gradient[1], 0.0)
    assert tape.gradient(loss, d_logits) is None  # the confidence map is a constant
