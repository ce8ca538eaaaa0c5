"""Means that stay right on several devices: the reductions every loss of the method uses.

Every loss is a mean over the pixels that count (labels not ``ignore_label``, confident
pseudo-labels, ...) of the *global* batch. :func:`masked_mean` returns this replica's share of
that mean, ``local sum / global count`` (the count all-reduced over the replicas in sync), so
that the gradients Keras sums across replicas are exactly those of the global mean, and two
replicas at global batch B train exactly like one replica at batch B. On one device the share
is the mean itself; :func:`replica_sum` of a share is the global value (for logging).
"""
from __future__ import annotations

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
