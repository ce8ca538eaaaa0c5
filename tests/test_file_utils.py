"""Tests for advseg_utils.file_utils: image and mask decoding, list files, splits."""

import random

import numpy as np
import pytest
import scipy.io
from PIL import Image

from advseg_utils.file_utils import (
    DatasetError,
    get_or_create_split,
    load_img,
    load_mask,
    load_split,
    make_split,
    read_list,
    read_pair_list,
    save_split,
)

MASK = np.array([[0, 1, 1, 255], [15, 15, 20, 255]], dtype=np.uint8)


def save_palette_png(path, mask):
    image = Image.fromarray(mask)
    image.putpalette([200, 100, 50] * 256)  # every index has the same colour: only indices tell classes apart
    image.save(path)
    return path


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
    path = save_palette_png(tmp_path / "mask.png", MASK)
    assert Image.open(path).mode == "P"
    mask = load_mask(path)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, MASK)


def test_index_png_is_read_as_is(tmp_path):
    Image.fromarray(MASK).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png"), MASK)


def test_sbd_mat_is_read_from_gtcls_segmentation(tmp_path):
    segmentation = np.array([[0, 3, 3], [0, 0, 12]], dtype=np.uint8)
    gtcls = {
        "Segmentation": segmentation,
        "Boundaries": np.zeros((1, 1)),
        "CategoriesPresent": np.array([3, 12]),
    }
    scipy.io.savemat(tmp_path / "2008_000002.mat", {"GTcls": gtcls})
    np.testing.assert_array_equal(load_mask(tmp_path / "2008_000002.mat"), segmentation)


def test_mat_without_gtcls_names_the_file(tmp_path):
    scipy.io.savemat(tmp_path / "other.mat", {"GTinst": {"Segmentation": np.zeros((2, 2))}})
    with pytest.raises(DatasetError, match=r"other\.mat.*GTcls"):
        load_mask(tmp_path / "other.mat")


def test_label_remap_changes_only_listed_values(tmp_path):
    Image.fromarray(np.array([[0, 11, 5], [11, 10, 3]], dtype=np.uint8)).save(tmp_path / "camvid.png")
    mask = load_mask(tmp_path / "camvid.png", label_remap={11: 255, 3: 4})
    np.testing.assert_array_equal(mask, [[0, 255, 5], [255, 10, 4]])


def test_rgb_mask_is_rejected_with_a_clear_message(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DatasetError, match=r"colour\.png.*RGB.*palette PNG or a single-channel index PNG"):
        load_mask(tmp_path / "colour.png")


def test_truncated_mask_and_jpeg_name_the_file(tmp_path):
    save_palette_png(
        tmp_path / "mask.png", np.random.default_rng(0).integers(0, 21, (64, 64), dtype=np.uint8)
    )
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "img.jpg"
    )
    for name in ("mask.png", "img.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut_mask\.png.*corrupt or truncated"):
        load_mask(tmp_path / "cut_mask.png")
    with pytest.raises(DatasetError, match=r"cut_img\.jpg.*corrupt or truncated"):
        load_img(tmp_path / "cut_img.jpg")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"absent\.jpg: file not found"):
        load_img(tmp_path / "absent.jpg")


@pytest.mark.parametrize(
    ("mode", "pixel", "expected_rgb"),
    [
        ("L", 77, (77, 77, 77)),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_load_img_converts_to_rgb(tmp_path, mode, pixel, expected_rgb):
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    Image.new(mode, (3, 2), pixel).save(path, quality=100)
    image = load_img(path)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[0, 0], expected_rgb, atol=2)


def test_load_img_expands_a_palette_image_to_its_colours(tmp_path):
    save_palette_png(tmp_path / "palette.png", MASK)
    np.testing.assert_array_equal(load_img(tmp_path / "palette.png")[0, 0], [200, 100, 50])


def test_read_list_skips_blank_lines(tmp_path):
    (tmp_path / "train.txt").write_text("2007_000032\n\n 2007_000039 \n")
    assert read_list(tmp_path / "train.txt") == ["2007_000032", "2007_000039"]


def test_empty_list_file_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"empty\.txt: the list file is empty"):
        read_list(tmp_path / "empty.txt")


def test_read_pair_list(tmp_path):
    (tmp_path / "pairs.txt").write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\nb.jpg b.png\n")
    assert read_pair_list(tmp_path / "pairs.txt") == [
        ("/JPEGImages/a.jpg", "/SegmentationClassAug/a.png"),
        ("b.jpg", "b.png"),
    ]
    (tmp_path / "bad.txt").write_text("a.jpg a.png\nb.jpg\n")
    with pytest.raises(DatasetError, match=r"bad\.txt, line 2"):
        read_pair_list(tmp_path / "bad.txt")


NAMES = [f"2007_{i:06d}" for i in range(100)]


def test_split_is_a_pure_function_of_names_fraction_and_seed():
    labeled, unlabeled = make_split(NAMES, 0.125, seed=3)
    shuffled = random.Random(0).sample(NAMES, len(NAMES))
    assert make_split(shuffled, 0.125, seed=3) == (labeled, unlabeled)
    assert len(labeled) == 12 and len(unlabeled) == 88
    assert sorted(labeled + unlabeled) == NAMES
    assert make_split(NAMES, 0.125, seed=4)[0] != labeled
    assert labeled != NAMES[:12]  # drawn at random, not the head of the list


def test_smaller_fraction_is_nested_in_larger_one():
    quarter, _ = make_split(NAMES, 0.25, seed=0)
    eighth, _ = make_split(NAMES, 0.125, seed=0)
    assert set(eighth) < set(quarter)


def test_split_round_trips_through_its_file(tmp_path):
    labeled, unlabeled = make_split(NAMES, 0.5, seed=1)
    save_split(tmp_path / "split.txt", labeled, unlabeled, fraction=0.5, seed=1)
    assert load_split(tmp_path / "split.txt") == (labeled, unlabeled)
    assert "# fraction: 0.5" in (tmp_path / "split.txt").read_text()


def test_get_or_create_split_reuses_the_existing_file(tmp_path):
    path = tmp_path / "splits" / "split_0.125_seed0.txt"
    created = get_or_create_split(path, NAMES, 0.125, seed=0)
    assert path.exists() and load_split(path) == created
    # A split file made elsewhere (other names drawn) is reused as is, not redrawn.
    other_labeled = NAMES[:12]
    save_split(path, other_labeled, NAMES[12:], fraction=0.125, seed=0)
    assert get_or_create_split(path, reversed(NAMES), 0.125, seed=0) == (other_labeled, NAMES[12:])


def test_get_or_create_split_rejects_a_mismatching_file(tmp_path):
    path = tmp_path / "split.txt"
    get_or_create_split(path, NAMES, 0.125, seed=0)
    with pytest.raises(DatasetError, match=r"split\.txt.*seed=0, not seed=1"):
        get_or_create_split(path, NAMES, 0.125, seed=1)
    with pytest.raises(DatasetError, match="names differ"):
        get_or_create_split(path, NAMES[:50], 0.125, seed=0)


def test_split_rejects_bad_input():
    with pytest.raises(DatasetError, match="duplicate"):
        make_split(["a", "b", "a"], 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        make_split(NAMES, 0.0, seed=0)
