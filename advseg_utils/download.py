"""Fetching and unpacking the VOC 2012 and SBD archives: resumable, verified, safe to re-run.

HTTP goes through the standard library (urllib) with a tqdm progress bar. Bytes arrive in
``<name>.part``, which a later request resumes; the file appears under its final name only by an
atomic rename after its md5 matched, so a file with the final name is always complete. Every
archive member is checked before anything is written, and a marker file records a finished
extraction, so a repeat call touches neither the network nor the disk. Nothing downloaded is
unpickled or evaluated.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

PathLike = str | os.PathLike

VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
#: The official host (https first, as Keras-CV uses it; plain http as a fallback), then a mirror.
VOC_URLS = (
    "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
)
SBD_ARCHIVE = "benchmark.tgz"
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
SBD_URLS = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
)
VOC_AUG_LABELS_ARCHIVE = "SegmentationClassAug.zip"
#: No checksum has been published for SegmentationClassAug.zip, so by default it is not verified.
VOC_AUG_LABELS_MD5: str | None = None
VOC_AUG_LABELS_URLS = ("https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",)

_CHUNK_BYTES = 1 << 20
#: How many times one URL is retried in a row, as long as each attempt brought new bytes.
_MAX_RESUMES = 20
#: Some hosts refuse urllib's default User-Agent.
_USER_AGENT = "advseg_utils-download (Python urllib)"
#: tarfile's "data" filter (Python 3.12, backported to 3.10.12 and 3.11.4) as a second safety net.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(RuntimeError):
    """A download or extraction that could not be completed; the message says what to do."""


class ChecksumError(DownloadError):
    """A file whose md5 is not the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the destination folder."""


def download_file(
    urls: str | Sequence[str], path: PathLike, md5: str | None = None, *, timeout: float = 60.0
) -> Path:
    """Download ``path`` from the first of ``urls`` (mirrors, tried in order) that works.

    A file already at ``path`` is used without network access (its md5 is checked when given).
    Bytes arrive in ``path.part``: a dropped connection is resumed with an HTTP Range request,
    here or in a later call, and a server that ignores Range makes it start over cleanly. The
    part becomes ``path`` only by an atomic rename after its md5 matched; on a mismatch it is
    deleted and ChecksumError raised. When every URL fails, DownloadError lists the manual steps.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"download_file({path}): expected at least one URL, got none")
    path = Path(path)
    if path.exists():
        _check_existing_file(path, md5)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    failures = []
    for url in urls:
        try:
            _fetch_resuming(url, part, timeout)
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{url}: {error}")
            continue
        actual = _md5(part)
        if md5 and actual != md5.lower():
            part.unlink()
            raise ChecksumError(
                f"{path.name} downloaded from {url} has md5 {actual}, expected {md5}; the download "
                "was deleted (nothing was saved under that name), run the call again to retry"
            )
        os.replace(part, path)
        return path
    raise DownloadError(_manual_steps(path, urls, md5, failures))


def extract_archive(path: PathLike, dest: PathLike) -> Path:
    """Unpack a tar (plain, .tar.gz/.tgz, bz2, xz) or zip archive into ``dest``; return ``dest``.

    Every member is checked before anything is written: an absolute path, a ``..`` component or
    a link target of that kind makes the whole archive refused (UnsafeArchiveError naming the
    member). Tar extraction also applies tarfile's "data" filter where Python has it. A marker
    file in ``dest`` records a finished extraction; while it exists, calls return at once.
    """
    path, dest = Path(path), Path(dest)
    marker = _extraction_marker(path, dest)
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            _extract_zip(path, dest)
        elif tarfile.is_tarfile(path):
            _extract_tar(path, dest)
        else:
            raise DownloadError(
                f"{path}: not a tar or zip archive (an error page or a broken download?); "
                "delete it and download it again"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DownloadError(f"{path}: the archive is damaged ({error}); delete it and download it again") from error
    marker.write_text(f"{path.name} was extracted here completely\n")
    return dest


def download_voc(data_dir: PathLike, urls: Sequence[str] = VOC_URLS, md5: str | None = VOC_MD5) -> Path:
    """Download (2 GB) and unpack VOC 2012 trainval into ``data_dir``; return its VOCdevkit/VOC2012."""
    return _download_and_extract(data_dir, VOC_ARCHIVE, urls, md5, "VOCdevkit/VOC2012")


def download_sbd(data_dir: PathLike, urls: Sequence[str] = SBD_URLS, md5: str | None = SBD_MD5) -> Path:
    """Download (1.4 GB) and unpack SBD into ``data_dir``; return its benchmark_RELEASE/dataset."""
    return _download_and_extract(data_dir, SBD_ARCHIVE, urls, md5, "benchmark_RELEASE/dataset")


def download_voc_aug_labels(
    data_dir: PathLike, urls: Sequence[str] = VOC_AUG_LABELS_URLS, md5: str | None = VOC_AUG_LABELS_MD5
) -> Path:
    """Download and unpack SegmentationClassAug.zip (12,031 index PNGs, the alternative to SBD)
    into ``data_dir``; return its SegmentationClassAug folder. No md5 is published for it, so
    it is verified only when ``md5`` is given."""
    return _download_and_extract(data_dir, VOC_AUG_LABELS_ARCHIVE, urls, md5, "SegmentationClassAug")


def _download_and_extract(
    data_dir: PathLike, archive_name: str, urls: Sequence[str], md5: str | None, content: str
) -> Path:
    """Fetch and unpack ``archive_name`` unless its extraction marker exists; return data_dir/content."""
    data_dir = Path(data_dir)
    archive = data_dir / archive_name
    if not _extraction_marker(archive, data_dir).exists():
        download_file(urls, archive, md5)
        extract_archive(archive, data_dir)
    if not (data_dir / content).is_dir():
        raise DownloadError(
            f"{archive} was extracted into {data_dir} but {content}/ is not there; "
            f"expected the archive to contain it (is {archive_name} the right file?)"
        )
    return data_dir / content


def _fetch_resuming(url: str, part: Path, timeout: float) -> None:
    """Fetch ``url`` into ``part``; retry at once after a dropped connection that brought new bytes."""
    for _ in range(_MAX_RESUMES):
        size_before = _size(part)
        try:
            return _fetch(url, part, timeout)
        except (OSError, http.client.HTTPException):
            if _size(part) <= size_before:
                raise
    _fetch(url, part, timeout)


def _fetch(url: str, part: Path, timeout: float) -> None:
    """One request: append to ``part`` from its size, or rewrite it when the whole file comes."""
    offset = _size(part)
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        part.unlink()  # "range not satisfiable": the part does not fit this file, start over
        return _fetch(url, part, timeout)
    with response:
        if response.status != 206:
            offset = 0  # the server ignored the Range request and sends the whole file
        elif not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise ConnectionError(
                f"asked for bytes from {offset}, got Content-Range {response.headers.get('Content-Range')!r}"
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        name = part.name.removesuffix(".part")
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name
        ) as progress:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                progress.update(len(chunk))
    # urllib returns a short body without an error when the server closes the connection early.
    if total is not None and _size(part) != total:
        raise ConnectionError(f"the connection closed after {_size(part)} of {total} bytes")


def _check_existing_file(path: Path, md5: str | None) -> None:
    if md5 and (actual := _md5(path)) != md5.lower():
        raise ChecksumError(
            f"{path} has md5 {actual}, expected {md5}: it is damaged or another file; "
            "delete it and run the call again to download it"
        )


def _manual_steps(path: Path, urls: list[str], md5: str | None, failures: list[str]) -> str:
    part = path.with_name(path.name + ".part")
    checksum = f" (md5 {md5})" if md5 else ""
    return "\n".join(
        [
            f"Could not download {path.name}; every address failed:",
            *(f"  {failure}" for failure in failures),
            "To finish by hand:",
            f"  1. download {path.name}{checksum} from one of the addresses above, in a browser or with",
            f"       wget -c -O '{path}' '{urls[0]}'",
            f"  2. put it at {path}",
            "  3. run the same call again: it uses the file found there and goes on from it.",
            *([f"The {_size(part)} bytes received so far stay in {part}; a later call resumes them."]
              if part.exists() else []),
        ]
    )


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            _check_member(path, dest, name)
        archive.extractall(dest)


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path) as archive:
        members = archive.getmembers()
        for member in members:
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise UnsafeArchiveError(
                    f"{path}: member {member.name!r} is a device or pipe, expected files, folders "
                    "and links; the archive was refused, nothing was extracted"
                )
            _check_member(path, dest, member.name, member.linkname if member.issym() or member.islnk() else None)
        archive.extractall(dest, members=members, **_TAR_FILTER)


def _check_member(archive: Path, dest: Path, name: str, link_target: str | None = None) -> None:
    """Refuse an absolute member path or link target, or one with a ``..`` component.

    Without those, a path stays below the folder it starts in, and so does every link (each
    link passes the same test), so nothing can reach outside ``dest``.
    """
    for value, role in ((name, "path"), (link_target, "link target")):
        if value is not None and _leaves_folder(value):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} would land outside {dest} (its {role} {value!r} is "
                "absolute or contains '..'); the archive was refused, nothing was extracted"
            )


def _leaves_folder(member_path: str) -> bool:
    return (
        member_path.startswith(("/", "\\"))
        or re.match(r"[A-Za-z]:", member_path) is not None
        or ".." in re.split(r"[/\\]", member_path)
    )


def _extraction_marker(archive: Path, dest: Path) -> Path:
    return dest / f".{archive.name}.extracted"


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
