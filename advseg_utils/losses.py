"""The losses of Hung et al. (2018), in float32 and correct under ``tf.distribute``.

Every loss is a mean over the pixels that count (labels not ``ignore_label``, confident
pseudo-labels, ...) of the *global* batch. Each function returns this replica's share of that
mean, ``local sum / global count`` (the count all-reduced over the replicas in sync), so that
the gradients Keras sums across replicas are exactly those of the global mean, and two replicas
at global batch B train exactly like one replica at batch B. On one device the share is the
mean itself; :func:`replica_sum` of a share is the global value (for logging).
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum of ``value`` over the replicas in sync (the value itself outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: nothing to reduce
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """This replica's share of the mean of ``values`` over the global batch's ``mask`` pixels.

    0 when no pixel is in the mask anywhere (an all-ignored batch contributes nothing).
    """
    values = tf.cast(values, tf.float32)
    mask = tf.cast(mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), replica_sum(tf.reduce_sum(mask)))


def one_hot_with_ignore(labels: tf.Tensor, num_classes: int, ignore_label: int = 255) -> tf.Tensor:
    """float32 one-hot [B, H, W, C] of int labels [B, H, W]; an ignored pixel is all zeros."""
    labels = tf.cast(labels, tf.int32)
    return tf.one_hot(tf.where(labels == ignore_label, -1, labels), num_classes, dtype=tf.float32)


def cross_entropy_loss(labels: tf.Tensor, logits: tf.Tensor, ignore_label: int = 255) -> tf.Tensor:
    """Pixel-wise softmax cross-entropy of logits [B, H, W, C] against labels [B, H, W],
    averaged over the pixels not labelled ``ignore_label``."""
    labels = tf.cast(labels, tf.int32)
    counted = labels != ignore_label
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(counted, labels, 0), logits=tf.cast(logits, tf.float32)
    )
    return masked_mean(per_pixel, counted)


def _bce_with_logits(d_logits: tf.Tensor, target: float) -> tf.Tensor:
    """Per-pixel binary cross-entropy [B, H, W] of D's logits [B, H, W, 1] against a constant."""
    d_logits = tf.cast(tf.squeeze(d_logits, axis=-1), tf.float32)
    targets = tf.fill(tf.shape(d_logits), target)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=d_logits)


def adversarial_loss(d_logits: tf.Tensor, target: float, mask: tf.Tensor | None = None) -> tf.Tensor:
    """BCE-with-logits of D's logits [B, H, W, 1] against ``target`` (1 real, 0 fake), averaged
    over the ``mask`` pixels [B, H, W] (all pixels when ``mask`` is None)."""
    per_pixel = _bce_with_logits(d_logits, target)
    return masked_mean(per_pixel, tf.ones_like(per_pixel) if mask is None else mask)


def discriminator_loss(
    fake_logits: Sequence[tf.Tensor],
    fake_masks: Sequence[tf.Tensor],
    real_logits: tf.Tensor,
    real_mask: tf.Tensor,
) -> tf.Tensor:
    """D's loss: half the BCE against 0 over all fake pixels (every fake map's mask pixels
    pooled into one mean, as the original concatenates them), half the BCE against 1 over the
    real map's mask pixels."""
    fake_values = tf.concat([tf.reshape(_bce_with_logits(d, 0.0), [-1]) for d in fake_logits], axis=0)
    fake_mask = tf.concat([tf.reshape(m, [-1]) for m in fake_masks], axis=0)
    return 0.5 * masked_mean(fake_values, fake_mask) + 0.5 * adversarial_loss(real_logits, 1.0, real_mask)


def discriminator_accuracy(d_logits: tf.Tensor, real: bool, mask: tf.Tensor | None = None) -> tf.Tensor:
    """Share of ``mask`` pixels that D classifies correctly (logit > 0 means "real")."""
    said_real = tf.squeeze(d_logits, axis=-1) > 0
    correct = said_real if real else tf.logical_not(said_real)
    return masked_mean(correct, tf.ones_like(correct) if mask is None else mask)


def confident_pseudo_labels(
    logits: tf.Tensor, d_logits: tf.Tensor, t_semi: float, ignore_label: int = 255
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pseudo-labels from G's unlabeled prediction, kept where D is confident.

    Returns (labels int32 [B, H, W]: argmax of ``logits`` where sigmoid(D) > ``t_semi``, else
    ``ignore_label``; confident bool [B, H, W]). Both are constants: no gradient flows through
    the confidence map or the argmax.
    """
    confidence = tf.sigmoid(tf.cast(tf.squeeze(tf.stop_gradient(d_logits), axis=-1), tf.float32))
    confident = confidence > t_semi
    prediction = tf.argmax(tf.stop_gradient(logits), axis=-1, output_type=tf.int32)
    return tf.where(confident, prediction, ignore_label), confident


def semi_supervised_loss(
    logits: tf.Tensor, d_logits: tf.Tensor, t_semi: float, ignore_label: int = 255
) -> tuple[tf.Tensor, tf.Tensor]:
    """The semi-supervised loss and ``semi_ratio`` (share of pixels above ``t_semi``).

    Cross-entropy of G's unlabeled logits against their own confident pseudo-labels; the
    targets are constants, the cross-entropy sends gradient into G through ``logits``.
    """
    pseudo_labels, confident = confident_pseudo_labels(logits, d_logits, t_semi, ignore_label)
    semi_ratio = masked_mean(confident, tf.ones_like(confident))
    return cross_entropy_loss(pseudo_labels, logits, ignore_label), semi_ratio


def pseudo_label_accuracy(
    true_labels: tf.Tensor, logits: tf.Tensor, d_logits: tf.Tensor, t_semi: float, ignore_label: int = 255
) -> tuple[tf.Tensor, tf.Tensor]:
    """A diagnostic, not a loss: how right the pseudo-labels are, where the unlabeled images'
    true labels [B, H, W] happen to be known.

    Returns this replica's shares of (the accuracy of G's arg-max over every pixel whose true
    label is not ``ignore_label``, the same over only the pixels D's confidence keeps, above
    ``t_semi``); 0 where no pixel counts. Both are constants: nothing here has a gradient.
    """
    _, confident = confident_pseudo_labels(logits, d_logits, t_semi, ignore_label)
    true_labels = tf.cast(true_labels, tf.int32)
    counted = true_labels != ignore_label
    correct = tf.argmax(tf.stop_gradient(logits), axis=-1, output_type=tf.int32) == true_labels
    return masked_mean(correct, counted), masked_mean(correct, counted & confident)
