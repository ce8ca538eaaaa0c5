"""Mean IoU as the paper evaluates it: one confusion matrix accumulated over the whole
evaluation set, pixels labelled ``ignore_label`` left out, and the mean taken over the classes
that occur (in the truth or the prediction) -- never over per-batch scores, and never counting
an absent class as IoU 1.

Two ways in, one piece of maths: plain numpy functions and :class:`ConfusionMatrix` for
notebooks, and the streaming Keras metric :class:`MeanIoU` for ``compile``/custom steps. Both
build their confusion matrix with a single ``bincount`` over ``true * C + pred`` and derive
every score from it with the same TensorFlow functions (``_iou``, ``_mean_over_present``,
``_accuracy``), which also run inside compiled graphs.

A pixel is counted when its truth lies in ``0..C-1`` and is not ``ignore_label``; truth values
outside that range (255, CamVid's void 11, ...) are left out like the ignore label.

:func:`original_mean_iou_from_confusion` is the mean as the original code computes it, for
comparing with numbers from that code only (see its docstring).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from advseg_utils.method.reduction import replica_sum

# --- the shared maths (tensors in, tensors out; graph-safe) ----------------------------------


def _iou(cm: tf.Tensor) -> tf.Tensor:
    """Per-class IoU = TP / (TP + FP + FN) from a [C, C] matrix; NaN where the class is absent."""
    cm = tf.cast(cm, tf.float64)
    true_positives = tf.linalg.diag_part(cm)
    union = tf.reduce_sum(cm, axis=0) + tf.reduce_sum(cm, axis=1) - true_positives
    return true_positives / union  # 0 / 0 = NaN for a class absent from truth and prediction


def _mean_over_present(iou: tf.Tensor) -> tf.Tensor:
    """Mean of the non-NaN entries (NaN when there are none)."""
    present = tf.logical_not(tf.math.is_nan(iou))
    return tf.reduce_sum(tf.where(present, iou, 0.0)) / tf.reduce_sum(tf.cast(present, iou.dtype))


def _mean_over_true_positives(cm: tf.Tensor) -> tf.Tensor:
    """Mean IoU over the classes with at least one true positive only (NaN when none has one)."""
    iou = _iou(cm)
    hit = tf.linalg.diag_part(tf.cast(cm, tf.float64)) > 0
    return tf.reduce_sum(tf.where(hit, iou, 0.0)) / tf.reduce_sum(tf.cast(hit, iou.dtype))


def _accuracy(cm: tf.Tensor) -> tf.Tensor:
    """Share of counted pixels whose prediction equals the truth (NaN when none were counted)."""
    cm = tf.cast(cm, tf.float64)
    return tf.reduce_sum(tf.linalg.diag_part(cm)) / tf.reduce_sum(cm)


# --- numpy interface ---------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """int64 [C, C] counts of (truth row, prediction column) over two label maps of one shape.

    Raises ValueError when the shapes differ (e.g. logits passed instead of their argmax) or
    when a counted pixel's prediction is outside ``0..C-1``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}; expected two "
            "label maps of the same shape (take the argmax of logits first)"
        )
    y_true = y_true.ravel().astype(np.int64)  # int64 before true * C + pred: uint8 would wrap
    y_pred = y_pred.ravel().astype(np.int64)
    counted = (y_true >= 0) & (y_true < num_classes) & (y_true != ignore_label)
    y_true, y_pred = y_true[counted], y_pred[counted]
    if y_pred.size and (y_pred.min() < 0 or y_pred.max() >= num_classes):
        bad = y_pred[(y_pred < 0) | (y_pred >= num_classes)][0]
        raise ValueError(f"y_pred holds class {bad}; expected predictions in 0..{num_classes - 1}")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(cm) -> np.ndarray:
    """Per-class IoU (float64 [C]) from a confusion matrix; NaN for a class absent from both."""
    return _iou(tf.constant(cm)).numpy()


def mean_iou_from_confusion(cm) -> float:
    """Mean IoU over the classes present in a confusion matrix (NaN if no pixel was counted)."""
    return float(_mean_over_present(_iou(tf.constant(cm))))


def original_mean_iou_from_confusion(cm) -> float:
    """Mean IoU as the original code's evaluation computes it (``evaluate_voc.py``'s ``get_iou``,
    ``utils/metric.py``'s ``ConfusionMatrix.jaccard``): the average over the classes with at least
    one true positive only. A class that occurs but is never predicted right (IoU 0) is left out,
    so a weak model scores higher than with :func:`mean_iou_from_confusion`; the two agree when
    every class that occurs has a true positive. For comparing with numbers from that code only.
    """
    return float(_mean_over_true_positives(tf.constant(cm)))


def pixel_accuracy_from_confusion(cm) -> float:
    """Share of counted pixels predicted correctly (NaN if no pixel was counted)."""
    return float(_accuracy(tf.constant(cm)))


def per_class_iou(y_true, y_pred, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Per-class IoU over label maps; NaN for a class absent from truth and prediction."""
    return iou_from_confusion(confusion_matrix(y_true, y_pred, num_classes, ignore_label))


def mean_iou(y_true, y_pred, num_classes: int, ignore_label: int = 255) -> float:
    """Mean IoU over label maps, averaged over the classes present in truth or prediction."""
    return mean_iou_from_confusion(confusion_matrix(y_true, y_pred, num_classes, ignore_label))


def pixel_accuracy(y_true, y_pred, num_classes: int, ignore_label: int = 255) -> float:
    """Pixel accuracy over label maps, ignored pixels left out."""
    return pixel_accuracy_from_confusion(confusion_matrix(y_true, y_pred, num_classes, ignore_label))


class ConfusionMatrix:
    """A numpy confusion matrix accumulated image by image, for evaluation loops in notebooks."""

    def __init__(self, num_classes: int, ignore_label: int = 255):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, y_true, y_pred) -> None:
        """Add label maps of any (matching) shape, e.g. one image [H, W] or a batch [B, H, W]."""
        self.matrix += confusion_matrix(y_true, y_pred, self.num_classes, self.ignore_label)

    def per_class_iou(self) -> np.ndarray:
        return iou_from_confusion(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou_from_confusion(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy_from_confusion(self.matrix)


# --- streaming Keras metric ----------------------------------------------------------------------
# Not keras.metrics.MeanIoU(num_classes, ignore_class=255): it agrees on Keras 3.15, but measured
# (3 December 2026, TF 2.19) on Keras 3.8 under a 2-replica MirroredStrategy its matrix held 240
# pixels after 160 were counted (a wrong mean IoU), and on Keras 3.8 and 3.10 a truth label outside
# 0..C-1 other than ignore_class (CamVid's void 11) raised InvalidArgumentError on CPUs.


@keras.saving.register_keras_serializable(package="advseg")
class GlobalMean(keras.metrics.Mean):
    """``keras.metrics.Mean`` of values that are already global (identical on every replica, as
    :func:`advseg_utils.method.reduction.replica_sum` makes them): each update counts once, however many
    replicas make it.

    Keras's own metric variables sum the replicas' updates, which Keras 3.8 and 3.9 get wrong
    under a ``MirroredStrategy``: their ``assign_add`` is ``assign(variable + value)``, so the
    sum over N replicas multiplies the running total by N at every update, and a mean over
    several steps weights the first ones more (two replicas reported other figures than one).
    These variables keep the first replica's value instead, which is right on every version.
    """

    AGGREGATION = "only_first_replica"

    def add_variable(self, shape, initializer, dtype=None, aggregation="sum", name=None):
        return super().add_variable(shape, initializer, dtype=dtype, aggregation=self.AGGREGATION, name=name)


@keras.saving.register_keras_serializable(package="advseg")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean IoU over one confusion matrix, for ``compile(metrics=...)`` and custom steps.

    ``update_state(y_true, y_pred)``: ``y_true`` int labels [B, H, W] (or [B, H, W, 1]);
    ``y_pred`` logits or probabilities [B, H, W, C] (argmax taken) or labels [B, H, W]. Truth
    pixels equal to ``ignore_label`` or outside ``0..C-1`` are not counted. A predicted *label*
    outside ``0..C-1`` cannot be reported from inside a compiled graph, so such pixels are not
    counted either (the numpy :func:`confusion_matrix` raises instead). Under a ``tf.distribute``
    strategy each update's counts are summed over the replicas first and the matrix variable
    holds that global matrix (see :class:`GlobalMean` for why).
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, name: str = "mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.total_cm = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="int64",
            aggregation=GlobalMean.AGGREGATION,
            name="total_confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("MeanIoU does not take sample_weight; label pixels to skip with ignore_label")
        y_true = tf.convert_to_tensor(y_true)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == 4 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, axis=-1)
        if y_pred.shape.rank == y_true.shape.rank + 1:
            y_pred = tf.argmax(y_pred, axis=-1)
        y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        y_pred = tf.reshape(tf.cast(y_pred, tf.int32), [-1])
        counted = (
            (y_true >= 0) & (y_true < self.num_classes) & (y_true != self.ignore_label)
            & (y_pred >= 0) & (y_pred < self.num_classes)
        )  # fmt: skip
        # A segment sum of 0/1 weights rather than a boolean mask or bincount: every shape stays
        # static and XLA can compile it (Keras compiles evaluate() with XLA on GPUs by default).
        index = tf.where(counted, y_true * self.num_classes + y_pred, 0)
        size = self.num_classes * self.num_classes
        counts = replica_sum(tf.math.unsorted_segment_sum(tf.cast(counted, tf.int32), index, num_segments=size))
        self.total_cm.assign_add(tf.cast(tf.reshape(counts, self.total_cm.shape), tf.int64))

    def result(self):
        return tf.cast(_mean_over_present(_iou(self.total_cm)), self.dtype)

    def reset_state(self):
        self.total_cm.assign(tf.zeros_like(self.total_cm))

    def per_class_iou(self) -> np.ndarray:
        """Per-class IoU so far (float64 [C], NaN for absent classes)."""
        return iou_from_confusion(self.confusion_matrix())

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated int64 [C, C] matrix (rows truth, columns prediction)."""
        return keras.ops.convert_to_numpy(self.total_cm)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}
