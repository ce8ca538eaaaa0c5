"""Fetching and unpacking the VOC 2012 and SBD archives: resumable, verified, safe to re-run.

HTTP goes through the standard library (urllib, which follows redirects and keeps the Range
header across them) with a tqdm progress bar. Bytes arrive in ``<name>.part``, which a later
request resumes, from the same address or the next one; the file appears under its final name
only by an atomic rename after its size and every published digest matched, so a file with the
final name is always complete. Every archive member is checked before anything is written, and
a marker file records a finished extraction, so a repeat call touches neither the network nor
the disk. Nothing downloaded is unpickled or evaluated.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from advseg_utils.progress import tqdm

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ExpectedFile:
    """What a download must be, as published: its size in bytes and hex digests (None: unknown)."""

    size: int | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None

    def digests(self) -> dict[str, str]:
        """{hashlib algorithm name: expected hex digest} for the digests that are known."""
        known = {"md5": self.md5, "sha1": self.sha1, "sha256": self.sha256}
        return {name: value.lower() for name, value in known.items() if value}

    def describe(self) -> str:
        """"1,024 bytes, md5 ..., sha1 ...": what is known, for messages."""
        parts = ([f"{self.size:,} bytes"] if self.size is not None else []) + [
            f"{name} {value}" for name, value in self.digests().items()
        ]
        return ", ".join(parts) or "no published size or checksum"


VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
#: The MD5 torchvision, gluon-cv and PaddlePaddle check; the SHA-1 of d2l's DATA_HUB["voc2012"].
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_SHA1 = "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"
VOC_EXPECTED = ExpectedFile(size=1_999_639_040, md5=VOC_MD5, sha1=VOC_SHA1)
VOC_URLS = (
    # The official address since 2025 (pytorch/vision pull request 9216, by the host's sysadmin).
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    # The former official address: down during 2025, it redirects to the one above since March 2026.
    "https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    # Mirrors listed in pytorch/vision issue 9269: d2l's data bucket (d2l's DATA_HUB["voc2012"]) and
    # PaddlePaddle's (paddle.vision.datasets.VOC2012's VOC_URL, checked there against VOC_MD5).
    "https://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",
    "https://dataset.bj.bcebos.com/voc/VOCtrainval_11-May-2012.tar",
)
SBD_ARCHIVE = "benchmark.tgz"
#: torchvision's SBDataset MD5; the size is the one its download log shows (pytorch/vision issue 8471).
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"
SBD_EXPECTED = ExpectedFile(size=1_419_539_633, md5=SBD_MD5)
#: Berkeley's two addresses; no other source of this archive was found.
SBD_URLS = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
)
VOC_AUG_LABELS_ARCHIVE = "SegmentationClassAug.zip"
#: No size or checksum has been published for SegmentationClassAug.zip, and the two copies are
#: not known to be the same bytes; the zip's own CRC-32 of every member, checked on extraction,
#: is what catches a damaged download.
VOC_AUG_LABELS_EXPECTED: ExpectedFile | None = None
VOC_AUG_LABELS_URLS = (
    # The copy DeepLab users share (TheLegendAli/DeepLab-Context issue 10).
    "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
    # Chenxi Liu's copy (chenxi116/DeepLabv3.pytorch README; its folder serves https too).
    "https://cs.jhu.edu/~cxliu/data/SegmentationClassAug.zip",
)

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
    """A file whose size or digest is not the published one."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the destination folder."""


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a 308 (permanent redirect) like a 307, as urllib does by itself from Python 3.11."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return super().redirect_request(req, fp, 307 if code == 308 else code, msg, headers, newurl)

    http_error_308 = urllib.request.HTTPRedirectHandler.http_error_302


#: urllib's opener (proxies from the environment, redirects with the request's headers kept).
_OPENER = urllib.request.build_opener(_RedirectHandler)


class _OtherFileError(Exception):
    """A server announced a file of another size than the expected one (nothing was written)."""


def download_file(
    urls: str | Sequence[str],
    path: PathLike,
    expected: ExpectedFile | None = None,
    *,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``path`` from the first of ``urls`` (addresses tried in order) that serves the
    ``expected`` file; return ``path``.

    A file already at ``path`` is used without network access (and checked against
    ``expected``). Bytes arrive in ``path.part``: a dropped connection is resumed with an HTTP
    Range request, from the same address or, when it fails, from the next one; a server that
    ignores Range makes the part start over cleanly, and one announcing another size than
    ``expected.size`` is skipped before it writes anything. The part becomes ``path`` only by an
    atomic rename once its size and digests match. When they do not, a part begun elsewhere is
    fetched once more from this address alone; an address whose own bytes are wrong is reported
    (a warning) and the next one tried, so one stale mirror cannot block the others. When no
    address served the file, ChecksumError (some served other bytes) or DownloadError (none
    answered, with the manual steps) lists what each address did.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"download_file({path}): expected at least one URL, got none")
    expected = expected or ExpectedFile()
    path = Path(path)
    if path.exists():
        _check_existing_file(path, expected)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    failures, wrong_bytes = [], False
    for url in urls:
        begun_elsewhere = part.exists()
        try:
            mismatch = _fetch_and_verify(url, part, expected, timeout, progress)
            if mismatch and begun_elsewhere:
                part.unlink()  # the part's first bytes came from another address or an earlier call
                mismatch = _fetch_and_verify(url, part, expected, timeout, progress)
        except (OSError, http.client.HTTPException, _OtherFileError) as error:
            failures.append(f"{url}: {error}")
            wrong_bytes |= isinstance(error, _OtherFileError)
            continue
        if not mismatch:
            os.replace(part, path)
            return path
        part.unlink()
        failures.append(f"{url}: served {mismatch}")
        wrong_bytes = True
        warnings.warn(f"{path.name}: {url} served {mismatch}; the bytes were deleted", stacklevel=2)
    if wrong_bytes:
        raise ChecksumError(
            "\n".join([
                f"{path.name}: no address served the expected file ({expected.describe()}):",
                *(f"  {failure}" for failure in failures),
                "Nothing was saved under that name; run the call again to retry.",
            ])
        )
    raise DownloadError(_manual_steps(path, urls, expected, failures))


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


def download_voc(
    data_dir: PathLike, urls: Sequence[str] = VOC_URLS, expected: ExpectedFile | None = VOC_EXPECTED
) -> Path:
    """Download (2 GB) and unpack VOC 2012 trainval into ``data_dir``; return its VOCdevkit/VOC2012."""
    return _download_and_extract(data_dir, VOC_ARCHIVE, urls, expected, "VOCdevkit/VOC2012")


def download_sbd(
    data_dir: PathLike, urls: Sequence[str] = SBD_URLS, expected: ExpectedFile | None = SBD_EXPECTED
) -> Path:
    """Download (1.4 GB) and unpack SBD into ``data_dir``; return its benchmark_RELEASE/dataset."""
    return _download_and_extract(data_dir, SBD_ARCHIVE, urls, expected, "benchmark_RELEASE/dataset")


def download_voc_aug_labels(
    data_dir: PathLike,
    urls: Sequence[str] = VOC_AUG_LABELS_URLS,
    expected: ExpectedFile | None = VOC_AUG_LABELS_EXPECTED,
) -> Path:
    """Download and unpack SegmentationClassAug.zip (12,031 index PNGs, the alternative to SBD)
    into ``data_dir``; return its SegmentationClassAug folder. Nothing is published to verify it
    against, so only the zip's own CRC-32s check it, unless ``expected`` is given."""
    return _download_and_extract(data_dir, VOC_AUG_LABELS_ARCHIVE, urls, expected, "SegmentationClassAug")


def _download_and_extract(
    data_dir: PathLike, archive_name: str, urls: Sequence[str], expected: ExpectedFile | None, content: str
) -> Path:
    """Fetch and unpack ``archive_name`` unless its extraction marker exists; return data_dir/content."""
    data_dir = Path(data_dir)
    archive = data_dir / archive_name
    if not _extraction_marker(archive, data_dir).exists():
        download_file(urls, archive, expected)
        extract_archive(archive, data_dir)
    if not (data_dir / content).is_dir():
        raise DownloadError(
            f"{archive} was extracted into {data_dir} but {content}/ is not there; "
            f"expected the archive to contain it (is {archive_name} the right file?)"
        )
    return data_dir / content


def _fetch_and_verify(url: str, part: Path, expected: ExpectedFile, timeout: float, progress: bool) -> str:
    """Complete ``part`` from ``url``; return what differs from ``expected`` ("" when nothing)."""
    if expected.size is None or _size(part) != expected.size:
        _fetch_resuming(url, part, timeout, expected.size, progress)
    return _mismatch(part, expected)


def _fetch_resuming(url: str, part: Path, timeout: float, size: int | None, progress: bool) -> None:
    """Fetch ``url`` into ``part``; retry at once after a dropped connection that brought new bytes."""
    for _ in range(_MAX_RESUMES):
        size_before = _size(part)
        try:
            return _fetch(url, part, timeout, size, progress)
        except (OSError, http.client.HTTPException):
            if _size(part) <= size_before:
                raise
    _fetch(url, part, timeout, size, progress)


def _fetch(url: str, part: Path, timeout: float, size: int | None, progress: bool) -> None:
    """One request: append to ``part`` from its size, or rewrite it when the whole file comes.

    ``size`` (when known) is checked against what the server announces before anything is
    written, so an error page or another file never replaces bytes already received.
    """
    if size is not None and _size(part) > size:
        part.unlink()  # longer than the file: not a prefix of it
    offset = _size(part)
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        if size is not None:  # the part is shorter than the expected file: this one is shorter still
            raise _OtherFileError(f"the server refuses bytes from {offset:,} (416): its file is shorter") from None
        part.unlink()  # "range not satisfiable": the part does not fit this file, start over
        return _fetch(url, part, timeout, size, progress)
    with response:
        served_by = "" if response.url == url else f" (redirected to {response.url})"
        length = response.headers.get("Content-Length")
        if response.status == 206:
            total = _check_content_range(response.headers.get("Content-Range", ""), offset, served_by)
        else:
            offset = 0  # the server ignored the Range request and sends the whole file
            total = int(length) if length is not None else None
        if size is not None and total is not None and total != size:
            raise _OtherFileError(f"the server{served_by} announces {total:,} bytes, expected {size:,}")
        total = total if total is not None else size
        name = part.name.removesuffix(".part")
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
            disable=not progress,
        ) as bar:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    # urllib returns a short body without an error when the server closes the connection early.
    if total is not None and _size(part) < total:
        raise ConnectionError(f"the connection{served_by} closed after {_size(part):,} of {total:,} bytes")


def _check_content_range(content_range: str, offset: int, served_by: str) -> int | None:
    """The file's total size from a 206's ``bytes START-END/TOTAL`` (None for ``*``), after
    checking that it starts at ``offset``."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    if match is None or int(match.group(1)) != offset:
        raise ConnectionError(f"asked for bytes from {offset}, got Content-Range {content_range!r}{served_by}")
    return None if match.group(2) == "*" else int(match.group(2))


def _mismatch(path: Path, expected: ExpectedFile) -> str:
    """What of ``path`` differs from ``expected``, as "size 3 bytes, expected 4; md5 ..."; "" when nothing."""
    size = _size(path)
    problems = [f"size {size:,} bytes, expected {expected.size:,}"] if expected.size not in (None, size) else []
    wanted = expected.digests()
    actual = _digests(path, wanted) if wanted else {}
    problems += [f"{name} {actual[name]}, expected {value}" for name, value in wanted.items() if actual[name] != value]
    return "; ".join(problems)


def _check_existing_file(path: Path, expected: ExpectedFile) -> None:
    if mismatch := _mismatch(path, expected):
        raise ChecksumError(
            f"{path} has {mismatch}: it is damaged or another file; "
            "delete it and run the call again to download it"
        )


def _manual_steps(path: Path, urls: list[str], expected: ExpectedFile, failures: list[str]) -> str:
    part = path.with_name(path.name + ".part")
    return "\n".join(
        [
            f"Could not download {path.name}; every address failed:",
            *(f"  {failure}" for failure in failures),
            "To finish by hand:",
            f"  1. download {path.name} ({expected.describe()}) from one of the addresses above,",
            f"     in a browser or with  wget -c -O '{path}' '{urls[0]}'",
            f"  2. put it at {path}",
            "  3. run the same call again: it checks the file found there and goes on from it.",
            *([f"The {_size(part):,} bytes received so far stay in {part}; a later call resumes them."]
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


def _digests(path: Path, names: Iterable[str]) -> dict[str, str]:
    """{algorithm: hex digest of ``path``} for each hashlib algorithm name, in one read."""
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in names}
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}
