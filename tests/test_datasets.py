"""Tests for advseg_utils.datasets: dataset layouts, presets, the bundled sample, validation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_utils import datasets
from advseg_utils.datasets import (
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    camvid_dataset,
    check_files_exist,
    cityscapes_dataset,
    folder_dataset,
    sample_dataset,
    validate_dataset,
    voc_dataset,
    voc_palette,
)
from advseg_utils.file_utils import DatasetError, load_img, load_mask

REPO = Path(__file__).resolve().parents[1]
CAMVID_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def write_example(image_path, mask_path, size=(6, 8), mask=None):
    """A random JPEG and a palette-PNG mask (zeros unless given) of ``size`` (height, width)."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_path)
    mask_png = Image.fromarray(np.zeros(size, np.uint8) if mask is None else mask)
    mask_png.putpalette(voc_palette().flatten().tolist())
    mask_png.save(mask_path)


def make_voc(root, names=("2007_000032", "2007_000039"), split="train"):
    for name in names:
        write_example(root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_voc_palette_matches_the_standard_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(
        palette[[0, 1, 15, 20, 255]], [[0, 0, 0], [128, 0, 0], [192, 128, 128], [0, 64, 128], [224, 224, 192]]
    )


def test_voc_dataset_reads_the_list_and_layout(tmp_path):
    dataset = voc_dataset(make_voc(tmp_path), "train")
    assert dataset.ids == ("2007_000032", "2007_000039")
    assert dataset.image_paths[1] == tmp_path / "JPEGImages" / "2007_000039.jpg"
    assert dataset.mask_paths[1] == tmp_path / "SegmentationClass" / "2007_000039.png"
    assert dataset.num_classes == 21 and dataset.class_names == VOC_CLASSES
    assert dataset.palette.shape == (21, 3)
    assert dataset.subset(["2007_000039"]).ids == ("2007_000039",)


def test_voc_train_aug_reads_segmentation_class_aug(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "SegmentationClassAug").mkdir()
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2008_000002\n")
    dataset = voc_dataset(tmp_path, "train_aug")
    assert dataset.mask_paths == (tmp_path / "SegmentationClassAug" / "2008_000002.png",)


def test_missing_voc_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DatasetError, match=r"VOC 2012 not found.*download_voc"):
        voc_dataset(tmp_path / "VOCdevkit" / "VOC2012")


def test_missing_train_aug_says_how_to_build_it(tmp_path):
    with pytest.raises(DatasetError, match=r"train_aug\.txt not found.*prepare_voc_aug"):
        voc_dataset(make_voc(tmp_path), "train_aug")


def test_empty_list_file_is_an_error(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    with pytest.raises(DatasetError, match=r"val\.txt: the list file is empty"):
        voc_dataset(tmp_path, "val")


def test_folder_dataset_finds_ids_by_suffix_in_nested_folders(tmp_path):
    write_example(tmp_path / "img" / "a" / "x.jpg", tmp_path / "gt" / "a" / "x_mask.png")
    write_example(tmp_path / "img" / "b.jpg", tmp_path / "gt" / "b_mask.png")
    dataset = folder_dataset(
        tmp_path, num_classes=3, images_dir="img", masks_dir="gt", mask_suffix="_mask.png"
    )
    assert dataset.ids == ("a/x", "b")
    assert dataset.image_paths[0] == tmp_path / "img" / "a" / "x.jpg"
    assert dataset.class_names == ("class 0", "class 1", "class 2")


def test_folder_dataset_glob_picks_some_ids(tmp_path):
    for name in ("seq1/f1", "seq1/f2", "seq2/f1", "top"):
        write_example(tmp_path / "images" / f"{name}.jpg", tmp_path / "masks" / f"{name}.png")
    pick = lambda glob: folder_dataset(tmp_path, num_classes=2, glob=glob).ids  # noqa: E731
    assert pick(None) == ("seq1/f1", "seq1/f2", "seq2/f1", "top")
    assert pick("seq1/*") == ("seq1/f1", "seq1/f2")
    assert pick("*/f1") == ("seq1/f1", "seq2/f1")
    assert pick("*") == ("top",)  # no sub-folders without **
    dataset = folder_dataset(tmp_path, num_classes=2, masks_dir=None, glob="seq2/*")
    assert dataset.image_paths == (tmp_path / "images" / "seq2" / "f1.jpg",) and not dataset.labeled
    with pytest.raises(DatasetError, match=r"masks: no files matching 'seq3/\*\.png'"):
        pick("seq3/*")
    with pytest.raises(ValueError, match="list_file .* or glob .*, not both"):
        folder_dataset(tmp_path, num_classes=2, list_file="list.txt", glob="*")


def test_folder_dataset_without_masks_is_unlabeled(tmp_path):
    write_example(tmp_path / "images" / "u.jpg", tmp_path / "unused.png")
    dataset = folder_dataset(tmp_path, num_classes=3, masks_dir=None)
    assert dataset.ids == ("u",) and not dataset.labeled and dataset.mask_paths is None


def test_folder_dataset_reads_a_two_column_list(tmp_path):
    write_example(tmp_path / "JPEGImages" / "a.jpg", tmp_path / "SegmentationClassAug" / "a.png")
    (tmp_path / "list.txt").write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n")
    dataset = folder_dataset(tmp_path, num_classes=21, list_file="list.txt")
    assert dataset.ids == ("a",)
    assert dataset.mask_paths == (tmp_path / "SegmentationClassAug" / "a.png",)


def test_folder_dataset_with_no_matching_files_is_an_error(tmp_path):
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=r"masks: no files ending in '\.png'"):
        folder_dataset(tmp_path, num_classes=2)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    label_ids = np.array([[7, 26, 0], [33, 1, 24]], dtype=np.uint8)
    stem = "aachen_000000_000019"
    image_path = tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png"
    mask_path = tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png"
    for path in (image_path, mask_path):
        path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(image_path)
    Image.fromarray(label_ids).save(mask_path)
    dataset = cityscapes_dataset(tmp_path, "val")
    assert dataset.ids == (f"aachen/{stem}",) and dataset.num_classes == len(CITYSCAPES_CLASSES) == 19
    # road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, bicycle 33 -> 18, ego vehicle 1 -> 255, person 24 -> 11
    np.testing.assert_array_equal(
        load_mask(dataset.mask_paths[0], dataset.label_remap), [[0, 13, 255], [18, 255, 11]]
    )
    validate_dataset(dataset)


def test_missing_cityscapes_and_camvid_roots_name_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"Cityscapes train split not found.*gtFine"):
        cityscapes_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"CamVid val split not found.*labels/val"):
        camvid_dataset(tmp_path, "val")


def test_sample_dataset_is_bundled_in_voc_layout():
    train, val = sample_dataset("train"), sample_dataset("val")
    assert (len(train), len(val)) == (24, 8) and not set(train.ids) & set(val.ids)
    assert train.num_classes == 21
    validate_dataset(train)
    validate_dataset(val)
    assert Image.open(train.mask_paths[0]).mode == "P"
    classes = set(np.unique(np.concatenate([load_mask(path).ravel() for path in train.mask_paths])).tolist())
    assert classes == {0, 1, 7, 8, 15, 255}  # background, four object classes, borders
    total_bytes = sum(path.stat().st_size for path in datasets.SAMPLE_ROOT.rglob("*") if path.is_file())
    assert total_bytes < 2_000_000


def test_make_sample_regenerates_the_bundled_data(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "data" / "make_sample.py")
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    make_sample.write_sample(tmp_path)
    regenerated, bundled = voc_dataset(tmp_path, "val"), sample_dataset("val")
    assert regenerated.ids == bundled.ids
    for i in (0, len(bundled) - 1):
        np.testing.assert_array_equal(load_mask(regenerated.mask_paths[i]), load_mask(bundled.mask_paths[i]))
        image_difference = load_img(regenerated.image_paths[i]).astype(int) - load_img(bundled.image_paths[i])
        assert np.abs(image_difference).mean() < 1.0  # JPEG encoders may differ slightly


def test_missing_sample_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "SAMPLE_ROOT", tmp_path / "absent")
    with pytest.raises(DatasetError, match=r"bundled sample dataset not found.*make_sample\.py"):
        sample_dataset("train")


def test_check_files_exist_names_the_missing_file(tmp_path):
    dataset = voc_dataset(make_voc(tmp_path))
    (tmp_path / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(DatasetError, match=r"1 listed files missing:\s+\S*2007_000039\.png"):
        check_files_exist(dataset)


def test_subset_with_unknown_ids_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="nope"):
        voc_dataset(make_voc(tmp_path)).subset(["nope"])


def test_validate_dataset_reports_every_problem_at_once(tmp_path):
    names = ["ok", "missing_image", "wrong_size", "bad_values", "truncated"]
    make_voc(tmp_path, names)
    (tmp_path / "JPEGImages" / "missing_image.jpg").unlink()
    images, masks = tmp_path / "JPEGImages", tmp_path / "SegmentationClass"
    write_example(images / "wrong_size.jpg", tmp_path / "unused.png", size=(7, 8))
    bad_values = np.tile(np.array([0, 21, 40, 255], np.uint8).repeat(2), (6, 1))
    write_example(images / "bad_values.jpg", masks / "bad_values.png", mask=bad_values)
    truncated = images / "truncated.jpg"
    write_example(truncated, masks / "truncated.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:-1000])  # the header survives, the pixel data does not

    with pytest.raises(DatasetError) as raised:
        validate_dataset(voc_dataset(tmp_path))
    message = str(raised.value)
    assert "4 problems" in message
    assert "missing_image.jpg: file not found" in message
    assert "wrong_size.png: mask is 6x8 (HxW) but its image wrong_size.jpg is 7x8" in message
    assert "bad_values.png: label values [21, 40]; expected 0..20 or the ignore label 255" in message
    assert "truncated.jpg: cannot decode the image" in message
    # Without decoding, only the header checks run.
    with pytest.raises(DatasetError, match="2 problems"):
        validate_dataset(voc_dataset(tmp_path), decode=False)


@pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason="the shared CamVid copy is not present")
def test_camvid_dataset_loads_the_real_data():
    train, val = camvid_dataset(CAMVID_ROOT, "train"), camvid_dataset(CAMVID_ROOT, "val")
    assert (len(train), len(val)) == (367, 101) and train.num_classes == 11
    check_files_exist(train)
    mask = load_mask(train.mask_paths[0], train.label_remap)
    assert mask.shape == (360, 480) and load_img(train.image_paths[0]).shape == (360, 480, 3)
    assert 11 not in mask and set(np.unique(mask)) <= set(range(11)) | {255}
    assert 255 in mask  # the void pixels of this frame were remapped
    validate_dataset(val, max_decoded=3)
