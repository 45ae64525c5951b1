"""GGUF writer: every value type and arrays, any alignment, tensor data streamed, written atomically.

    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("llama.block_count", 2, ValueType.UINT32)
        w.add_tensor_info("token_embd.weight", (dim, n_vocab), TensorType.F16)
        w.write_header()
        w.write_tensor_data("token_embd.weight", array_or_bytes)

The file appears at `path` only when the `with` block ends without an exception.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LlamapyError
from ..util.fileio import atomic_write
from .constants import (
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    KEY_ALIGNMENT,
    SCALAR_DTYPES,
    TYPE_SIZES,
    ValueType,
    type_name,
)
from .reader import GGUFValue


def _infer_type(value: Any) -> tuple[ValueType, ValueType | None]:
    if isinstance(value, GGUFValue):
        return value.type, value.subtype
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL, None
    if isinstance(value, (int, np.integer)):
        return (ValueType.UINT32 if 0 <= value < 2**32 else ValueType.INT64), None
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32, None
    if isinstance(value, str):
        return ValueType.STRING, None
    if isinstance(value, np.ndarray):
        for vt, dt in SCALAR_DTYPES.items():
            if dt == value.dtype.newbyteorder("<") and vt != ValueType.BOOL:
                return ValueType.ARRAY, vt
        if value.dtype == bool:
            return ValueType.ARRAY, ValueType.BOOL
        raise LlamapyError(f"can't store a numpy array of {value.dtype} in GGUF")
    if isinstance(value, (list, tuple)):
        if not value:
            return ValueType.ARRAY, ValueType.INT32
        et, _ = _infer_type(value[0])
        return ValueType.ARRAY, et
    raise LlamapyError(f"can't store a {type(value).__name__} in GGUF")


def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _pack_value(value: Any, vt: ValueType, subtype: ValueType | None) -> bytes:
    if isinstance(value, GGUFValue):
        value = value.value
    if vt == ValueType.STRING:
        return _pack_string(value)
    if vt == ValueType.ARRAY:
        if subtype is None:
            raise LlamapyError("array value without an element type")
        head = struct.pack("<IQ", int(subtype), len(value))
        if subtype == ValueType.STRING:
            return head + b"".join(_pack_string(s) for s in value)
        if subtype == ValueType.ARRAY:
            parts = []
            for v in value:
                inner_vt, inner_sub = _infer_type(v)
                parts.append(_pack_value(v, inner_vt, inner_sub))
            return head + b"".join(parts)
        if subtype == ValueType.BOOL:
            value = np.asarray(value, dtype=bool)
        return head + np.asarray(value, dtype=SCALAR_DTYPES[subtype]).tobytes()
    dt = SCALAR_DTYPES[vt]
    if vt == ValueType.BOOL:
        value = bool(value)
    return np.array(value, dtype=dt).tobytes()


class GGUFWriter:
    def __init__(self, path: str | os.PathLike, alignment: int = GGUF_DEFAULT_ALIGNMENT, version: int = 3):
        if alignment <= 0 or alignment & (alignment - 1):
            raise LlamapyError(f"alignment {alignment} is not a power of two")
        self.path = os.fspath(path)
        self.alignment = alignment
        self.version = version
        self.kv: dict[str, tuple[Any, ValueType, ValueType | None]] = {}
        self.tensors: dict[str, tuple[tuple[int, ...], int, int, int]] = {}  # name -> shape,type,nbytes,offset
        self._data_size = 0
        self._ctx = None
        self._f = None
        self._written: list[str] = []
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add(KEY_ALIGNMENT, alignment, ValueType.UINT32)

    # -- metadata -------------------------------------------------------------------------------
    def add(self, key: str, value: Any, vtype: ValueType | None = None, subtype: ValueType | None = None):
        """Add a metadata value; its type is inferred unless given (ints become UINT32 when they fit)."""
        if self._f is not None and self._header_done:
            raise LlamapyError("metadata can't be added after the header is written")
        if vtype is None:
            vtype, subtype = _infer_type(value)
        elif vtype == ValueType.ARRAY and subtype is None:
            _, subtype = _infer_type(value)
        self.kv[key] = (value.value if isinstance(value, GGUFValue) else value, vtype, subtype)

    def add_value(self, key: str, v: GGUFValue):
        self.add(key, v.value, v.type, v.subtype)

    # -- tensors -------------------------------------------------------------------------------
    def add_tensor_info(self, name: str, shape: Sequence[int], ttype: int):
        """Declare a tensor; `shape` in GGML order (shape[0] is the row length)."""
        if name in self.tensors:
            raise LlamapyError(f"duplicate tensor name '{name}'")
        if ttype not in TYPE_SIZES:
            raise LlamapyError(f"tensor '{name}': unknown tensor type {ttype}")
        blck, tsize = TYPE_SIZES[ttype]
        shape = tuple(int(d) for d in shape)
        if not shape or len(shape) > 4 or min(shape) < 1:
            raise LlamapyError(f"tensor '{name}': bad shape {list(shape)}")
        if shape[0] % blck:
            raise LlamapyError(
                f"tensor '{name}': row length {shape[0]} is not a multiple of {type_name(ttype)}'s block size {blck}"
            )
        n = int(np.prod(shape, dtype=object))
        nbytes = n // blck * tsize
        offset = self._data_size
        self.tensors[name] = (shape, ttype, nbytes, offset)
        self._data_size = offset + (nbytes + self.alignment - 1) // self.alignment * self.alignment

    # -- writing -------------------------------------------------------------------------------
    def __enter__(self):
        self._ctx = atomic_write(self.path)
        self._f = self._ctx.__enter__()
        self._header_done = False
        return self

    def __exit__(self, et, ev, tb):
        try:
            if et is None:
                missing = [n for n in self.tensors if n not in self._written]
                if not self._header_done:
                    self.write_header()
                    missing = [n for n in self.tensors if n not in self._written]
                if missing:
                    raise LlamapyError(f"{self.path}: no data written for tensor '{missing[0]}'")
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self._ctx.__exit__(et, ev, tb)

    def _header_bytes(self) -> bytes:
        out = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))]
        for key, (value, vt, st) in self.kv.items():
            out.append(_pack_string(key))
            out.append(struct.pack("<I", int(vt)))
            out.append(_pack_value(value, vt, st))
        for name, (shape, ttype, _nbytes, offset) in self.tensors.items():
            out.append(_pack_string(name))
            out.append(struct.pack("<I", len(shape)))
            out.append(struct.pack(f"<{len(shape)}Q", *shape))
            out.append(struct.pack("<IQ", ttype, offset))
        return b"".join(out)

    def write_header(self):
        if self._f is None:
            raise LlamapyError("GGUFWriter must be used as a context manager")
        head = self._header_bytes()
        pad = (-len(head)) % self.alignment
        self._f.write(head + b"\0" * pad)
        self._header_done = True
        self._next = 0

    def write_tensor_data(self, name: str, data):
        """Write one tensor's bytes (numpy array or bytes-like), in the order the tensors were declared."""
        if not self._header_done:
            self.write_header()
        order = list(self.tensors)
        if len(self._written) >= len(order) or order[len(self._written)] != name:
            expected = order[len(self._written)] if len(self._written) < len(order) else "(none)"
            raise LlamapyError(f"tensor data for '{name}' written out of order (expected '{expected}')")
        shape, ttype, nbytes, _offset = self.tensors[name]
        buf = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if buf.nbytes != nbytes:
            raise LlamapyError(f"tensor '{name}': {buf.nbytes} bytes of data, expected {nbytes}")
        self._f.write(buf)
        pad = (-nbytes) % self.alignment
        if pad:
            self._f.write(b"\0" * pad)
        self._written.append(name)
