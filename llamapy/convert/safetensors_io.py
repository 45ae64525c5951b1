"""A validating safetensors reader: the header is checked before any tensor is touched.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
then the data buffer; offsets are relative to the buffer. Checked here: N fits in the file and under a
cap, the JSON is an object of well-formed entries, every tensor's bytes lie inside the file, byte counts
equal shape x dtype size, and no two tensors overlap.
"""
from __future__ import annotations

import math
import os
import struct
from itertools import pairwise

from ..errors import LlamapyError
from ..util.jsonio import load_json_bounded
from .lazy import DTYPES, FileTensor

MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

# safetensors dtype names -> ours (the same names, minus the ones we never meet in weights)
SAFETENSORS_DTYPES = {name: name for name in DTYPES}


def read_header(path: str) -> tuple[int, dict]:
    """(data start offset, {name: info}) of a safetensors file, fully validated."""
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LlamapyError(f"{name}: {size} bytes, too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise LlamapyError(f"{name}: header length {n} is over the {MAX_HEADER}-byte limit (not safetensors?)")
            if 8 + n > size:
                raise LlamapyError(f"{name}: header length {n} runs past the end of the {size}-byte file (truncated?)")
            raw = f.read(n)
    except OSError as e:
        raise LlamapyError(f"{name}: can't read: {e.strerror}") from None
    try:
        header = load_json_bounded(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LlamapyError(f"{name}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise LlamapyError(f"{name}: header is a JSON {type(header).__name__}, not an object")

    data_start = 8 + n
    data_size = size - data_start
    spans = []
    tensors = {}
    for tname, info in header.items():
        if tname == "__metadata__":
            if not isinstance(info, dict):
                raise LlamapyError(f"{name}: __metadata__ is not an object")
            continue
        where = f"{name}: tensor '{tname}'"
        if not isinstance(info, dict):
            raise LlamapyError(f"{where}: entry is not an object")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise LlamapyError(f"{where}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise LlamapyError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise LlamapyError(f"{where}: bad data_offsets {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end:
            raise LlamapyError(f"{where}: data_offsets [{begin}, {end}] are not in order")
        if end > data_size:
            raise LlamapyError(
                f"{where}: data ends at byte {data_start + end}, past the end of the {size}-byte file (truncated?)"
            )
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise LlamapyError(
                f"{where}: {end - begin} bytes of data for shape {shape} {dtype}, which needs {expected}"
            )
        spans.append((begin, end, tname))
        tensors[tname] = {"dtype": dtype, "shape": shape, "begin": begin, "end": end}
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in pairwise(spans):
        if b1 < e0:
            raise LlamapyError(f"{name}: tensor '{n1}' [{b1}, {e1}) overlaps tensor '{n0}' [{b0}, {e0})")
    return data_start, tensors


def load_safetensors(path: str) -> dict[str, FileTensor]:
    """Lazy tensors of a safetensors file, in name order (the order the reference converter walks them)."""
    data_start, infos = read_header(path)
    out = {}
    for tname in sorted(infos):
        info = infos[tname]
        out[tname] = FileTensor(path, data_start + info["begin"], info["shape"], info["dtype"],
                                f"{os.fspath(path)}: tensor '{tname}'")
    return out
