"""Unlabeled images from anywhere: folders of plain images (and frames of videos) that nobody
labeled, for semi-supervised training beside or instead of a labeled dataset's unused share.

:func:`unlabeled_folder_dataset` turns folders into a :class:`~advseg_utils.datasets.SegDataset`
without masks; :func:`merge_unlabeled` joins it to the labeled dataset's unlabeled share into the
one set the unlabeled stream draws from. Images of any size and of any mode PIL reads (grey,
palette, RGBA, 16-bit, CMYK) are converted to RGB by
:func:`~advseg_utils.file_utils.load_img`, and the input pipeline decodes them to the same
pixels; :func:`~advseg_utils.datasets.validate_dataset` names the files that cannot be decoded.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

from advseg_utils.datasets import SegDataset
from advseg_utils.file_utils import DatasetError, PathLike
from advseg_utils.video import VIDEO_SUFFIXES, sample_frames

#: Image files read from unlabeled folders (JPEG, PNG, GIF and BMP by TensorFlow, the rest by PIL).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def unlabeled_folder_dataset(
    *folders: PathLike,
    video_every: int | None = 15,
    video_max_frames: int | None = 300,
    cache_dir: PathLike | None = None,
    num_classes: int = 0,
    name: str = "unlabeled",
) -> SegDataset:
    """Every image under ``folders`` (sub-folders included), and frames of their videos, as a
    dataset without masks.

    Images are the files ending in one of :data:`IMAGE_SUFFIXES` (any case). From each video
    (:data:`~advseg_utils.video.VIDEO_SUFFIXES`) frames 0, ``video_every``, 2 ``video_every``, ...
    are taken, at most ``video_max_frames`` of them (None: all), written once as PNG files under
    ``cache_dir`` and reused afterwards (:func:`~advseg_utils.video.sample_frames`; needs PyAV);
    ``video_every=None`` leaves videos out. Other files are left out with a warning naming them,
    hidden ones (a name starting with ".") silently.

    An item's id is its path relative to its folder after the folder's name (``photos/a/b.jpg``;
    a second folder of the same name becomes ``photos-2``), a frame's the video's id, ``#`` and
    the frame number (``clips/walk.mp4#000030``); items are sorted by id. ``num_classes`` only
    matters to code that reads it (an image without a mask has no classes).
    """
    if not folders:
        raise ValueError("unlabeled_folder_dataset needs at least one folder")
    items: dict[str, Path] = {}
    ignored: list[Path] = []
    videos: list[tuple[str, Path]] = []
    cache = None if cache_dir is None else Path(cache_dir).resolve()
    for tag, folder in zip(_folder_tags(folders), map(Path, folders)):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: unlabeled image folder not found")
        holds_cache = cache is not None and folder.resolve() in (cache, *cache.parents)
        found = 0
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            if holds_cache and cache in path.resolve().parents:
                continue  # frames written earlier by this function are not new images
            item_id, suffix = f"{tag}/{relative.as_posix()}", path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                items[item_id] = path
            elif suffix in VIDEO_SUFFIXES and video_every is not None:
                videos.append((item_id, path))
            else:
                ignored.append(path)
                continue
            found += 1
        if not found:
            raise DatasetError(
                f"{folder}: no images ({' '.join(IMAGE_SUFFIXES)})"
                + (f" or videos ({' '.join(VIDEO_SUFFIXES)})" if video_every is not None else "")
                + " found in it or its sub-folders"
            )
    if ignored:
        _warn_ignored(ignored, video_every is None)
    if videos and cache_dir is None:
        raise ValueError(f"{videos[0][1]}: pass cache_dir=, the folder that receives the frames sampled from videos")
    for video_id, video in videos:
        frames = sample_frames(video, Path(cache_dir) / video_id, video_every, video_max_frames)
        items |= {f"{video_id}#{frame.stem.removeprefix('frame')}": frame for frame in frames}
    ids = sorted(items)
    return SegDataset(
        name=name, ids=ids, image_paths=[items[i] for i in ids], mask_paths=None, num_classes=num_classes
    )


def merge_unlabeled(*datasets: SegDataset, name: str = "unlabeled") -> SegDataset:
    """The images of ``datasets``, in that order, as one dataset for the unlabeled stream.

    Masks are kept only when every dataset has them (they feed diagnostics, never a loss); the
    classes are the first dataset's. A single dataset is returned as it is.
    """
    if not datasets:
        raise ValueError("merge_unlabeled needs at least one dataset")
    if len(datasets) == 1:
        return datasets[0]
    ids = [item for dataset in datasets for item in dataset.ids]
    duplicates = sorted(item for item, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise DatasetError(f"the unlabeled datasets share ids, e.g. {duplicates[:5]}: an image would be drawn twice as often")
    first, labeled = datasets[0], all(dataset.labeled for dataset in datasets)
    return SegDataset(
        name=name,
        ids=ids,
        image_paths=[path for dataset in datasets for path in dataset.image_paths],
        mask_paths=[path for dataset in datasets for path in dataset.mask_paths] if labeled else None,
        num_classes=first.num_classes,
        ignore_label=first.ignore_label,
        label_remap=first.label_remap,
        class_names=first.class_names,
        palette=first.palette,
    )


def _folder_tags(folders: tuple[PathLike, ...]) -> list[str]:
    """Each folder's name, with ``-2``, ``-3``, ... for the second and later folders of one name."""
    tags: list[str] = []
    for folder in folders:
        base = Path(folder).resolve().name or "root"
        tag, number = base, 1
        while tag in tags:
            number += 1
            tag = f"{base}-{number}"
        tags.append(tag)
    return tags


def _warn_ignored(ignored: list[Path], videos_off: bool) -> None:
    shown = "\n  ".join(str(path) for path in ignored[:10])
    more = f"\n  ... and {len(ignored) - 10} more" if len(ignored) > 10 else ""
    read = f"images ({' '.join(IMAGE_SUFFIXES)})" + ("" if videos_off else f" and videos ({' '.join(VIDEO_SUFFIXES)})")
    warnings.warn(f"left out {len(ignored)} files that are not {read}:\n  {shown}{more}", stacklevel=3)
