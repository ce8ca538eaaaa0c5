"""Reading images, masks, list files and labeled/unlabeled splits from disk.

Masks are read with PIL (or scipy for SBD ``.mat`` files) because TensorFlow's PNG decoder
expands a palette PNG into colours, and a VOC mask's meaning lies in its palette *indices*.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io
from PIL import Image

from advseg_utils.atomic import write_text_atomically

PathLike = str | os.PathLike

#: Mask modes whose pixel values are class indices (palette PNGs, 8/16-bit grey PNGs, 1-bit).
_INDEX_MODES = ("P", "L", "I", "I;16", "1")
#: PIL modes of grey images deeper than 8 bits (PIL opens a 16-bit grey PNG as one of these).
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


class DatasetError(ValueError):
    """A problem with dataset files: the message names the file, the value and the expectation."""


def load_img(path: PathLike) -> np.ndarray:
    """Read an image as uint8 RGB [H, W, 3], converting grey, palette, RGBA and CMYK images.

    Alpha is dropped (the colours under transparent pixels are kept, not composited), 16-bit
    images keep their high byte and EXIF orientation is not applied: the pixels TensorFlow's
    decoders give, so that training crops (:mod:`advseg_utils.voc_gen`) match this function.
    """
    image = _open_image(path)
    if image.mode in _WIDE_GREY_MODES:  # PIL's own conversion would clip 16-bit values at 255
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_mask(path: PathLike, label_remap: Mapping[int, int] | None = None) -> np.ndarray:
    """Read a mask as uint8 class indices [H, W], optionally remapping values.

    Accepts a palette PNG (VOC SegmentationClass: the palette indices are the classes), a
    single-channel index PNG (SegmentationClassAug, CamVid, Cityscapes) or an SBD ``.mat`` file
    (field ``GTcls.Segmentation``). ``label_remap`` maps raw values to classes, e.g. ``{11: 255}``
    for CamVid's void; values it does not mention are kept.
    """
    path = Path(os.fsdecode(path))
    mask = _load_sbd_mat(path) if path.suffix.lower() == ".mat" else _load_index_image(path)
    if label_remap:
        mask = np.take(_remap_lookup_table(label_remap, path), mask)
    return mask


def mask_name_to_img_name(name: str, img_ext: str = ".jpg") -> str:
    """The image file name that goes with a mask file name: ``2007_000032.png -> 2007_000032.jpg``
    (a name users of the original Colab workflow know; kept as a public entry point)."""
    return str(PurePosixPath(name).with_suffix(img_ext))


def read_list(path: PathLike) -> list[str]:
    """Read a list file with one name per line (VOC ImageSets); blank lines are skipped."""
    names = [line.strip() for line in _read_lines(path)]
    names = [name for name in names if name]
    if not names:
        raise DatasetError(f"{path}: the list file is empty; expected one name per line")
    return names


def read_pair_list(path: PathLike) -> list[tuple[str, str]]:
    """Read a two-column list file of ``image mask`` paths per line (DeepLab-style lists)."""
    pairs = []
    for line_number, line in enumerate(_read_lines(path), start=1):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != 2:
            raise DatasetError(
                f"{path}, line {line_number}: expected two columns 'image mask', got {line.strip()!r}"
            )
        pairs.append((columns[0], columns[1]))
    if not pairs:
        raise DatasetError(f"{path}: the list file is empty; expected lines 'image mask'")
    return pairs


def make_split(names: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split names into (labeled, unlabeled), both sorted, as a pure function of the arguments.

    Each name is ranked by a hash of (seed, name), so the result depends neither on the order of
    ``names`` nor on the random-number generator of a library version, and with one seed a smaller
    fraction's labeled set is contained in a larger fraction's.
    """
    names = sorted(names)
    duplicates = sorted({name for name, following in zip(names, names[1:]) if name == following})
    if duplicates:
        raise DatasetError(f"cannot split a list with duplicate names: {duplicates[:10]}")
    if not names:
        raise DatasetError("cannot split an empty list of names")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num_labeled = max(1, round(fraction * len(names)))
    ranked = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    return sorted(ranked[:num_labeled]), sorted(ranked[num_labeled:])


@dataclass(frozen=True)
class UnlabeledSources:
    """Where a semi-supervised run's extra unlabeled images come from, as its split file records
    them: the folders as given, the video sampling, and the images' ids (frames included)."""

    folders: tuple[str, ...] = ()
    video_every: int | None = None
    video_max_frames: int | None = None
    ids: tuple[str, ...] = ()

    def differences(self, requested: UnlabeledSources) -> list[str]:
        """What differs between these recorded sources and the ``requested`` ones, in words."""
        if self.folders != requested.folders:
            return [f"it was made with unlabeled folders {list(self.folders)}, not {list(requested.folders)}"]
        problems = [
            f"it was made with {key}={getattr(self, key)}, not {key}={getattr(requested, key)}"
            for key in ("video_every", "video_max_frames")
            if self.folders and getattr(self, key) != getattr(requested, key)
        ]
        added, gone = sorted(set(requested.ids) - set(self.ids)), sorted(set(self.ids) - set(requested.ids))
        changes = ([f"hold {len(added)} images it does not list (e.g. {added[:3]})"] if added else []) + (
            [f"lack {len(gone)} it lists (e.g. {gone[:3]})"] if gone else []
        )
        if changes:
            problems.append("the unlabeled folders now " + " and ".join(changes))
        elif self.ids != requested.ids:
            problems.append("its extra unlabeled images are listed in another order")
        return problems


def save_split(
    path: PathLike,
    labeled: Iterable[str],
    unlabeled: Iterable[str],
    fraction: float | None = None,
    seed: int | None = None,
    sources: UnlabeledSources | None = None,
) -> None:
    """Write a split as a text file: a ``#`` header (fraction, seed, counts), then one line per name
    under ``[labeled]`` and ``[unlabeled]``; with extra unlabeled ``sources`` (that have folders),
    also the video settings in the header and sections ``[unlabeled folders]`` and
    ``[extra unlabeled]`` (files without them, as written before, still load)."""
    labeled, unlabeled = list(labeled), list(unlabeled)
    header = {"fraction": fraction, "seed": seed, "labeled": len(labeled), "unlabeled": len(unlabeled)}
    if sources is not None and sources.folders:
        header |= {
            "extra unlabeled": len(sources.ids),
            "video_every": sources.video_every,
            "video_max_frames": sources.video_max_frames or "all",
        }
    lines = ["# advseg labeled/unlabeled split"]
    lines += [f"# {key}: {value}" for key, value in header.items() if value is not None]
    lines += ["[labeled]", *labeled, "[unlabeled]", *unlabeled]
    if sources is not None and sources.folders:
        lines += ["[unlabeled folders]", *sources.folders, "[extra unlabeled]", *sources.ids]
    write_text_atomically(path, "\n".join(lines) + "\n")  # other workers may be reading the split


def load_split(path: PathLike) -> tuple[list[str], list[str]]:
    """Read a split written by :func:`save_split` as (labeled, unlabeled)."""
    sections, _ = _read_split_file(path)
    return sections["labeled"], sections.get("unlabeled", [])


def load_unlabeled_sources(path: PathLike) -> UnlabeledSources:
    """The extra unlabeled sources a split file records (none for a file written without them)."""
    sections, header = _read_split_file(path)
    return _recorded_sources(sections, header)


def get_or_create_split(
    path: PathLike,
    names: Iterable[str],
    fraction: float,
    seed: int,
    sources: UnlabeledSources | None = None,
) -> tuple[list[str], list[str]]:
    """Reuse the split saved at ``path``, or make and save it if the file does not exist.

    An existing file must have been made from the same names, fraction and seed, and, when
    ``sources`` are given (a semi-supervised run), from the same extra unlabeled sources: the
    same folders, video settings and images (no sources at all, for a run without them). If
    not, a DatasetError says what differs rather than silently training on other data.
    """
    names = list(names)
    if not Path(path).exists():
        labeled, unlabeled = make_split(names, fraction, seed)
        save_split(path, labeled, unlabeled, fraction=fraction, seed=seed, sources=sources)
        return labeled, unlabeled
    sections, header = _read_split_file(path)
    labeled, unlabeled = sections["labeled"], sections.get("unlabeled", [])
    problems = [
        f"it was made with {key}={header[key]}, not {key}={requested}"
        for key, requested in (("fraction", fraction), ("seed", seed))
        if key in header and float(header[key]) != float(requested)
    ]
    if set(labeled) | set(unlabeled) != set(names):
        problems.append("its names differ from the dataset's list")
    if sources is not None:
        problems += _recorded_sources(sections, header).differences(sources)
    if problems:
        raise DatasetError(
            f"{path}: existing split does not match the request: {'; '.join(problems)}. "
            "Delete the file or choose another split path."
        )
    return labeled, unlabeled


def _open_image(path: PathLike) -> Image.Image:
    """Read and fully decode an image, turning every failure into a DatasetError naming the file."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        image = Image.open(io.BytesIO(Path(path).read_bytes()))
        image.load()
    except (OSError, SyntaxError) as error:  # PIL reports broken PNG chunks as SyntaxError
        raise DatasetError(
            f"{path}: cannot decode the image, it is corrupt or truncated ({error})"
        ) from error
    return image


def _load_index_image(path: Path) -> np.ndarray:
    image = _open_image(path)
    if image.mode not in _INDEX_MODES:
        raise DatasetError(
            f"{path}: image mode {image.mode} is not a mask; expected a palette PNG or a "
            "single-channel index PNG holding one class index per pixel (colour-coded RGB "
            "masks must be converted to indices first)"
        )
    return _as_uint8_classes(np.asarray(image), path)


def _load_sbd_mat(path: Path) -> np.ndarray:
    """Read the class mask of an SBD ``cls/*.mat`` file (struct GTcls, field Segmentation)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        contents = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as error:  # scipy raises many unrelated types for a damaged file
        raise DatasetError(
            f"{path}: cannot read the .mat file, it is corrupt or truncated ({error})"
        ) from error
    try:
        mask = np.asarray(contents["GTcls"].Segmentation)
    except (KeyError, AttributeError) as error:
        raise DatasetError(
            f"{path}: expected an SBD class file with struct GTcls and field Segmentation"
        ) from error
    if mask.ndim != 2:
        raise DatasetError(f"{path}: GTcls.Segmentation has shape {mask.shape}; expected [H, W]")
    return _as_uint8_classes(mask, path)


def _as_uint8_classes(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.dtype == np.uint8:
        return mask
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DatasetError(
            f"{path}: mask values range {mask.min()}..{mask.max()}; expected class indices in 0..255"
        )
    return mask.astype(np.uint8)


def _remap_lookup_table(label_remap: Mapping[int, int], path: Path) -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    for source, target in label_remap.items():
        if not (0 <= source <= 255 and 0 <= target <= 255):
            raise ValueError(f"label_remap entry {source} -> {target} for {path}: values must be in 0..255")
        table[source] = target
    return table


def _read_lines(path: PathLike) -> list[str]:
    if not Path(path).is_file():
        raise DatasetError(f"{path}: list file not found")
    return Path(path).read_text().splitlines()


def _recorded_sources(sections: dict[str, list[str]], header: dict[str, str]) -> UnlabeledSources:
    if not sections.get("unlabeled folders"):
        return UnlabeledSources()

    def number(key: str) -> int | None:
        value = header.get(key, "all")
        return None if value in ("all", "None") else int(value)

    return UnlabeledSources(
        folders=tuple(sections["unlabeled folders"]),
        video_every=number("video_every"),
        video_max_frames=number("video_max_frames"),
        ids=tuple(sections.get("extra unlabeled", [])),
    )


def _read_split_file(path: PathLike) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Parse a split file into (its sections' lines by section name, header entries)."""
    sections: dict[str, list[str]] = {}
    header: dict[str, str] = {}
    current = None
    for line in _read_lines(path):
        line = line.strip()
        if line.startswith("#"):
            key, _, value = line.lstrip("# ").partition(":")
            if value:
                header[key.strip()] = value.strip()
        elif line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line:
            if current is None:
                raise DatasetError(f"{path}: name {line!r} before any [labeled]/[unlabeled] section")
            current.append(line)
    if "labeled" not in sections:
        raise DatasetError(f"{path}: not a split file; expected a [labeled] section")
    return sections, header
