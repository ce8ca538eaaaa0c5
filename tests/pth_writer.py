"""Writes PyTorch legacy-format ``.pth`` files without PyTorch, for the tests of advseg_utils.pth:
state dicts with a tensor missing, added or reshaped, and files whose pickle would run code.

The layout is ``torch.save(..., _use_new_zipfile_serialization=False)``'s (see advseg_utils.pth);
the files it writes for real tensors are read back by ``torch.load`` as well.
"""
from __future__ import annotations

import collections
import pickle

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


class Global:
    """A reference to ``module.name``, pickled as that global without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable; this one is only a name
        raise TypeError(f"{self.module}.{self.name} is only a reference")


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        strides = tuple(int(np.prod(self.shape[i + 1 :])) for i in range(len(self.shape)))
        args = (self.storage, 0, self.shape, strides, False, collections.OrderedDict())
        return Global("torch._utils", "_rebuild_tensor_v2"), args


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_reference(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[Global] = _save_reference

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", Global("torch", STORAGE_TYPES[obj.array.dtype]), obj.key, "cpu", obj.array.size, None)
        return None


def write_state_dict(path, state: dict[str, np.ndarray]) -> None:
    """``torch.save(state)`` in the legacy format, for float32 and int64 arrays."""
    storages = {name: _Storage(str(index), array) for index, (name, array) in enumerate(state.items())}
    tensors = collections.OrderedDict((name, _Tensor(storages[name], np.shape(state[name]))) for name in state)
    with open(path, "wb") as file:
        for header in (MAGIC_NUMBER, 1001, SYS_INFO):
            pickle.dump(header, file, protocol=2)
        _Pickler(file, protocol=2).dump(tensors)
        pickle.dump([storage.key for storage in storages.values()], file, protocol=2)
        for storage in storages.values():
            file.write(storage.array.size.to_bytes(8, "little"))
            file.write(storage.array.astype(storage.array.dtype.newbyteorder("<")).tobytes())


def write_pickle_in_place_of_state(path, payload, header_payload=False) -> None:
    """A legacy ``.pth`` whose state-dict pickle (or, with ``header_payload``, whose system-info
    pickle) is ``payload``'s pickle."""
    with open(path, "wb") as file:
        pickle.dump(MAGIC_NUMBER, file, protocol=2)
        pickle.dump(1001, file, protocol=2)
        for item in (payload, SYS_INFO) if header_payload else (SYS_INFO, payload):
            _Pickler(file, protocol=2).dump(item)
        pickle.dump([], file, protocol=2)
