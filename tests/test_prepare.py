"""advseg_utils.prepare on a tiny fake VOC 2012 + SBD tree built by each test."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from advseg_utils import prepare
from advseg_utils.file_utils import DatasetError
from advseg_utils.prepare import prepare_voc_aug

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2008_000004"]
SBD_TRAIN = ["2007_000032", "2008_000005", "2007_000033"]  # one VOC train, one VOC val id
SBD_VAL = ["2008_000006", "2008_000004"]  # one VOC val id
EXPECTED_IDS = ["2007_000032", "2007_000039", "2008_000005", "2008_000006"]


def mask_for(image_id: str, offset: int) -> np.ndarray:
    """A distinct 5x7 mask per id and source (offset 0: VOC, 1: SBD), with a 255 border."""
    seed = int(image_id.replace("_", "")) + offset
    mask = np.random.default_rng(seed).integers(0, 21, size=(5, 7), dtype=np.uint8)
    mask[0, :] = 255
    return mask


def sbd_mask(image_id: str) -> np.ndarray:
    """SBD's class mask for an id: different from VOC's, and without 255 borders."""
    mask = mask_for(image_id, 1)
    mask[0, :] = 0
    return mask


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask).convert("P")
    image.putpalette([value for index in range(256) for value in (index, 255 - index, index // 2)])
    image.save(path)


def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    for image_id in {*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL}:
        Image.new("RGB", (7, 5)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    for image_id in VOC_TRAIN + VOC_VAL:
        save_palette_png(mask_for(image_id, 0), voc / "SegmentationClass" / f"{image_id}.png")
    return voc


def make_sbd(root: Path) -> Path:
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    for image_id in SBD_TRAIN + SBD_VAL:
        scipy.io.savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": sbd_mask(image_id)}})
    return sbd


def read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_train_aug_from_voc_and_sbd(tmp_path):
    voc, sbd = make_voc(tmp_path), make_sbd(tmp_path)

    with pytest.warns(UserWarning, match="train_aug has 4 images, expected 10,582"):
        ids = prepare_voc_aug(voc, sbd_root=sbd)

    assert ids == EXPECTED_IDS
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == EXPECTED_IDS
    written = sorted(path.name for path in (voc / "SegmentationClassAug").iterdir())
    assert written == [f"{image_id}.png" for image_id in EXPECTED_IDS]
    # SBD-only ids: the .mat array exactly, as a single-channel PNG
    for image_id in ("2008_000005", "2008_000006"):
        mat = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat")["GTcls"]["Segmentation"][0, 0]
        mode, png = read_png(voc / "SegmentationClassAug" / f"{image_id}.png")
        assert mode == "L" and np.array_equal(png, mat) and np.array_equal(png, sbd_mask(image_id))
    # VOC train ids (2007_000032 is in SBD too): VOC's palette indices, 255 borders kept
    for image_id in ("2007_000032", "2007_000039"):
        mode, png = read_png(voc / "SegmentationClassAug" / f"{image_id}.png")
        assert mode == "L" and np.array_equal(png, mask_for(image_id, 0))
        assert (png[0] == 255).all()


def test_second_run_writes_nothing(tmp_path):
    voc, sbd = make_voc(tmp_path), make_sbd(tmp_path)
    with pytest.warns(UserWarning):
        prepare_voc_aug(voc, sbd_root=sbd)
    outputs = [*(voc / "SegmentationClassAug").iterdir(), voc / "ImageSets/Segmentation/train_aug.txt"]
    for path in outputs:  # an old, exact timestamp: any rewrite would replace it
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    with pytest.warns(UserWarning):
        assert prepare_voc_aug(voc, sbd_root=sbd) == EXPECTED_IDS

    assert all(path.stat().st_mtime_ns == 1_000_000_000 for path in outputs)
    assert sorted((voc / "SegmentationClassAug").iterdir()) == sorted(outputs[:-1])


def test_interrupted_run_is_completed(tmp_path):
    voc, sbd = make_voc(tmp_path), make_sbd(tmp_path)
    (voc / "SegmentationClassAug").mkdir()
    (voc / "SegmentationClassAug" / "2008_000005.png.tmp").write_bytes(b"half a png")

    with pytest.warns(UserWarning):
        prepare_voc_aug(voc, sbd_root=sbd)

    mode, png = read_png(voc / "SegmentationClassAug" / "2008_000005.png")
    assert mode == "L" and png.shape == (5, 7)


def test_train_aug_from_a_segmentation_class_aug_folder(tmp_path):
    voc = make_voc(tmp_path)
    aug = tmp_path / "SegmentationClassAug"
    aug.mkdir()
    for image_id in EXPECTED_IDS + VOC_VAL:
        Image.fromarray(mask_for(image_id, 2)).save(aug / f"{image_id}.png")
    (aug / "._2008_000005.png").write_bytes(b"macOS metadata, not a png")

    with pytest.warns(UserWarning, match="train_aug has 4 images"):
        ids = prepare_voc_aug(voc, aug_labels_dir=aug)

    assert ids == EXPECTED_IDS
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == EXPECTED_IDS
    for image_id in EXPECTED_IDS:
        mode, png = read_png(voc / "SegmentationClassAug" / f"{image_id}.png")
        assert mode == "L" and np.array_equal(png, mask_for(image_id, 2))
    assert not (voc / "SegmentationClassAug" / "2007_000033.png").exists()  # VOC val left out


def test_missing_jpegs_and_labels_are_all_named(tmp_path):
    voc, sbd = make_voc(tmp_path), make_sbd(tmp_path)
    (voc / "JPEGImages" / "2008_000006.jpg").unlink()
    (sbd / "cls" / "2008_000005.mat").unlink()

    with pytest.raises(DatasetError) as raised:
        prepare_voc_aug(voc, sbd_root=sbd)

    assert "2008_000006.jpg" in str(raised.value)
    assert str(sbd / "cls" / "2008_000005.mat") in str(raised.value)
    assert not (voc / "SegmentationClassAug").exists()  # checked before anything is written


def test_exactly_one_label_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one of sbd_root and aug_labels_dir"):
        prepare_voc_aug(tmp_path)


@pytest.mark.parametrize("use_sbd", [True, False])
def test_prepare_voc_downloads_then_prepares(tmp_path, monkeypatch, use_sbd):
    voc, sbd = make_voc(tmp_path), make_sbd(tmp_path)
    aug = tmp_path / "SegmentationClassAug"
    aug.mkdir()
    for image_id in EXPECTED_IDS:
        Image.fromarray(mask_for(image_id, 2)).save(aug / f"{image_id}.png")
    calls = []

    def fake_download(result):
        return lambda data_dir: calls.append(data_dir) or result

    monkeypatch.setattr(prepare, "download_voc", fake_download(voc))
    monkeypatch.setattr(prepare, "download_sbd", fake_download(sbd))
    monkeypatch.setattr(prepare, "download_voc_aug_labels", fake_download(aug))

    with pytest.warns(UserWarning):
        assert prepare.prepare_voc(tmp_path, use_sbd=use_sbd) == voc

    assert calls == [tmp_path, tmp_path]
    _, png = read_png(voc / "SegmentationClassAug" / "2008_000005.png")
    expected = sbd_mask("2008_000005") if use_sbd else mask_for("2008_000005", 2)
    assert np.array_equal(png, expected)
