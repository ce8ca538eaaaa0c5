"""The CamVid copy the quality tables train on: train and val downscaled once into the work
folder (outside the project), one copy per CamVid root and size; nothing is ever written into
the root."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from PIL import Image

from advseg_utils.atomic import atomic_path
from advseg_utils.file_utils import read_list
from camvid_profiles import PROJECT_ROOT

DEFAULT_CAMVID = PROJECT_ROOT.parent / "shared" / "data" / "camvid"
#: Where the downscaled copies and the runs' checkpoints go.
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "advseg" / "quality_camvid"


def downscaled_camvid(source: Path, target: Path, size: tuple[int, int]) -> Path:
    """``target``: CamVid's train and val at ``size`` (images bilinear, JPEG quality 95; labels
    nearest, so no class appears that was not there), made once, atomically (a folder built
    aside and renamed), and reused afterwards, also by runs started in parallel."""
    if target.is_dir():
        return target
    try:
        with atomic_path(target) as partial:
            for split in ("train", "val"):
                names = read_list(source / f"{split}.txt")
                for kind, suffix, resample in (("images", ".jpg", Image.BILINEAR), ("labels", ".png", Image.NEAREST)):
                    (partial / kind / split).mkdir(parents=True)
                    for name in names:
                        with Image.open(source / kind / split / f"{name}{suffix}") as original:
                            resized = original.resize(size, resample)
                            options = {"quality": 95} if suffix == ".jpg" else {}
                            resized.save(partial / kind / split / f"{name}{suffix}", **options)
                shutil.copyfile(source / f"{split}.txt", partial / f"{split}.txt")
    except OSError:  # another run (in parallel) finished the same copy first (the rename failed): use that one
        if not target.is_dir():
            raise
    return target


def copy_name(source: Path, size: tuple[int, int]) -> str:
    """The work folder's name for ``source`` at ``size``: ``camvid-240x180-<fingerprint>``, the
    fingerprint a hash of the root's resolved path and its list files, so that another root (or
    the same root with other lists) gets its own copy instead of the copy of the first one."""
    fingerprint = hashlib.sha256(str(Path(source).resolve()).encode())
    for split in ("train", "val"):
        if (Path(source) / f"{split}.txt").is_file():  # a missing list is downscaled_camvid's error to name
            fingerprint.update((Path(source) / f"{split}.txt").read_bytes())
    return f"camvid-{size[0]}x{size[1]}-{fingerprint.hexdigest()[:10]}"
