"""Reading PyTorch ``.pth`` state dicts without PyTorch and without trusting the file.

A ``.pth`` file is a pickle, and a pickle can name any importable callable and have it run while
loading. :func:`read_pth` unpickles with an allow-list (the standard library's documented way to
restrict unpickling): the only globals it resolves are the few a plain tensor state dict names,
and each resolves to a stand-in defined here, never to the named object; any other global is
refused before anything runs. Nothing from PyTorch is imported.

Both of ``torch.save``'s formats are read: the legacy one (PyTorch < 1.6, and
``_use_new_zipfile_serialization=False``: a pickled magic number, protocol version and system
info, the state dict's pickle, a pickle of the storage keys, then each storage as an 8-byte
element count and its little-endian bytes) and the zip archive (``<name>/data.pkl`` and one
``<name>/data/<key>`` file of raw bytes per storage).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

#: The storage types a state dict may name, as the numpy dtypes of their elements.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file's pickle names a global that a plain tensor state dict does not need."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element type is kept."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _Tensor:
    """A tensor whose storage bytes are read after the pickle: a strided view of a storage."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


class _OrderedDict(dict):
    """Stand-in for ``collections.OrderedDict`` (a dict keeps its order; PyTorch sets an
    attribute, ``_metadata``, on state dicts, so instances accept attributes)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals, to stand-ins; storages come back as records."""

    def __init__(self, file, path, storages: dict[str, _Storage], legacy: bool):
        super().__init__(file)
        self._path, self._storages, self._legacy = path, storages, legacy

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self._path} names the global {module}.{name}, which a tensor state dict does not need; "
                f"refused (only {', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED))} are allowed)"
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, saved_id):
        expected_length = 6 if self._legacy else 5
        if not (isinstance(saved_id, tuple) and len(saved_id) == expected_length and _text(saved_id[0]) == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {saved_id!r}; expected a storage")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: storage {key!r} has type {storage_type!r}, not a storage type")
        if self._legacy and saved_id[5] is not None:
            raise pickle.UnpicklingError(f"{self._path}: storage {key!r} is a view of another storage, not supported")
        key = _text(key)
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, int(numel)))
        return storage


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict saved by ``torch.save(model.state_dict(), path)``: name -> numpy array.

    Raises :class:`UnsafePickleError` (naming the global and the file) if the pickle names
    anything a tensor state dict does not need, and ``ValueError`` for a file that is not a
    state dict of tensors.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        if zipfile.is_zipfile(file):
            file.seek(0)
            state = _read_zip(file, path)
        else:
            file.seek(0)
            state = _read_legacy(file, path)
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (name -> tensor)")
    return dict(state)


def _read_legacy(file, path: str):
    def load_plain():
        return _RestrictedUnpickler(file, path, {}, legacy=True).load()

    try:
        if load_plain() != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is not a PyTorch file: wrong magic number")
        version = load_plain()
        if version != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: legacy PyTorch protocol version {version}, expected {LEGACY_PROTOCOL_VERSION}")
        load_plain()  # system info (endianness, type sizes)
        storages: dict[str, _Storage] = {}
        state = _RestrictedUnpickler(file, path, storages, legacy=True).load()
        keys = load_plain()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"{path} is not a readable PyTorch file: {error}") from error
    data = {}
    for key in keys:
        storage = storages[_text(key)]
        count = int.from_bytes(file.read(8), "little")
        buffer = file.read(count * storage.dtype.itemsize)
        if count != storage.numel or len(buffer) != count * storage.dtype.itemsize:
            raise ValueError(f"{path}: storage {storage.key} is truncated or has the wrong size")
        data[storage.key] = np.frombuffer(buffer, storage.dtype)
    return _materialise(state, data, path)


def _read_zip(file, path: str):
    with zipfile.ZipFile(file) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file without exactly one <name>/data.pkl: not a PyTorch file")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        try:
            state = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages, legacy=False).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"{path} is not a readable PyTorch file: {error}") from error
        data = {}
        for key, storage in storages.items():
            buffer = archive.read(f"{prefix}data/{key}")
            if len(buffer) != storage.numel * storage.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated or has the wrong size")
            data[key] = np.frombuffer(buffer, storage.dtype)
    return _materialise(state, data, path)


def _materialise(state, data: dict[str, np.ndarray], path: str):
    """The state with every tensor record replaced by a numpy array of its storage's bytes."""
    if not isinstance(state, dict):
        return state
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor):
            return state  # not a tensor state dict; read_pth says so
        storage = data[tensor.storage.key]
        last_element = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.strides))
        if tensor.offset < 0 or min(tensor.strides, default=0) < 0 or (all(tensor.shape) and last_element >= storage.size):
            raise ValueError(f"{path}: tensor {name} lies outside its storage")
        strides_in_bytes = [stride * storage.dtype.itemsize for stride in tensor.strides]
        view = np.lib.stride_tricks.as_strided(storage[tensor.offset :], tensor.shape, strides_in_bytes, writeable=False)
        arrays[str(name)] = np.array(view)
    return arrays


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
