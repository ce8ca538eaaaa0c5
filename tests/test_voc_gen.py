"""Tests for advseg_utils.voc_gen.VOCGen: augmentation alignment, padding, reproducibility, resume."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advseg_utils.datasets import folder_dataset, sample_dataset
from advseg_utils.file_utils import DatasetError
from advseg_utils.method import Adversarial, SemiSupervised
from advseg_utils.voc_gen import IMAGENET_MEAN_RGB, VOCGen

NUM_CLASSES = 5
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)
BLOCK_SIZES = [(40, 56), (56, 40), (48, 48), (30, 70)]  # (height, width)


def write_dataset(root, examples, num_classes=NUM_CLASSES):
    """A folder dataset of lossless PNG images and palette-PNG masks from (image, mask) arrays."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (image, mask) in enumerate(examples):
        Image.fromarray(image).save(root / "images" / f"item{i}.png")
        mask_png = Image.fromarray(mask)
        mask_png.putpalette([0, 0, 0] * 256)
        mask_png.save(root / "masks" / f"item{i}.png")
    return folder_dataset(root, num_classes=num_classes, image_suffix=".png")


@pytest.fixture
def blocks(tmp_path):
    """Images that are their label drawn in COLOURS: any misalignment of image and label shows."""
    examples = []
    for height, width in BLOCK_SIZES:
        rows, cols = np.mgrid[:height, :width]
        label = ((rows // 6 + 2 * (cols // 6)) % NUM_CLASSES).astype(np.uint8)
        examples.append((COLOURS[label], label))
    return write_dataset(tmp_path / "blocks", examples)


@pytest.fixture
def items(tmp_path):
    """Five uniform 16x16 images; item i has grey level 40 * i and label i everywhere."""
    examples = [(np.full((16, 16, 3), 40 * i, np.uint8), np.full((16, 16), i, np.uint8)) for i in range(5)]
    return write_dataset(tmp_path / "items", examples)


def take(dataset, count):
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset.take(count)]


def item_of(images):
    """The item index of each image of an ``items`` batch (from its grey level)."""
    return (images[:, 0, 0, 0] / 40).round().astype(int).tolist()


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_training_batches_have_static_shapes_and_contract_dtypes(blocks):
    spec = VOCGen(blocks, crop_size=(32, 24), batch_size=3).train().element_spec
    assert spec["image"].shape == (3, 32, 24, 3) and spec["image"].dtype == tf.float32
    assert spec["label"].shape == (3, 32, 24) and spec["label"].dtype == tf.int32


def test_crop_flip_and_padding_keep_image_and_label_aligned(blocks):
    gen = VOCGen(blocks, crop_size=(48, 48), batch_size=4, scale_range=(1.0, 1.0), seed=5)
    batches = take(gen.train(), 6)
    images = np.concatenate([batch["image"] for batch in batches])
    labels = np.concatenate([batch["label"] for batch in batches])
    labeled = labels != 255
    np.testing.assert_array_equal(images[labeled], COLOURS[labels[labeled]])
    # Pixels added by padding: label 255, image the ImageNet mean.
    assert (~labeled).any()
    np.testing.assert_array_equal(
        images[~labeled], np.broadcast_to(np.float32(IMAGENET_MEAN_RGB), images[~labeled].shape)
    )


def test_flip_mirrors_image_and_label_together(blocks):
    whole_48x48 = blocks.subset(["item2"])  # the 48x48 item: a 48x48 crop at scale 1 is the whole image
    batch = take(VOCGen(whole_48x48, crop_size=(48, 48), batch_size=16, scale_range=(1.0, 1.0)).train(), 1)[0]
    original = np.asarray(Image.open(whole_48x48.image_paths[0]), np.float32)
    flipped = [np.array_equal(image, original[:, ::-1]) for image in batch["image"]]
    assert all(flipped[i] or np.array_equal(image, original) for i, image in enumerate(batch["image"]))
    assert 0 < sum(flipped) < 16  # both outcomes occur
    np.testing.assert_array_equal(batch["image"], COLOURS[batch["label"]])


def test_random_scale_keeps_labels_aligned_and_valid(blocks):
    gen = VOCGen(blocks, crop_size=(40, 40), batch_size=4, seed=1)
    batches = take(gen.train(), 5)
    images = np.concatenate([batch["image"] for batch in batches])
    labels = np.concatenate([batch["label"] for batch in batches])
    assert set(np.unique(labels)) <= set(range(NUM_CLASSES)) | {255}
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255
    # Where the 3x3 neighbourhood has a single class, bilinear interpolation of the image gives
    # exactly that class's colour, and nearest-neighbour resizing of the label must agree.
    windows = np.lib.stride_tricks.sliding_window_view(labels, (3, 3), axis=(1, 2))
    uniform = (windows.min(axis=(-1, -2)) == windows.max(axis=(-1, -2))) & (labels[:, 1:-1, 1:-1] != 255)
    centre_labels, centre_images = labels[:, 1:-1, 1:-1][uniform], images[:, 1:-1, 1:-1][uniform]
    assert uniform.sum() > 1000
    np.testing.assert_allclose(centre_images, COLOURS[centre_labels], atol=1e-3)


def test_zero_image_padding(blocks):
    item_30x70 = blocks.subset(["item3"])
    gen = VOCGen(item_30x70, crop_size=(48, 48), batch_size=2, scale_range=(1.0, 1.0), pad_image_value=0)
    batch = take(gen.train(), 1)[0]
    padded = batch["label"] == 255
    assert padded[:, 30:, :].all() and (batch["image"][padded] == 0).all()


def test_sample_data_labels_stay_within_the_classes():
    gen = VOCGen(sample_dataset("train"), crop_size=(64, 64), batch_size=4)
    labels = np.concatenate([batch["label"] for batch in take(gen.train(), 3)])
    assert set(np.unique(labels)) <= set(range(21)) | {255}
    assert {1, 7, 8, 15} & set(np.unique(labels))


def test_same_seed_same_stream_different_seed_different(blocks):
    first = take(VOCGen(blocks, crop_size=(24, 24), batch_size=2, seed=7).train(), 3)
    assert_same_batches(first, take(VOCGen(blocks, crop_size=(24, 24), batch_size=2, seed=7).train(), 3))
    other = take(VOCGen(blocks, crop_size=(24, 24), batch_size=2, seed=8).train(), 3)
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))


def test_resumed_stream_equals_the_uninterrupted_one(blocks):
    gen = VOCGen(blocks, crop_size=(24, 24), batch_size=3, seed=2)
    uninterrupted = take(gen.train(), 6)
    # Step 3 starts at element 9, in the third epoch of the four images.
    assert_same_batches(take(gen.train(start_step=3), 3), uninterrupted[3:])


def test_resumed_semi_supervised_stream_equals_the_uninterrupted_one(blocks):
    gen = VOCGen(blocks, crop_size=(24, 24), batch_size=2, seed=2)
    batches = SemiSupervised.training_batches(gen, ["item0", "item1", "item2"], ["item3"])
    assert_same_batches(take(batches(2), 2), take(batches(0), 4)[2:])


def test_each_epoch_visits_every_image_once_in_a_new_order(items):
    gen = VOCGen(items, crop_size=(16, 16), batch_size=5, scale_range=(1.0, 1.0))
    orders = [item_of(batch["image"]) for batch in take(gen.train(), 4)]
    assert all(sorted(order) == [0, 1, 2, 3, 4] for order in orders)
    assert len({tuple(order) for order in orders}) > 1


def test_adversarial_d_label_is_an_independent_labeled_batch(items):
    gen = VOCGen(items, crop_size=(16, 16), batch_size=5, scale_range=(1.0, 1.0))
    batches = take(Adversarial.training_batches(gen, None)(0), 3)
    assert all(batch.keys() == {"image", "label", "d_label"} for batch in batches)
    for batch in batches:
        assert item_of(batch["image"]) == batch["label"][:, 0, 0].tolist()
        assert sorted(batch["d_label"][:, 0, 0].tolist()) == [0, 1, 2, 3, 4]
    assert any(batch["d_label"][:, 0, 0].tolist() != batch["label"][:, 0, 0].tolist() for batch in batches)


def test_semi_supervised_draws_each_stream_from_its_own_ids(items):
    gen = VOCGen(items, crop_size=(16, 16), batch_size=4, scale_range=(1.0, 1.0))
    for batch in take(SemiSupervised.training_batches(gen, ["item0", "item1", "item2"], ["item3", "item4"])(0), 3):
        assert batch.keys() == {"image", "label", "unlabeled_image", "d_label"}
        assert set(item_of(batch["image"])) <= {0, 1, 2}
        assert set(item_of(batch["unlabeled_image"])) <= {3, 4}
        assert set(np.unique(batch["d_label"])) <= {0, 1, 2}


def test_semi_supervised_can_add_the_unlabeled_crops_true_labels_without_changing_the_crops(blocks):
    gen = VOCGen(blocks, crop_size=(24, 24), batch_size=2, scale_range=(1.0, 1.0), seed=3)
    plain = take(SemiSupervised.training_batches(gen, ["item0", "item1"], ["item2", "item3"])(0), 3)
    unlabeled = blocks.subset(["item2", "item3"])  # a dataset whose images all have masks: labels come along
    with_labels = take(SemiSupervised.training_batches(gen, ["item0", "item1"], unlabeled)(0), 3)
    for without, batch in zip(plain, with_labels):
        assert batch.keys() == without.keys() | {"unlabeled_label"}
        for key in without:
            np.testing.assert_array_equal(batch[key], without[key])  # the same crops, label or not
        labeled = batch["unlabeled_label"] != 255  # not padding
        assert labeled.any()
        np.testing.assert_array_equal(batch["unlabeled_image"][labeled], COLOURS[batch["unlabeled_label"][labeled]])


def test_unlabeled_stream_yields_images_only(items):
    batch = take(VOCGen(items, crop_size=(8, 8), batch_size=2).unlabeled(images=["item4"]), 1)[0]
    assert batch.keys() == {"image"} and batch["image"].shape == (2, 8, 8, 3)


def test_evaluation_yields_whole_unaugmented_images_once(blocks):
    batches = take(VOCGen(blocks, scale_range=(0.5, 1.5)).evaluation(), 100)
    assert [batch["image"].shape[1:3] for batch in batches] == BLOCK_SIZES
    for batch in batches:
        np.testing.assert_array_equal(batch["image"], COLOURS[batch["label"]])


def test_padded_evaluation_batches_label_the_padding_255(blocks):
    first = take(VOCGen(blocks).evaluation(batch_size=2), 1)[0]
    assert first["image"].shape == (2, 56, 56, 3) and first["label"].dtype == np.int32
    padding = np.zeros((2, 56, 56), bool)
    padding[0, 40:, :] = padding[0, :, 56:] = True  # item0 is 40x56
    padding[1, :, 40:] = True  # item1 is 56x40
    np.testing.assert_array_equal(first["label"] == 255, padding)
    np.testing.assert_array_equal(
        first["image"][padding], np.broadcast_to(np.float32(IMAGENET_MEAN_RGB), (padding.sum(), 3))
    )


def test_missing_file_is_named_at_construction(blocks):
    blocks.mask_paths[1].unlink()
    with pytest.raises(DatasetError, match=r"item1\.png"):
        VOCGen(blocks)


def test_empty_or_unlabeled_input_is_an_error_before_training(blocks):
    with pytest.raises(DatasetError, match="empty"):
        VOCGen(blocks).train(ids=[])
    unlabeled = folder_dataset(
        blocks.image_paths[0].parents[1], num_classes=NUM_CLASSES, masks_dir=None, image_suffix=".png"
    )
    with pytest.raises(DatasetError, match="no masks"):
        VOCGen(unlabeled).train()


def test_bad_mask_inside_the_pipeline_names_the_file(blocks):
    Image.fromarray(np.zeros((56, 40, 3), np.uint8)).save(blocks.mask_paths[1])  # an RGB mask
    with pytest.raises(tf.errors.OpError, match=r"item1\.png.*palette PNG"):
        take(VOCGen(blocks.subset(["item1"]), crop_size=(8, 8), batch_size=1).train(), 1)


def test_image_and_mask_size_mismatch_inside_the_pipeline_names_the_file(blocks):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(blocks.mask_paths[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"sizes differ.*item0\.png"):
        take(VOCGen(blocks.subset(["item0"]), crop_size=(8, 8), batch_size=1).train(), 1)
