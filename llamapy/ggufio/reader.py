"""A validating GGUF reader: mmap, zero-copy numpy views of tensor data.

Every count, length and offset is checked against the bytes that are really there before anything is
allocated, so a malformed or hostile file is refused with one line naming the file and the problem
(`GGUFError`), never a crash, a hang or a large allocation. Keys, tensor names and string values must
be UTF-8, as the format says. Elements of string arrays (vocabularies) may hold other bytes: byte-level
vocabularies store raw bytes there and llama.cpp reads them as such; they are kept as surrogate escapes,
byte for byte, and escaped wherever they are shown.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GGUFError, LlamapyError
from ..util.gcpause import without_gc
from .constants import (
    GGML_MAX_DIMS,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSIONS,
    KEY_ALIGNMENT,
    PLAIN_DTYPES,
    SCALAR_DTYPES,
    TYPE_SIZES,
    ValueType,
    type_name,
)

MAX_ARRAY_DEPTH = 4
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
INT64_MAX = (1 << 63) - 1


@dataclass
class GGUFValue:
    """A metadata value with its GGUF type (and element type for arrays), so it can be written back as-is."""

    value: Any
    type: ValueType
    subtype: ValueType | None = None


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGML order: shape[0] is the row length (ne0)
    type: int
    offset: int  # absolute offset of the data in the file
    nbytes: int
    _buf: Any = field(default=None, repr=False)

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]

    @property
    def raw(self) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view, shaped (rows, bytes per row)."""
        flat = np.frombuffer(self._buf, dtype=np.uint8, count=self.nbytes, offset=self.offset)
        return flat.reshape(self.n_rows, self.nbytes // self.n_rows)

    @property
    def data(self) -> np.ndarray:
        """Plain types as their numpy dtype in numpy order (reversed GGML shape); block types as `raw`."""
        dt = PLAIN_DTYPES.get(self.type)
        if dt is None:
            return self.raw
        arr = np.frombuffer(self._buf, dtype=dt, count=self.n_elements, offset=self.offset)
        return arr.reshape(tuple(reversed(self.shape)))


class _Cursor:
    def __init__(self, buf, size: int, path: str):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path
        self.what = "header"

    def fail(self, msg: str):
        # names come from the file: escape control characters so the message stays one line
        msg = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", f"{self.path}: {msg}")
        raise GGUFError(msg)

    def need(self, n: int):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{self.what}: needs {n} bytes at offset {self.pos}, file has {self.size}")

    def scalar(self, fmt: str, n: int):
        self.need(n)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self) -> int:
        return self.scalar("<I", 4)

    def u64(self) -> int:
        return self.scalar("<Q", 8)

    def string(self) -> str:
        n = self.u64()
        if n > self.size - self.pos:
            self.fail(f"{self.what}: string length {n} runs past end of file (size {self.size})")
        raw = bytes(self.buf[self.pos : self.pos + n])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:  # GGUF strings are UTF-8: a key, a name or a value that isn't is refused
            self.fail(f"{self.what}: string at offset {self.pos} is not valid UTF-8 (byte {e.start} of {n})")
        self.pos += n
        return text

    def strings(self, n: int) -> list[str]:
        """n strings in a row (vocabularies hold 10^5 of them: read in C when possible)."""
        fast = _native_strings(self.buf, self.size, self.pos, n)
        if fast is not None:
            self.pos, out = fast
            return out
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out = []
        append = out.append
        for _ in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.need(8)
            (ln,) = unpack(buf, pos)
            pos += 8
            if ln > size - pos:
                self.pos = pos
                self.fail(f"{self.what}: string length {ln} runs past end of file (size {size})")
            raw = buf[pos : pos + ln]
            pos += ln
            try:
                append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                append(raw.decode("utf-8", errors="surrogateescape"))
        self.pos = pos
        return out


_U64 = struct.Struct("<Q")


def _native_strings(buf, size: int, pos: int, n: int) -> tuple[int, list[str]] | None:
    """(end, strings) from the C walker: the strings copied 0-separated, then decoded and split at once; None
    when it can't (the C extension is missing, a length is bad or a string holds a 0 byte): the Python
    loop then reads them and names any fault."""
    try:
        from ..native import ffi, lib
    except LlamapyError:
        return None
    src = ffi.from_buffer(buf)
    total = ffi.new("uint64_t *")
    end = lib.lp_gguf_strings(src, size, pos, n, ffi.NULL, 0, total)
    if end < 0:
        return None
    out = bytearray(total[0] + n)
    if lib.lp_gguf_strings(src, size, pos, n, ffi.from_buffer(out), len(out), total) != end:
        return None
    parts = out.decode("utf-8", errors="surrogateescape").split("\0")
    parts.pop()  # after the last separator
    return end, parts


def _value_type(cur: _Cursor, raw: int) -> ValueType:
    try:
        return ValueType(raw)
    except ValueError:
        cur.fail(f"{cur.what}: unknown value type {raw}")


def _read_value(cur: _Cursor, vt: ValueType, depth: int = 0) -> GGUFValue:
    if vt == ValueType.STRING:
        return GGUFValue(cur.string(), vt)
    if vt == ValueType.ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            cur.fail(f"{cur.what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        et = _value_type(cur, cur.u32())
        n = cur.u64()
        left = cur.size - cur.pos
        if et == ValueType.STRING:
            if n > left // 8:
                cur.fail(f"{cur.what}: array of {n} strings can't fit in the {left} bytes left")
            return GGUFValue(cur.strings(n), vt, et)
        if et == ValueType.ARRAY:
            if n > left // 12:
                cur.fail(f"{cur.what}: array of {n} arrays can't fit in the {left} bytes left")
            return GGUFValue([_read_value(cur, et, depth + 1) for _ in range(n)], vt, et)
        dt = SCALAR_DTYPES[et]
        if n > left // dt.itemsize:
            cur.fail(f"{cur.what}: array of {n} x {et.name} runs past end of file (size {cur.size})")
        arr = np.frombuffer(cur.buf, dtype=dt, count=n, offset=cur.pos).copy()
        if et == ValueType.BOOL:
            if arr.size and arr.max() > 1:
                cur.fail(f"{cur.what}: bool array holds a value other than 0 or 1")
            arr = arr.astype(bool)
        cur.pos += n * dt.itemsize
        return GGUFValue(arr, vt, et)
    dt = SCALAR_DTYPES[vt]
    cur.need(dt.itemsize)
    v = np.frombuffer(cur.buf, dtype=dt, count=1, offset=cur.pos)[0]
    cur.pos += dt.itemsize
    if vt == ValueType.BOOL:
        if v > 1:
            cur.fail(f"{cur.what}: bool value {int(v)} is neither 0 nor 1")
        return GGUFValue(bool(v), vt)
    if vt in (ValueType.FLOAT32, ValueType.FLOAT64):
        return GGUFValue(float(v), vt)
    return GGUFValue(int(v), vt)


class GGUFReader:
    """Open and validate a GGUF file. `kv` maps keys to `GGUFValue`; `tensors` maps names to `TensorInfo`.

    Use as a context manager, or call close(); numpy views of tensor data stay valid while it is open.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        name = self.path
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise GGUFError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise GGUFError(f"{name}: is a directory, not a GGUF file") from None
        except OSError as e:
            raise GGUFError(f"{name}: can't open: {e.strerror}") from None
        self._file = f
        try:
            self.size = os.fstat(f.fileno()).st_size
            if self.size == 0:
                raise GGUFError(f"{name}: empty file, not a GGUF file")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing -------------------------------------------------------------------------------
    @without_gc
    def _parse(self):
        cur = _Cursor(self._mmap, self.size, self.path)
        cur.what = "header"
        cur.need(4)
        magic = bytes(self._mmap[:4])
        if magic != GGUF_MAGIC:
            cur.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.u32()
        if version not in GGUF_VERSIONS:
            if version == 1:
                cur.fail("GGUF version 1 is not supported (re-convert the model to GGUF v3)")
            if version & 0xFFFF == 0 and (version >> 24) in GGUF_VERSIONS:
                cur.fail("big-endian GGUF files are not supported")
            cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        n_tensors = cur.u64()
        n_kv = cur.u64()
        # each KV takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8+4+8+4+8
        if n_kv > (self.size - cur.pos) // 13:
            cur.fail(f"header: {n_kv} metadata entries can't fit in a {self.size}-byte file")
        if n_tensors > (self.size - cur.pos) // 32:
            cur.fail(f"header: {n_tensors} tensors can't fit in a {self.size}-byte file")

        self.kv: dict[str, GGUFValue] = {}
        for i in range(n_kv):
            cur.what = f"metadata entry {i}"
            key = cur.string()
            if not key:
                cur.fail(f"metadata entry {i}: empty key")
            cur.what = f"metadata '{key}'"
            if key in self.kv:
                cur.fail(f"duplicate metadata key '{key}'")
            vt = _value_type(cur, cur.u32())
            self.kv[key] = _read_value(cur, vt)

        alignment = GGUF_DEFAULT_ALIGNMENT
        if KEY_ALIGNMENT in self.kv:
            a = self.kv[KEY_ALIGNMENT]
            if a.type != ValueType.UINT32:
                cur.fail(f"metadata '{KEY_ALIGNMENT}' must be UINT32, is {a.type.name}")
            alignment = a.value
            if alignment == 0 or alignment & (alignment - 1):
                cur.fail(f"alignment {alignment} is not a power of two")
        self.alignment = alignment

        infos = []
        names = set()
        for i in range(n_tensors):
            cur.what = f"tensor info {i}"
            tname = cur.string()
            cur.what = f"tensor '{tname}'"
            if tname in names:
                cur.fail(f"duplicate tensor name '{tname}'")
            names.add(tname)
            n_dims = cur.u32()
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                cur.fail(f"tensor '{tname}': {n_dims} dimensions (must be 1 to {GGML_MAX_DIMS})")
            shape = tuple(cur.u64() for _ in range(n_dims))
            ttype = cur.u32()
            offset = cur.u64()
            infos.append((tname, shape, ttype, offset))

        cur.what = "header"
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        if data_start > self.size and infos:
            cur.fail(f"tensor data would start at {data_start}, past end of file (size {self.size})")
        self.data_offset = data_start

        self.tensors: dict[str, TensorInfo] = {}
        spans = []
        for tname, shape, ttype, offset in infos:
            where = f"tensor '{tname}'"
            if ttype not in TYPE_SIZES:
                cur.fail(f"{where}: unknown tensor type {ttype}")
            blck, tsize = TYPE_SIZES[ttype]
            n = 1
            for d in shape:
                if d < 1:
                    cur.fail(f"{where}: dimension {d} in shape {list(shape)} (every dimension must be >= 1)")
                n *= d
                if n > INT64_MAX:
                    cur.fail(f"{where}: element count of shape {list(shape)} overflows 64 bits")
            if shape[0] % blck:
                cur.fail(
                    f"{where}: row length {shape[0]} is not a multiple of {type_name(ttype)}'s block size {blck}"
                )
            nbytes = n // blck * tsize
            if nbytes > INT64_MAX:
                cur.fail(f"{where}: byte size of shape {list(shape)} overflows 64 bits")
            if offset % alignment:
                cur.fail(f"{where}: data offset {offset} is not aligned to {alignment}")
            start = data_start + offset
            end = start + nbytes
            if end > self.size:
                cur.fail(f"{where}: data [{start}, {end}) ends past end of file (size {self.size})")
            spans.append((start, end, tname))
            self.tensors[tname] = TensorInfo(tname, shape, ttype, start, nbytes, self._mmap)
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                cur.fail(f"tensor '{n1}': data [{s1}, {e1}) overlaps tensor '{n0}' [{s0}, {e0})")

    # -- access -----------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        v = self.kv.get(key)
        return default if v is None else v.value

    def __contains__(self, key: str) -> bool:
        return key in self.kv

    @property
    def architecture(self) -> str | None:
        return self.get("general.architecture")

    def close(self):
        m = getattr(self, "_mmap", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # numpy views still alive; the mapping goes when they do
            self._mmap = None
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
