"""PyTorch checkpoints (`.pth`, `pytorch_model*.bin`) read without torch and without running their code.

A torch checkpoint is a zip: `<prefix>/data.pkl` (a pickle describing the tensors) and one entry per
storage, `<prefix>/data/<key>`, holding raw little-endian elements. The pickle is read with an
unpickler that resolves only the names a checkpoint of weights needs (the tensor rebuild functions,
the typed storage classes, `OrderedDict`), each to an inert stand-in defined here; any other name
(`os.system`, `builtins.eval`, ...) is refused before it is called, so nothing from the file runs.
Tensors come back lazy: reading one reads its bytes straight from the zip entry.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from ..errors import LlamapyError
from .lazy import DTYPES, FileTensor, LazyTensor, StridedTensor

MAX_PICKLE = 256 * 1024 * 1024

# torch storage class -> our dtype name
STORAGE_TYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


class _Refused(pickle.UnpicklingError):
    """The pickle asked for a name outside the allow-list."""


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _TypeMarker:
    """Stands in for torch.Tensor / torch.nn.Parameter when a pickle names them as a type argument."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    def __init__(self, dtype: str, numel: int, entry: str, reader: _ZipReader):
        self.dtype = dtype
        self.numel = numel
        self.entry = entry
        self.reader = reader


class _Unpickler(pickle.Unpickler):
    def __init__(self, fp, reader: _ZipReader):
        super().__init__(fp)
        self.reader = reader

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if full == "torch._utils._rebuild_tensor_v2":
            return self._rebuild_tensor
        if full == "torch._utils._rebuild_tensor":
            return self._rebuild_tensor
        if full == "torch._utils._rebuild_parameter":
            return _rebuild_parameter
        if full == "torch._tensor._rebuild_from_type_v2":
            return self._rebuild_from_type_v2
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(STORAGE_TYPES[name])
        if full in ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter"):
            return _TypeMarker(full)
        raise _Refused(
            f"its pickle asks for '{full}', which a checkpoint of weights never needs (only tensors and "
            f"OrderedDict are allowed); refused before anything ran"
        )

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self.reader.storage(pid[1].dtype, pid[2], pid[4])

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_ignored) -> LazyTensor:
        return self.reader.tensor(storage, storage_offset, size, stride)

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        if func != self._rebuild_tensor and func is not _rebuild_parameter:
            raise pickle.UnpicklingError("unexpected rebuild function")
        if not isinstance(new_type, _TypeMarker) or not isinstance(args, tuple):
            raise pickle.UnpicklingError("unexpected tensor type")
        return func(*args)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    if not isinstance(data, LazyTensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _is_int_seq(v) -> bool:
    return isinstance(v, (tuple, list)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


class _ZipReader:
    """Maps storage keys to byte ranges of the zip file (stored entries) or to their decompressed bytes."""

    def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, file_size: int):
        self.path = path
        self.zf = zf
        self.prefix = prefix
        self.file_size = file_size
        self._storages: dict[str, _Storage] = {}
        self._offsets: dict[str, int] = {}

    def storage(self, dtype: str, key: str, numel: int) -> _Storage:
        entry = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(entry)
        except KeyError:
            raise pickle.UnpicklingError(f"storage '{key}' has no entry '{entry}' in the zip") from None
        need = numel * DTYPES[dtype].itemsize
        if info.file_size < need:
            raise pickle.UnpicklingError(
                f"storage '{key}' holds {info.file_size} bytes, its {numel} elements need {need}"
            )
        s = self._storages.get(entry)
        if s is None:
            s = self._storages[entry] = _Storage(dtype, numel, entry, self)
        return s

    def data_offset(self, entry: str) -> int | None:
        """File offset of a stored (uncompressed) entry's bytes, or None if it is compressed."""
        if entry in self._offsets:
            return self._offsets[entry]
        info = self.zf.getinfo(entry)
        off = None
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise LlamapyError(f"{self.path}: zip entry '{entry}' has no valid local header (corrupt zip)")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            off = info.header_offset + 30 + name_len + extra_len
            if off + info.file_size > self.file_size:
                raise LlamapyError(f"{self.path}: zip entry '{entry}' runs past the end of the file (truncated?)")
        self._offsets[entry] = off
        return off

    def tensor(self, storage, storage_offset, size, stride) -> LazyTensor:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("tensor without a storage")
        if not (isinstance(storage_offset, int) and _is_int_seq(size) and _is_int_seq(stride)
                and len(size) == len(stride) and storage_offset >= 0):
            raise pickle.UnpicklingError("malformed tensor description")
        if any(d < 0 for d in size) or any(s < 0 for s in stride):
            raise pickle.UnpicklingError(f"negative size or stride in tensor {list(size)} / {list(stride)}")
        n = int(np.prod(size, dtype=object)) if size else 1
        if n and storage_offset + sum((d - 1) * s for d, s in zip(size, stride)) >= storage.numel:
            raise pickle.UnpicklingError(
                f"tensor of shape {list(size)} at offset {storage_offset} reaches past its storage of "
                f"{storage.numel} elements"
            )
        where = f"{self.path}: {storage.entry}"
        contiguous = list(stride) == [int(np.prod(size[i + 1:], dtype=object)) for i in range(len(size))]
        item = DTYPES[storage.dtype].itemsize
        off = self.data_offset(storage.entry)
        if contiguous and off is not None:
            return FileTensor(self.path, off + storage_offset * item, size, storage.dtype, where)
        return StridedTensor(self._span_loader(storage), storage_offset, size, stride, storage.dtype, where)

    def _span_loader(self, storage: _Storage):
        dt = DTYPES[storage.dtype]

        def load(first: int, count: int) -> np.ndarray:
            off = self.data_offset(storage.entry)
            if off is not None:
                t = FileTensor(self.path, off + first * dt.itemsize, (count,), storage.dtype, storage.entry)
                return t.rows(0, count)
            with self.zf.open(storage.entry) as f:
                f.seek(first * dt.itemsize)
                raw = f.read(count * dt.itemsize)
            if len(raw) != count * dt.itemsize:
                raise LlamapyError(f"{self.path}: zip entry '{storage.entry}' is shorter than its tensor")
            return np.frombuffer(raw, dtype=dt).copy()

        return load


def load_torch_file(path: str) -> collections.OrderedDict[str, LazyTensor]:
    """Lazy tensors of a torch zip checkpoint, in the pickle's order. Refuses pickles that ask for code."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise LlamapyError(f"{path}: can't read: {e.strerror}") from None
    if magic[:2] != b"PK":
        raise LlamapyError(
            f"{path}: not a zip-format PyTorch checkpoint (legacy pre-1.6 torch.save files are not supported; "
            f"re-save it with a recent torch, or use safetensors)"
        )
    try:
        zf = zipfile.ZipFile(path)
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkls) != 1:
            raise LlamapyError(f"{path}: expected one data.pkl in the checkpoint, found {len(pkls)}")
        info = zf.getinfo(pkls[0])
        if info.file_size > MAX_PICKLE:
            raise LlamapyError(f"{path}: data.pkl is {info.file_size} bytes, over the {MAX_PICKLE}-byte limit")
        raw = zf.read(pkls[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise LlamapyError(f"{path}: corrupt or truncated zip checkpoint ({e})") from None
    prefix = pkls[0][: -len("data.pkl")]
    reader = _ZipReader(path, zf, prefix, size)
    try:
        obj = _Unpickler(io.BytesIO(raw), reader).load()
    except _Refused as e:
        raise LlamapyError(f"refusing to load {path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error) as e:
        raise LlamapyError(f"{path}: malformed checkpoint pickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise LlamapyError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    out: collections.OrderedDict[str, LazyTensor] = collections.OrderedDict()
    for k, v in obj.items():
        if not isinstance(k, str):
            raise LlamapyError(f"{path}: tensor name {k!r} is not a string")
        if isinstance(v, LazyTensor):
            out[k] = v
        elif k.endswith("_extra_state") or v is None:
            continue
        else:
            raise LlamapyError(f"{path}: entry '{k}' is a {type(v).__name__}, not a tensor")
    return out
