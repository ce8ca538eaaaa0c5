"""Frames sampled from video files, written once as PNG files that the input pipeline reads like
any other image.

The reader is PyAV (the ``av`` package, ``pip install av``): maintained bindings to FFmpeg's
libraries whose wheels bundle FFmpeg for Linux, macOS and Windows, so every container and codec
FFmpeg knows is read without a system FFmpeg, and frames come decoded one after the other in
display order, which is what counting every n-th frame needs (OpenCV's wheels are larger, and
seeking by frame number is unreliable for some codecs). It is optional: only folders that hold
videos need it, and its absence is an error naming the video and the install command.
Rotation metadata (portrait phone videos) is not applied: frames are stored as encoded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from advseg_utils.atomic import atomic_path, write_text_atomically
from advseg_utils.file_utils import DatasetError, PathLike

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: Written last, once every frame is on disk: its presence means the frames are complete.
MANIFEST = "frames.json"


def sample_frames(video: PathLike, cache_dir: PathLike, every: int, max_frames: int | None) -> list[Path]:
    """PNG files of frames 0, ``every``, 2 ``every``, ... of ``video`` (at most ``max_frames``),
    written to ``cache_dir`` as ``frame<index>.png``.

    The frames are decoded once: a later call with the same file (same size and modification
    time) and the same settings returns the files already there. Each file is written under a
    temporary name and renamed, and the manifest last, so an interrupted extraction is redone.
    """
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"every={every} and max_frames={max_frames}: expected positive integers (max_frames may be None)")
    video, cache_dir = Path(video), Path(cache_dir)
    if not video.is_file():
        raise DatasetError(f"{video}: video file not found")
    stat = video.stat()
    settings = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "every": every, "max_frames": max_frames}
    cached = _cached_frames(cache_dir, settings)
    if cached is not None:
        return cached
    if cache_dir.exists():
        shutil.rmtree(cache_dir)  # frames of another version of the file or other settings
    cache_dir.mkdir(parents=True)
    frames = [_write_png(cache_dir / f"frame{index:06d}.png", rgb) for index, rgb in _decode(video, every, max_frames)]
    if not frames:
        raise DatasetError(f"{video}: the video holds no frame that could be decoded")
    write_text_atomically(cache_dir / MANIFEST, json.dumps({**settings, "frames": [frame.name for frame in frames]}))
    return frames


def _decode(video: Path, every: int, max_frames: int | None):
    """(frame index, uint8 RGB [H, W, 3]) for the sampled frames, in order."""
    av = _import_av(video)
    taken = 0
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise DatasetError(f"{video}: the file holds no video stream")
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index % every:
                    continue
                yield index, frame.to_ndarray(format="rgb24")
                taken += 1
                if taken == max_frames:
                    return
    except (av.error.FFmpegError, OSError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{video}: cannot decode the video, it is corrupt or not a video ({error})") from error


def _import_av(video: Path):
    try:
        import av
    except ImportError as error:
        raise ImportError(
            f"{video}: reading frames from videos needs PyAV: pip install av "
            "(or remove the videos from the unlabeled folders)"
        ) from error
    return av


def _cached_frames(cache_dir: Path, settings: dict) -> list[Path] | None:
    """The frames listed by the manifest, if it was written for these settings and all exist."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    frames = [cache_dir / name for name in manifest.get("frames", [])]
    if {key: manifest.get(key) for key in settings} != settings or not all(frame.is_file() for frame in frames):
        return None
    return frames


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    with atomic_path(path) as partial:
        Image.fromarray(rgb).save(partial, format="PNG")
    return path
