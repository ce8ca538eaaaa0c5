"""Regenerate the sample dataset bundled as package data in advseg_utils/sample_data
(deterministic, synthetic, VOC layout).

Each image is a noisy background with one to three shapes of four VOC classes. Every class has
its own colour, shape and texture, so a tiny network learns to segment them in a few dozen steps;
the masks are palette PNGs with a 255 band on object borders, like real VOC annotations.

    python data/make_sample.py [--out advseg_utils/sample_data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from advseg_utils.datasets import SAMPLE_ROOT, VOC_CLASSES, voc_palette

NUM_TRAIN, NUM_VAL = 24, 8
SIZES = ((96, 128), (128, 96), (96, 96), (80, 128), (112, 144), (96, 160))  # (height, width)
BORDER_WIDTH = 1  # pixels of 255 on each side of a class boundary
SEED = 2018

# VOC class index -> (mean RGB colour, shape, texture)
OBJECT_STYLES = {
    VOC_CLASSES.index("aeroplane"): ((210, 40, 40), "ellipse", "plain"),
    VOC_CLASSES.index("car"): ((40, 70, 210), "rectangle", "horizontal stripes"),
    VOC_CLASSES.index("cat"): ((230, 200, 40), "ellipse", "checkerboard"),
    VOC_CLASSES.index("person"): ((40, 180, 60), "rectangle", "vertical stripes"),
}
BACKGROUND_RGB = (120, 110, 100)


def make_example(
    rng: np.random.Generator, size: tuple[int, int], first_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [H, W, 3], mask uint8 [H, W]) pair; object classes cycle from ``first_class``."""
    height, width = size
    rows, cols = np.mgrid[:height, :width]
    image = BACKGROUND_RGB + rng.normal(0, 14, (height, width, 3))
    mask = np.zeros(size, np.uint8)
    classes = list(OBJECT_STYLES)
    for k in range(rng.integers(1, 4)):
        class_index = classes[(first_class + k) % len(classes)]
        colour, shape, texture = OBJECT_STYLES[class_index]
        region = _shape_region(rng, shape, rows, cols)
        noise = rng.normal(0, 10, (height, width, 3))
        shade = _texture(texture, rows, cols)[..., None] * np.asarray(colour) + noise
        image[region] = shade[region]
        mask[region] = class_index
    window = 2 * BORDER_WIDTH + 1
    border = ndimage.grey_dilation(mask, size=window) != ndimage.grey_erosion(mask, size=window)
    mask[border] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _shape_region(rng: np.random.Generator, shape: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    height, width = rows.shape
    half_h, half_w = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    center_r, center_c = rng.uniform(half_h, height - half_h), rng.uniform(half_w, width - half_w)
    dr, dc = (rows - center_r) / half_h, (cols - center_c) / half_w
    return dr**2 + dc**2 <= 1 if shape == "ellipse" else (np.abs(dr) <= 1) & (np.abs(dc) <= 1)


def _texture(texture: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A brightness factor per pixel (around 1) that gives each class its own pattern."""
    if texture == "horizontal stripes":
        return np.where(rows // 4 % 2 == 0, 1.0, 0.6)
    if texture == "vertical stripes":
        return np.where(cols // 4 % 2 == 0, 1.0, 0.6)
    if texture == "checkerboard":
        return np.where((rows // 6 + cols // 6) % 2 == 0, 1.0, 0.7)
    return np.ones(rows.shape)


def write_sample(out: Path) -> None:
    """Write JPEGImages, SegmentationClass and ImageSets/Segmentation/{train,val}.txt under ``out``."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    (out / "ImageSets" / "Segmentation").mkdir()
    rng = np.random.default_rng(SEED)
    palette = voc_palette().flatten().tolist()
    names = [f"sample_{i:03d}" for i in range(NUM_TRAIN + NUM_VAL)]
    for i, name in enumerate(names):
        image, mask = make_example(rng, SIZES[i % len(SIZES)], first_class=i)
        Image.fromarray(image).save(out / "JPEGImages" / f"{name}.jpg", quality=90)
        mask_png = Image.fromarray(mask)
        mask_png.putpalette(palette)  # turns the 8-bit image into a palette image, indices kept
        mask_png.save(out / "SegmentationClass" / f"{name}.png", optimize=True)
    for split, split_names in (("train", names[:NUM_TRAIN]), ("val", names[NUM_TRAIN:])):
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_names) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_ROOT)
    write_sample(parser.parse_args().out)
