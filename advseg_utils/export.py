"""G as a model that runs without this package: a TF SavedModel, TFLite (float32 or int8) or ONNX.

Every format takes raw RGB uint8 images and returns per-pixel ``labels`` (uint8, G's arg-max)
and ``probabilities`` (float32 softmax). The graph inside is :func:`advseg_utils.inference.segment`,
the one Segmenter runs, and G does its own preprocessing and padding, so a reader needs only
TensorFlow, a TFLite interpreter or onnxruntime:

* ``"saved_model"`` (a folder): signature ``serving_default``, ``images`` uint8 [H, W, 3] or
  [B, H, W, 3] of any size; outputs shaped [H, W] / [H, W, C] or batched.
* ``"tflite"`` / ``"tflite_int8"`` (a file): one image at a time, ``images`` uint8 [1, H, W, 3].
  H and W are free by default (the interpreter's signature runner resizes its input to each
  image's size); ``input_size=(H, W)`` fixes them, as phone delegates (GPU, NNAPI) want: then
  resize each image to that size and the labels back to the image's (nearest neighbour).
  ``tflite_int8`` is full-integer quantised (weights and activations int8; only the input's
  cast and quantisation and the probabilities' dequantisation are float), calibrated on
  ``calibration_images``: training images, an iterable of RGB arrays or a SegDataset.
* ``"onnx"`` (a file): converted by tf2onnx (``pip install advseg_utils[export]``), ``images``
  uint8 [B, H, W, 3] of any size.

Writes are atomic: the export goes to a temporary sibling, then replaces ``path``; a failed
export leaves what was there untouched.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from advseg_utils.atomic import atomic_path
from advseg_utils.datasets import SegDataset
from advseg_utils.file_utils import load_img
from advseg_utils.inference import segment
from advseg_utils.quiet_import import tensorflow_quietly

FORMATS = ("saved_model", "tflite", "tflite_int8", "onnx")
SIGNATURE = "serving_default"
ONNX_OPSET = 17


def export_generator(
    generator: keras.Model,
    path: str | os.PathLike,
    format: str = "saved_model",
    *,
    input_size: tuple[int, int] | None = None,
    calibration_images: Iterable[np.ndarray] | SegDataset | None = None,
    calibration_count: int = 100,
) -> Path:
    """Writes ``generator`` to ``path`` in ``format`` (one of :data:`FORMATS`) and returns ``path``.

    ``input_size`` (TFLite only): a fixed (H, W) instead of any size. ``calibration_images``
    (``tflite_int8`` only, required): the representative images whose activation ranges set
    the int8 scales, at most ``calibration_count`` of them (a SegDataset: that many evenly
    spread). See the module docstring for each format's inputs and outputs.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; expected one of {FORMATS}.")
    if input_size is not None and not format.startswith("tflite"):
        raise ValueError(f"input_size={input_size} applies to the TFLite formats only, not {format!r}.")
    if format == "tflite_int8" and calibration_images is None:
        raise ValueError("format='tflite_int8' needs calibration_images: training images (a SegDataset or RGB arrays).")
    generator = float32_copy(generator)
    path = Path(path)
    # The SavedModel writer and the converters log INFO lines (to Python's logger and to file
    # descriptor 2) that would fill a notebook cell; they are shown only if the export fails.
    with tensorflow_quietly(), atomic_path(path) as partial:
        if format == "saved_model":
            _write_saved_model(partial, _any_rank_serving(generator), tf.TensorSpec(None, tf.uint8, name="images"))
        elif format == "onnx":
            _write_onnx(generator, partial)
        else:
            images = None if format == "tflite" else _calibration_batches(calibration_images, calibration_count, input_size)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch:
                partial.write_bytes(_tflite(generator, Path(scratch) / "tflite_source", input_size, images))
        if path.is_dir():
            shutil.rmtree(path)  # only once the new export is complete
    return path


def float32_copy(generator: keras.Model) -> keras.Model:
    """``generator`` itself when it computes in float32, else a copy that does, with the same
    weights. A G trained under mixed precision (on a GPU) computes in float16, which CPUs run
    slowly and the converters expect float32 for; its variables are float32 already."""
    config = generator.get_config()
    if not _float32_policies(config):
        return generator
    copy = generator.__class__.from_config(config)
    copy.set_weights(generator.get_weights())
    return copy


def _float32_policies(config) -> bool:
    """Replaces, in place, every mixed dtype policy in a Keras config by float32; whether any was."""
    replaced = False
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config["config"]["name"].startswith("mixed"):
            config["config"]["name"] = "float32"
            return True
        values = config.values()
    else:
        values = config if isinstance(config, list) else ()
    for value in values:
        replaced |= _float32_policies(value)
    return replaced


def _batch_serving(generator: keras.Model):
    """uint8 images [B, H, W, 3] -> {"labels", "probabilities"}."""

    def serve(images):
        labels, probabilities = segment(generator, images)
        return {"labels": labels, "probabilities": probabilities}

    return serve


def _any_rank_serving(generator: keras.Model):
    """As :func:`_batch_serving`, for one image [H, W, 3] or a batch [B, H, W, 3]."""

    def serve(images):
        shape = tf.shape(images)
        checks = [
            tf.debugging.assert_rank_in(images, [3, 4], message="images must be [H, W, 3] or [B, H, W, 3]"),
            tf.debugging.assert_equal(shape[-1], 3, message="images must have 3 (RGB) channels"),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        batch = tf.ensure_shape(tf.reshape(images, tf.concat([[-1], shape[-3:]], 0)), [None, None, None, 3])
        labels, probabilities = segment(generator, batch)
        pixels = shape[:-1]  # [B,] H, W
        return {"labels": tf.reshape(labels, pixels), "probabilities": tf.reshape(probabilities, tf.concat([pixels, [-1]], 0))}

    return serve


def _write_saved_model(path: Path, serve, spec: tf.TensorSpec) -> None:
    """A SavedModel with one signature. Keras's ExportArchive saves the variables the endpoint
    reads, so that converters can freeze them (a plain tf.Module's are not; ``archive.track(G)``
    would save every weight a second time)."""
    archive = keras.export.ExportArchive()
    archive.add_endpoint(SIGNATURE, serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _tflite(generator: keras.Model, scratch: Path, input_size: tuple[int, int] | None, calibration) -> bytes:
    """The TFLite flatbuffer, float32, or int8 when ``calibration`` (a batch iterator) is given."""
    height, width = input_size or (None, None)
    _write_saved_model(scratch, _batch_serving(generator), tf.TensorSpec([1, height, width, 3], tf.uint8, name="images"))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch), signature_keys=[SIGNATURE])
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([batch] for batch in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail rather than fall back to float
    return converter.convert()


def _calibration_batches(images, count: int, input_size: tuple[int, int] | None) -> list[np.ndarray]:
    """Up to ``count`` uint8 batches [1, H, W, 3], resized to ``input_size`` when it is fixed."""
    batches = []
    for image in _calibration_images(images, count):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"calibration images must be RGB [H, W, 3]; got one of shape {image.shape}")
        if input_size is not None:
            image = tf.cast(tf.round(tf.image.resize(image, input_size)), tf.uint8).numpy()
        batches.append(image[None].astype(np.uint8))
    if not batches:
        raise ValueError("calibration_images is empty: int8 calibration needs training images")
    return batches


def _calibration_images(images, count: int) -> Iterator[np.ndarray]:
    if isinstance(images, SegDataset):
        picked = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))
        return (load_img(images.image_paths[i]) for i in picked)
    return (image for image, _ in zip(images, range(count)))


def _write_onnx(generator: keras.Model, path: Path) -> None:
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError("format='onnx' needs tf2onnx: pip install 'advseg_utils[export]'") from error
    serve = tf.function(_batch_serving(generator))
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))
