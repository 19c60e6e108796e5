"""A restricted reader of ``torch.save`` files and plain pickles: label arrays, never code.

Unpickling can run arbitrary code. This reader works without torch and, like
``torch.load(weights_only=True)``, resolves only the globals needed to rebuild plain arrays
(numpy's array, dtype and scalar reconstructors, ``collections.OrderedDict``, latin-1
``_codecs.encode`` for protocol-2 bytes, torch's tensor rebuild function and storage types,
reimplemented over numpy) and refuses any other global before anything is called. Both torch
formats are read: the zip format (torch >= 1.6: ``<archive>/data.pkl`` plus
``<archive>/data/<key>`` storage bytes) and the legacy raw-pickle stream (magic number, protocol
version, system info, the object, its storage keys, then each storage's bytes). Tensors come back
as :class:`Tensor` (``numpy()`` makes the array), bounds-checked against their storage; only
little-endian files are read.

A refusal raises :class:`Refused` (its message names the file); anything else wrong with the
file raises :class:`Malformed`, said without the file's name, which the caller adds.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct as _np_reconstruct
from numpy._core.multiarray import scalar as _np_scalar

__all__ = ["Malformed", "Refused", "Tensor", "load_stream", "load_zip", "zip_pickle_name"]

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "UntypedStorage": "u1",
}


class Malformed(Exception):
    """What is wrong with a pickle or torch file, said without the file's name."""


class Refused(Exception):
    """The file asks for a global or an external object that label arrays never need."""


class _StorageType:
    """What `torch.LongStorage` and its kind unpickle to: the element type."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype)


class _Storage:
    """A tensor storage: its elements (None until a legacy file's data is read)."""

    def __init__(self, dtype: np.dtype, numel: int, array: np.ndarray | None = None) -> None:
        self.dtype, self.numel, self.array = dtype, numel, array


class Tensor:
    """What `torch._utils._rebuild_tensor_v2` unpickles to; `numpy()` makes the array."""

    def __init__(self, storage: _Storage, offset: Any, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise Malformed("a tensor's storage data is missing")
        shape, stride, offset = self.size, self.stride, self.offset
        if not (
            isinstance(shape, tuple)
            and isinstance(stride, tuple)
            and len(shape) == len(stride)
            and all(type(x) is int and x >= 0 for x in (offset, *shape, *stride))
        ):
            raise Malformed("a tensor has an invalid offset, size or stride")
        n = math.prod(shape)
        if n == 0:
            return np.zeros(shape, base.dtype)
        last = offset + sum((s - 1) * st for s, st in zip(shape, stride))
        if last >= base.size or n > base.size:
            raise Malformed(
                f"a tensor of size {shape} (offset {offset}, stride {stride}) does not fit its "
                f"storage of {base.size} elements"
            )
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[offset:], shape=shape, strides=tuple(st * item for st in stride), writeable=False
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored) -> Tensor:
    """`torch._utils._rebuild_tensor_v2` (requires_grad, hooks and metadata are ignored)."""
    if not isinstance(storage, _Storage):
        raise Malformed("a tensor is rebuilt from something that is not a storage")
    return Tensor(storage, storage_offset, size, stride)


def _reconstruct(cls, shape, dtype) -> np.ndarray:
    """numpy's array unpickling constructor, for plain ndarrays only."""
    if cls is not np.ndarray:
        raise Malformed("an array of a class other than numpy.ndarray")
    return _np_reconstruct(cls, shape, dtype)


def _dtype(obj, align=False, copy=True) -> np.dtype:
    """numpy.dtype, always a fresh copy (unpickling then sets its state)."""
    return np.dtype(obj, bool(align), True)


def _frombuffer(buf, dtype, shape, order) -> np.ndarray:
    """numpy's protocol-5 array constructor."""
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _encode(text, encoding) -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Malformed("_codecs.encode is allowed only to turn latin-1 text into bytes")
    return text.encode("latin1")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
}
for _np_mod in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[_np_mod + ".multiarray", "_reconstruct"] = _reconstruct
    _SAFE_GLOBALS[_np_mod + ".multiarray", "scalar"] = _np_scalar
    _SAFE_GLOBALS[_np_mod + ".numeric", "_frombuffer"] = _frombuffer
del _np_mod


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals that plain arrays need (see `_SAFE_GLOBALS`)."""

    def __init__(
        self, file: Any, path: str, storage: Callable[[Any], _Storage] | None = None
    ) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])  # a fresh one: unpickling may alter it
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        raise Refused(
            f"label file {self._path!r} asks to load {module}.{name}, which a label file never "
            "needs; refusing to unpickle it (it could run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storage is None:
            raise Refused(
                f"label file {self._path!r} refers to an external object where none belongs; "
                "refusing to unpickle it"
            )
        return self._storage(pid)


def _storage_id(pid: Any, size: int) -> tuple[np.dtype, str, int, Any]:
    """Check a persistent id ('storage', storage_type, key, location, numel[, view])."""
    kind = pid[0] if isinstance(pid, tuple) and pid else None
    if kind not in ("storage", b"storage") or len(pid) != size:
        raise Malformed("it refers to an external object that is not a tensor storage")
    stype, key, _location, numel = pid[1:5]
    key = key.decode("ascii") if isinstance(key, bytes) else key
    if not isinstance(stype, _StorageType) or not isinstance(key, str):
        raise Malformed("a tensor storage has an invalid type or key")
    if type(numel) is not int or numel < 0:
        raise Malformed(f"tensor storage {key!r} has an invalid size")
    return stype.dtype, key, numel, pid[5] if size > 5 else None


def zip_pickle_name(zf: zipfile.ZipFile) -> str | None:
    """The `<archive>/data.pkl` entry of a torch.save zip (None when there is none)."""
    names = [n for n in zf.namelist() if n == "data.pkl" or re.fullmatch(r"[^/]+/data\.pkl", n)]
    return names[0] if len(names) == 1 else None


def load_zip(path: str) -> Any:
    """Unpickle a zip-format torch.save file: `<archive>/data.pkl` plus `<archive>/data/<key>`."""
    with zipfile.ZipFile(path) as zf:
        pkl = zip_pickle_name(zf)
        if pkl is None:
            raise Malformed("it is a zip archive with no single <archive>/data.pkl")
        prefix = pkl[: -len("data.pkl")]
        names = set(zf.namelist())
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder").strip().decode("ascii", "replace")
            if order != "little":
                raise Malformed(f"its byte order is {order!r}; only little-endian files are read")
        raw: dict[str, bytes] = {}

        def storage(pid: Any) -> _Storage:
            dtype, key, numel, _ = _storage_id(pid, 5)
            entry = f"{prefix}data/{key}"
            if key not in raw:
                if entry not in names:
                    raise Malformed(f"tensor storage {key!r} has no entry {entry!r}")
                raw[key] = zf.read(entry)
            nbytes = numel * dtype.itemsize
            if len(raw[key]) < nbytes:
                raise Malformed(f"entry {entry!r} holds {len(raw[key])} bytes, fewer than {nbytes}")
            return _Storage(dtype, numel, np.frombuffer(raw[key][:nbytes], dtype=dtype))

        return _SafeUnpickler(io.BytesIO(zf.read(pkl)), path, storage).load()


def load_stream(path: str) -> Any:
    """Unpickle a plain pickle, or a legacy torch.save file (magic number, protocol version,
    system info, the object, its storage keys, then each storage's size and bytes)."""
    with open(path, "rb") as f:
        first = _SafeUnpickler(f, path).load()
        if type(first) is not int or first != _TORCH_MAGIC:
            return first
        version = _SafeUnpickler(f, path).load()
        if version != _TORCH_PROTOCOL:
            raise Malformed(f"legacy torch format version {version!r} is not supported")
        info = _SafeUnpickler(f, path).load()
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise Malformed("it is not a little-endian legacy torch file")
        storages: dict[str, _Storage] = {}

        def storage(pid: Any) -> _Storage:
            dtype, key, numel, view = _storage_id(pid, 6)
            if view is not None:
                raise Malformed("it holds a storage view, which label files do not need")
            if key not in storages:
                storages[key] = _Storage(dtype, numel)
            elif storages[key].dtype != dtype:
                raise Malformed(f"tensor storage {key!r} is used with two element types")
            return storages[key]

        obj = _SafeUnpickler(f, path, storage).load()
        keys = _SafeUnpickler(f, path).load()
        if not isinstance(keys, list) or sorted(keys, key=str) != sorted(storages):
            raise Malformed("its list of storage keys does not match its tensors")
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", _read_exact(f, 8))
            if numel != st.numel:
                raise Malformed(f"tensor storage {key!r} holds {numel} elements, not {st.numel}")
            st.array = np.frombuffer(_read_exact(f, numel * st.dtype.itemsize), dtype=st.dtype)
        return obj


def _read_exact(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Malformed("it ends in the middle of a tensor storage")
    return data
