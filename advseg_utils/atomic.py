"""Atomic writes: a file or folder is built under a temporary name beside its target, then
renamed over it, so that a reader (another worker, a later run) never sees half of it and a
write that fails (a full disk, an interruption) leaves the previous version in place.

A resumable download's ``.part`` file (:mod:`advseg_utils.download`) is another mechanism: it
is kept on failure, to be continued, so it does not go through this module.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file system TensorFlow reaches by URL (``gs://...``), not a local one."""
    return "://" in os.fspath(path)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".partial") -> Iterator[Path | str]:
    """Yields a temporary path beside ``target`` to write a file or folder to; when the block
    ends without error, renames it over ``target``, else removes it and re-raises.

    The temporary name is hidden (a leading dot), unique (writers in parallel do not collide)
    and ends with ``suffix``: pass e.g. ``".partial.keras"`` where the writer insists on an
    extension. ``target``'s folder is created if needed. A file ``target`` is replaced; a folder
    is not (the rename fails): remove it as the block's last step when it is to be replaced.
    Remote paths (``gs://...``) go through ``tf.io.gfile`` and are yielded as ``str`` (files
    only there); local ones as ``Path``.
    """
    if is_remote(target):
        import tensorflow as tf  # only remote paths need it

        target = os.fspath(target)
        folder, name = posixpath.split(target.rstrip("/"))
        temporary = posixpath.join(folder, _temporary_name(name, suffix))
        tf.io.gfile.makedirs(folder)
        try:
            yield temporary
            tf.io.gfile.rename(temporary, target, overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)  # frees the space a full disk needs
            raise
        return
    target = Path(target)
    temporary = target.with_name(_temporary_name(target.name, suffix))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary)
        elif temporary.exists() or temporary.is_symlink():
            temporary.unlink()
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` (local or remote) through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        if isinstance(temporary, Path):
            temporary.write_text(text)
        else:
            import tensorflow as tf

            with tf.io.gfile.GFile(temporary, "w") as f:
                f.write(text)


def _temporary_name(name: str, suffix: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:8]}{suffix}"
