"""G (and D) on whole images of any size: label maps, D's confidence maps, and the paper's
evaluation, one confusion matrix over a whole validation set."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from advseg_utils.progress import tqdm

from advseg_utils.datasets import SegDataset
from advseg_utils.metrics import (
    ConfusionMatrix,
    iou_from_confusion,
    mean_iou_from_confusion,
    original_mean_iou_from_confusion,
    pixel_accuracy_from_confusion,
)
from advseg_utils.tables import iou_table
from advseg_utils.voc_gen import VOCGen


@dataclass(frozen=True)
class Prediction:
    """Per image: ``labels`` uint8 [H, W] (argmax of G), ``confidence`` float32 [H, W]
    (sigmoid of D on softmax(G)) or None without a discriminator."""

    labels: list[np.ndarray]
    confidence: list[np.ndarray] | None


class Segmenter:
    """G, and optionally D, on whole images of any size, each compiled once.

    ``labels(image)`` is G's label map; ``confidence(image)`` also returns D's confidence map,
    sigmoid(D(softmax(G(x)))): where D takes the prediction for ground truth.
    """

    _IMAGE = tf.TensorSpec([1, None, None, 3], tf.float32)

    def __init__(self, generator: keras.Model, discriminator: keras.Model | None = None):
        self.generator = generator
        self.discriminator = discriminator
        self._labels = tf.function(self._labels_graph, input_signature=[self._IMAGE])
        self._confidence = tf.function(self._confidence_graph, input_signature=[self._IMAGE])

    def labels(self, image) -> np.ndarray:
        """uint8 [H, W] class indices for one RGB image [H, W, 3] (0..255)."""
        return self._labels(_as_batch(image)).numpy()[0]

    def confidence(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(labels uint8 [H, W], D's confidence float32 [H, W]) for one RGB image."""
        if self.discriminator is None:
            raise ValueError("this Segmenter has no discriminator: pass one to get confidence maps")
        labels, confidence = self._confidence(_as_batch(image))
        return labels.numpy()[0], confidence.numpy()[0]

    def predict(self, images: Sequence[np.ndarray]) -> Prediction:
        """Labels for every image, and D's confidence maps when there is a discriminator."""
        if self.discriminator is None:
            return Prediction([self.labels(image) for image in images], None)
        labels, confidence = zip(*(self.confidence(image) for image in images))
        return Prediction(list(labels), list(confidence))

    def _labels_graph(self, images):
        return segment(self.generator, images)[0]

    def _confidence_graph(self, images):
        labels, probabilities = segment(self.generator, images)
        d_logits = tf.cast(self.discriminator(probabilities, training=False), tf.float32)
        return labels, tf.sigmoid(d_logits[..., 0])


def segment(generator: keras.Model, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """G on a batch of RGB images [B, H, W, 3] in 0..255 of any size and numeric dtype (uint8
    too): (labels uint8 [B, H, W], softmax probabilities float32 [B, H, W, C]).

    The one path from images to predictions, shared by :class:`Segmenter` and the exported
    models (:mod:`advseg_utils.export`). G itself preprocesses, pads ("same" convolutions) and
    resizes its logits back to the input's size, so nothing else is needed.
    """
    logits = tf.cast(generator(tf.cast(images, tf.float32), training=False), tf.float32)
    return tf.cast(tf.argmax(logits, axis=-1), tf.uint8), tf.nn.softmax(logits)


def _as_batch(image) -> tf.Tensor:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected one RGB image [H, W, 3], got shape {image.shape}")
    return tf.constant(image[None], tf.float32)


@dataclass(frozen=True)
class EvaluationResult:
    """Scores from one confusion matrix (rows truth, columns prediction) over a whole set."""

    confusion: np.ndarray
    class_names: tuple[str, ...]

    @property
    def mean_iou(self) -> float:
        """Mean over the classes present in truth or prediction."""
        return mean_iou_from_confusion(self.confusion)

    @property
    def original_mean_iou(self) -> float:
        """The mean as the original code's evaluation computes it: over the classes with a true
        positive only (see :func:`~advseg_utils.metrics.original_mean_iou_from_confusion`); for
        comparing with numbers from that code, never instead of :attr:`mean_iou`."""
        return original_mean_iou_from_confusion(self.confusion)

    @property
    def per_class_iou(self) -> np.ndarray:
        """float64 [C], NaN for a class absent from truth and prediction."""
        return iou_from_confusion(self.confusion)

    @property
    def pixel_accuracy(self) -> float:
        return pixel_accuracy_from_confusion(self.confusion)

    def table(self) -> str:
        """Per-class IoU as a markdown table, ending with the mean and the original code's mean."""
        return iou_table(self.per_class_iou, self.class_names, self.mean_iou, self.original_mean_iou)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: mean IoU, the original code's mean IoU, pixel accuracy and per-class IoU
        (None for an absent class)."""
        per_class = {name: None if np.isnan(iou) else float(iou) for name, iou in zip(self.class_names, self.per_class_iou)}
        return {
            "mean_iou": self.mean_iou,
            "original_mean_iou": self.original_mean_iou,
            "pixel_accuracy": self.pixel_accuracy,
            "per_class_iou": per_class,
        }


def evaluate(segmenter: Segmenter, dataset: SegDataset, progress: bool = True) -> EvaluationResult:
    """Single-scale evaluation on whole images, as the paper's: one confusion matrix over the
    whole ``dataset``, pixels labelled with the ignore label left out. The result's ``mean_iou``
    is the standard mean; ``original_mean_iou`` the original code's, for comparing with its numbers."""
    matrix = ConfusionMatrix(dataset.num_classes, dataset.ignore_label)
    batches = VOCGen(dataset).evaluation(batch_size=1)
    for batch in tqdm(batches, total=len(dataset), desc=f"evaluating on {dataset.name}", disable=not progress):
        matrix.update(batch["label"].numpy()[0], segmenter.labels(batch["image"].numpy()[0]))
    return EvaluationResult(matrix.matrix, dataset.class_names)


def recalibrate_batchnorm(generator: keras.Model, images: tf.Tensor) -> None:
    """Sets the moving statistics of G's trainable batch norms to those of ``images`` ("precise BN").

    One forward pass in training mode with momentum 0; no weight changes, and frozen batch norms
    are left alone. Needed before evaluating a network trained from random weights for a short
    run: MobileNetV2's batch norms average with momentum 0.999 (made for ImageNet-length
    training), so after a few hundred iterations their moving statistics are still mostly the
    initial ones, unlike the batch statistics G was trained with.
    """
    layers = _batchnorm_layers(generator)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        generator(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch norm of ``model``, also inside nested models (G's backbone)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found
