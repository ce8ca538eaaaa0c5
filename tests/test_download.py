"""advseg_utils.download against a real HTTP server on 127.0.0.1 that each test starts and stops.

The server serves small archives built by the tests, records every request (path and Range
header) and can cut a response short or ignore Range, like real hosts do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from advseg_utils.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    download_sbd,
    download_voc,
    download_voc_aug_labels,
    extract_archive,
)

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@dataclasses.dataclass
class Host:
    """What the loopback server serves, how it misbehaves, and the requests it saw."""

    base_url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    cut_after: dict[str, int] = dataclasses.field(default_factory=dict)  # path -> bytes, first response only
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        host: Host = self.server.host
        byte_range = self.headers.get("Range")
        host.requests.append((self.path, byte_range))
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
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.host = Host(base_url=f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.host
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


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

    assert download_file(host.url("/data.bin"), target, md5=md5_of(PAYLOAD)) == target

    assert host.requests == [("/data.bin", None), ("/data.bin", "bytes=3000-")]
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()


def test_part_left_by_an_earlier_session_is_resumed(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:4096])

    download_file(host.url("/data.bin"), tmp_path / "data.bin", md5=md5_of(PAYLOAD))

    assert host.requests == [("/data.bin", "bytes=4096-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_makes_the_download_start_over(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    host.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes that must not survive")

    download_file(host.url("/data.bin"), tmp_path / "data.bin", md5=md5_of(PAYLOAD))

    assert host.requests == [("/data.bin", "bytes=33-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_after_a_dropped_connection(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    host.ignore_range = True
    host.cut_after["/data.bin"] = 5000

    download_file(host.url("/data.bin"), tmp_path / "data.bin", md5=md5_of(PAYLOAD))

    assert host.requests == [("/data.bin", None), ("/data.bin", "bytes=5000-")]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_complete_part_refused_by_the_server_is_fetched_again(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)  # e.g. killed while verifying

    download_file(host.url("/data.bin"), tmp_path / "data.bin", md5=md5_of(PAYLOAD))

    assert host.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-"), ("/data.bin", None)]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_wrong_checksum_raises_and_leaves_no_file(host, tmp_path):
    host.files["/data.bin"] = PAYLOAD
    expected = "0123456789abcdef0123456789abcdef"

    with pytest.raises(ChecksumError) as raised:
        download_file(host.url("/data.bin"), tmp_path / "data.bin", md5=expected)

    message = str(raised.value)
    assert "data.bin" in message and expected in message and md5_of(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_used_without_network_and_verified(host, tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(PAYLOAD)

    assert download_file(host.url("/data.bin"), target, md5=md5_of(PAYLOAD)) == target
    with pytest.raises(ChecksumError, match=str(target)):
        download_file(host.url("/data.bin"), target, md5="f" * 32)
    assert host.requests == []
    assert target.read_bytes() == PAYLOAD  # a file the user placed is reported, never deleted


def test_mirrors_are_tried_in_order(host, tmp_path):
    host.files["/mirror/data.bin"] = PAYLOAD
    urls = [refused_url(), host.url("/missing/data.bin"), host.url("/mirror/data.bin")]

    download_file(urls, tmp_path / "data.bin", md5=md5_of(PAYLOAD))

    assert host.requests == [("/missing/data.bin", None), ("/mirror/data.bin", None)]
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_all_mirrors_failing_gives_the_manual_steps(host, tmp_path):
    urls = [refused_url(), host.url("/missing/data.bin")]
    target = tmp_path / "data.bin"

    with pytest.raises(DownloadError) as raised:
        download_file(urls, target, md5="0123456789abcdef0123456789abcdef")

    message = str(raised.value)
    for expected in (*urls, "404", str(target), "0123456789abcdef0123456789abcdef", "run the same call again"):
        assert expected in message
    assert not target.exists()


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

    root = download(data_dir, urls=[host.url("/archive")], md5=md5_of(archive))

    assert root == data_dir / expected_dir and root.is_dir()
    for name, data in content.items():
        assert (data_dir / name).read_bytes() == data
    assert len(host.requests) == 1

    edited = data_dir / next(iter(content))
    edited.write_bytes(b"edited after extraction")
    assert download(data_dir, urls=[host.url("/archive")], md5=md5_of(archive)) == root
    assert len(host.requests) == 1  # no network the second time
    assert edited.read_bytes() == b"edited after extraction"  # and no second extraction


def test_archive_without_the_expected_folder_is_reported(host, tmp_path):
    archive = make_tar({"something_else/readme.txt": b"?"})
    host.files["/archive"] = archive

    with pytest.raises(DownloadError, match="VOCdevkit/VOC2012"):
        download_voc(tmp_path, urls=[host.url("/archive")], md5=md5_of(archive))
