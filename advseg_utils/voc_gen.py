"""VOCGen: tf.data input pipelines for segmentation training and evaluation.

Training streams apply the paper's augmentation: random scale (image bilinear, label nearest),
padding to the crop size (image with the ImageNet mean, label with the ignore label), a random
crop and a random horizontal flip, with the same window and flip for image and label.

Every stream is reproducible and resumable. Element ``g`` of a stream (``g = batch * batch_size
+ slot``) is the item at position ``g mod N`` of a permutation drawn from ``(seed, stream,
epoch = g // N)``, augmented with randomness drawn from ``(seed, stream, g)``, using stateless
random ops only. Batch ``k`` is therefore a pure function of ``(seed, k)``, and
``train(start_step=k)`` starts there at once, without replaying the batches before it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from advseg_utils.datasets import SegDataset, check_files_exist
from advseg_utils.file_utils import DatasetError, load_img, load_mask

IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
_RNG = "philox"  # named rather than auto-selected, so streams do not depend on the device


class VOCGen:
    """Training and evaluation pipelines over a :class:`~advseg_utils.datasets.SegDataset`.

    Training batches are dicts of float32 RGB images in [0, 255] ``[B, crop_h, crop_w, 3]`` and
    int32 labels ``[B, crop_h, crop_w]`` holding 0..C-1 or the ignore label; every training
    stream is infinite. ``pad_image_value`` fills image padding: ``"mean"`` (the ImageNet mean
    RGB, which a mean-subtracting network sees as zero), a number or an RGB triple.
    """

    def __init__(
        self,
        dataset: SegDataset,
        crop_size: tuple[int, int] = (321, 321),
        batch_size: int = 10,
        scale_range: tuple[float, float] = (0.5, 1.5),
        random_flip: bool = True,
        pad_image_value: str | float | Sequence[float] = "mean",
        seed: int = 0,
    ) -> None:
        if not (0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if batch_size < 1 or min(crop_size) < 1:
            raise ValueError(f"batch_size and crop_size must be positive, got {batch_size} and {crop_size}")
        check_files_exist(dataset)
        self.dataset = dataset
        self.crop_size = tuple(crop_size)
        self.batch_size = batch_size
        self.scale_range = tuple(scale_range)
        self.random_flip = random_flip
        self.image_fill = _image_fill(pad_image_value)
        self.seed = seed

    def train(
        self, start_step: int = 0, ids: Sequence[str] | None = None, *, stream: int = 0, labels_only: bool = False
    ) -> tf.data.Dataset:
        """Infinite augmented batches ``{"image", "label"}`` of the labeled ``ids`` (default: all).

        ``stream`` numbers an independent random stream: its own shuffling and augmentation, so
        that a method can draw two unrelated batches of the same images (the adversarial method
        shows D the labels of stream 2 as "real" while G trains on stream 0). ``labels_only``
        reads and augments the masks alone (``{"label"}``).
        """
        keys = ("label",) if labels_only else ("image", "label")
        return self._stream(self._labeled(ids), stream, start_step, keys=keys)

    def unlabeled(
        self,
        start_step: int = 0,
        images: Sequence[str] | SegDataset | None = None,
        *,
        stream: int = 1,
        with_labels: bool = False,
    ) -> tf.data.Dataset:
        """Infinite augmented batches ``{"image"}`` whose masks are never read.

        ``images``: ids of this dataset (default: all), or a dataset of its own: folders of images
        nobody labeled (:func:`~advseg_utils.unlabeled.unlabeled_folder_dataset`), possibly merged
        with this dataset's unused share (:func:`~advseg_utils.unlabeled.merge_unlabeled`).
        ``with_labels=True`` adds ``"label"``, the true labels of the same crops (the augmentation
        does not depend on it), for diagnostics only; every image then needs a mask.
        """
        if isinstance(images, SegDataset):
            check_files_exist(images)
            if with_labels and not images.labeled:
                raise DatasetError(f"{images.name}: with_labels=True needs unlabeled images with masks")
            dataset = images
        else:
            dataset = self._labeled(images) if with_labels else self._subset(images)
        return self._stream(dataset, stream, start_step, keys=("image", "label") if with_labels else ("image",))

    def evaluation(self, batch_size: int = 1, ids: Sequence[str] | None = None) -> tf.data.Dataset:
        """One pass over whole, unaugmented images in dataset order: ``{"image", "label"}``.

        With ``batch_size > 1`` images of different sizes are padded to the largest in the batch
        (label padding is the ignore label, image padding as in training).
        """
        dataset = self._labeled(ids)
        items = tf.data.Dataset.from_tensor_slices(_file_table(dataset, ("image", "label")))
        examples = items.map(lambda files: self._decode(files, dataset), num_parallel_calls=tf.data.AUTOTUNE)
        examples = examples.map(lambda example: {**example, "valid": tf.ones_like(example["label"], tf.bool)})
        padding = {
            "image": tf.constant(0, tf.uint8),
            "label": tf.constant(dataset.ignore_label, tf.uint8),
            "valid": False,
        }
        batches = examples.padded_batch(batch_size, padding_values=padding)
        return (
            batches.map(self._finish_padded_batch)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(_pipeline_options())
        )

    def _labeled(self, ids: Sequence[str] | None) -> SegDataset:
        dataset = self._subset(ids)
        if not dataset.labeled:
            raise DatasetError(
                f"{dataset.name}: the dataset has no masks; use VOCGen.unlabeled() for its images"
            )
        return dataset

    def _subset(self, ids: Sequence[str] | None) -> SegDataset:
        dataset = self.dataset if ids is None else self.dataset.subset(ids)
        if not len(dataset):
            raise DatasetError(f"{self.dataset.name}: the list of ids to read is empty")
        return dataset

    def _stream(
        self, dataset: SegDataset, stream: int, start_step: int, keys: tuple[str, ...]
    ) -> tf.data.Dataset:
        """Infinite augmented batches of ``keys`` ("image" and/or "label") from ``start_step`` on."""
        size = len(dataset)
        files = _file_table(dataset, keys)
        order_key, augment_key = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.constant([self.seed, int(stream)], tf.int64), 2, alg=_RNG
            )
        )

        def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
            """(global element index, item index) for every element of one epoch."""
            permutation = _stateless_permutation(
                size, tf.random.experimental.stateless_fold_in(order_key, epoch, alg=_RNG)
            )
            return tf.data.Dataset.from_tensor_slices(
                (epoch * size + tf.range(size, dtype=tf.int64), permutation)
            )

        def load_augmented(element_index: tf.Tensor, item: tf.Tensor) -> dict[str, tf.Tensor]:
            example = self._decode({key: files[key][item] for key in files}, dataset)
            seed = tf.random.experimental.stateless_fold_in(augment_key, element_index, alg=_RNG)
            return self._augment(
                example, tf.random.stateless_uniform([4], seed, alg=_RNG), dataset.ignore_label
            )

        first_element = start_step * self.batch_size
        order = (
            tf.data.Dataset.counter(first_element // size).flat_map(epoch_order).skip(first_element % size)
        )
        examples = order.map(load_augmented, num_parallel_calls=tf.data.AUTOTUNE)
        batches = examples.batch(self.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return batches.with_options(_pipeline_options())

    def _decode(self, files: dict[str, tf.Tensor], dataset: SegDataset) -> dict[str, tf.Tensor]:
        """Read the image (uint8 [H, W, 3]) and/or mask (uint8 [H, W]) named in ``files``."""
        example = {}
        if "image" in files:
            example["image"] = _decode_image(files["image"])
        if "label" in files:
            # Through PIL: TensorFlow's PNG decoder would turn a palette mask's indices into colours.
            label = tf.numpy_function(
                lambda path: load_mask(path, dataset.label_remap), [files["label"]], tf.uint8
            )
            example["label"] = tf.ensure_shape(label, [None, None])
        if len(example) == 2:
            image_size, label_size = tf.shape(example["image"])[:2], tf.shape(example["label"])
            tf.debugging.Assert(
                tf.reduce_all(image_size == label_size),
                ["image and mask sizes differ:", files["image"], image_size, files["label"], label_size],
            )
        return example

    def _augment(
        self, example: dict[str, tf.Tensor], uniform: tf.Tensor, ignore_label: int
    ) -> dict[str, tf.Tensor]:
        """Randomly scale, pad, crop and flip the image and/or label of ``example`` identically.

        ``uniform`` holds four numbers in [0, 1): scale, crop row, crop column and flip. The crop
        window lies in the scaled image padded at the bottom and right to at least the crop size.
        Only the window is padded, and the label only resized inside it: the same pixels as
        resizing, padding and cropping whole, for less work.
        """
        crop = tf.constant(self.crop_size)
        low, high = self.scale_range
        scale = low + uniform[0] * (high - low)
        source_size = tf.shape(next(iter(example.values())))[:2]
        scaled = tf.maximum(tf.cast(tf.round(tf.cast(source_size, tf.float32) * scale), tf.int32), 1)
        offset = tf.cast(uniform[1:3] * tf.cast(tf.maximum(scaled - crop, 0) + 1, tf.float32), tf.int32)
        covered = tf.minimum(scaled, crop)  # the part of the crop window that lies on the image
        flip = tf.logical_and(self.random_flip, uniform[3] < 0.5)

        def pad_and_flip(layers: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
            layers = tf.ensure_shape(
                _pad_bottom_right(layers, crop, fill), [*self.crop_size, layers.shape[-1]]
            )
            return tf.cond(flip, lambda: tf.reverse(layers, axis=[1]), lambda: layers)

        augmented = {}
        if "image" in example:
            image = tf.image.resize(example["image"], scaled, method="bilinear")
            image = tf.slice(image, [offset[0], offset[1], 0], [covered[0], covered[1], 3])
            augmented["image"] = pad_and_flip(image, tf.constant(self.image_fill))
        if "label" in example:
            label = _resize_nearest_window(example["label"], scaled, offset, covered)
            label = pad_and_flip(label[..., None], tf.constant(ignore_label, tf.uint8))
            augmented["label"] = tf.cast(label[..., 0], tf.int32)
        return augmented

    def _finish_padded_batch(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Fill the image padding of an evaluation batch and convert labels to int32."""
        image = tf.where(
            batch["valid"][..., None], tf.cast(batch["image"], tf.float32), tf.constant(self.image_fill)
        )
        return {"image": image, "label": tf.cast(batch["label"], tf.int32)}


def _pipeline_options() -> tf.data.Options:
    """Parallelism across elements (parallel map), not inside each op: multi-threaded ops in an
    input pipeline only compete with each other and with the model for the cores."""
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return options


def _image_fill(pad_image_value: str | float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(pad_image_value, str):
        if pad_image_value != "mean":
            raise ValueError(
                f"pad_image_value must be 'mean', a number or an RGB triple, got {pad_image_value!r}"
            )
        return IMAGENET_MEAN_RGB
    if isinstance(pad_image_value, (int, float)):
        return (float(pad_image_value),) * 3
    if len(pad_image_value) != 3:
        raise ValueError(
            f"pad_image_value must be 'mean', a number or an RGB triple, got {pad_image_value!r}"
        )
    return tuple(float(value) for value in pad_image_value)


#: The first bytes of the formats TensorFlow decodes to exactly the pixels of ``load_img``.
_TF_DECODED_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _decode_image(path: tf.Tensor) -> tf.Tensor:
    """The image at ``path`` as uint8 RGB [H, W, 3], the pixels :func:`load_img` gives.

    JPEG, PNG, GIF and BMP (recognised by their first bytes, whatever the file's suffix) go
    through TensorFlow's decoders, JPEG with the accurate integer IDCT that PIL uses too (the
    default fast one differs by a few levels); both drop alpha and keep a 16-bit value's high
    byte. Any other format PIL reads (TIFF, WebP, ...) goes through ``load_img`` itself.
    """
    contents = tf.io.read_file(path)
    head = tf.strings.substr(contents, 0, 4)
    native = tf.reduce_any(
        [tf.strings.substr(head, 0, len(sig)) == sig for sig in _TF_DECODED_SIGNATURES]
    )

    def with_tensorflow() -> tf.Tensor:
        return tf.cond(
            tf.io.is_jpeg(contents),
            lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
        )

    def with_pil() -> tf.Tensor:
        return tf.numpy_function(lambda file: load_img(os.fsdecode(file)), [path], tf.uint8)

    return tf.ensure_shape(tf.cond(native, with_tensorflow, with_pil), [None, None, 3])


def _file_table(dataset: SegDataset, keys: tuple[str, ...]) -> dict[str, tf.Tensor]:
    """The dataset's image and/or mask paths as string tensors, indexed by item."""
    paths = {"image": dataset.image_paths, "label": dataset.mask_paths}
    return {key: tf.constant([str(path) for path in paths[key]]) for key in keys}


def _stateless_permutation(size: int, seed: tf.Tensor) -> tf.Tensor:
    """A permutation of 0..size-1 that depends only on ``seed`` (sorting random 64-bit keys)."""
    keys = tf.random.stateless_uniform([size], seed, minval=None, maxval=None, dtype=tf.int64, alg=_RNG)
    return tf.argsort(keys, stable=True)


def _resize_nearest_window(
    label: tf.Tensor, scaled_size: tf.Tensor, start: tf.Tensor, size: tf.Tensor
) -> tf.Tensor:
    """The window [start, start + size) of ``label`` [H, W] resized to ``scaled_size`` by nearest neighbour.

    The pixels of ``tf.image.resize(..., method="nearest")`` (half-pixel centres, as the image's
    bilinear resize), computing only the window.
    """
    source_size = tf.shape(label)

    def source_indices(axis: int) -> tf.Tensor:
        centres = tf.cast(start[axis] + tf.range(size[axis]), tf.float32) + 0.5
        ratio = tf.cast(source_size[axis], tf.float32) / tf.cast(scaled_size[axis], tf.float32)
        return tf.minimum(tf.cast(centres * ratio, tf.int32), source_size[axis] - 1)

    return tf.gather(tf.gather(label, source_indices(0), axis=0), source_indices(1), axis=1)


def _pad_bottom_right(layers: tf.Tensor, size: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
    """Pad [h, w, C] at the bottom and right to ``size`` (height, width), channel c with fill[c].

    Concatenating constant blocks is exact and much cheaper than padding and then selecting.
    """
    height, width, channels = tf.unstack(tf.shape(layers))
    right = tf.broadcast_to(fill, [height, size[1] - width, channels])
    bottom = tf.broadcast_to(fill, [size[0] - height, size[1], channels])
    return tf.concat([tf.concat([layers, right], axis=1), bottom], axis=0)
