"""Tensors that are read only when written: a shape, a source dtype, and a way to read a range of rows.

Checkpoints are never loaded whole. Each tensor reads its rows (axis 0) straight from the file with
plain reads into a fresh buffer, so resident memory stays at the chunk being converted, not the
checkpoint: shards are merged and q/k rows permuted chunk by chunk, on the fly.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import LlamapyError

# source dtype name -> numpy dtype of its stored element (BF16 is kept as its raw 16 bits)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("<i1"),
    "U8": np.dtype("<u1"),
    "BOOL": np.dtype("bool"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class LazyTensor:
    """A tensor in numpy order (`shape[0]` rows) whose data is read on demand with `rows(r0, r1)`."""

    shape: tuple[int, ...]
    dtype: str
    where: str  # "file: tensor" for messages

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.n_elements * DTYPES[self.dtype].itemsize

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) in the source dtype, shaped (r1 - r0, *shape[1:]); 0-d tensors as shape (1,)."""
        raise NotImplementedError

    def read(self) -> np.ndarray:
        return self.rows(0, self.n_rows).reshape(self.shape)


def _read_exact(path: str, offset: int, nbytes: int, where: str) -> np.ndarray:
    """`nbytes` bytes of `path` at `offset` as a writable uint8 array; a short read is an error."""
    buf = np.empty(nbytes, dtype=np.uint8)
    if nbytes == 0:
        return buf
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise LlamapyError(
                    f"{where}: file ends at byte {offset + got}, the tensor needs {offset + nbytes} (truncated file?)"
                )
            got += n
    return buf


class FileTensor(LazyTensor):
    """A C-contiguous tensor stored at a byte offset of a file (safetensors, stored zip entries)."""

    def __init__(self, path: str, offset: int, shape: Sequence[int], dtype: str, where: str):
        self.path = os.fspath(path)
        self.offset = offset
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        dt = DTYPES[self.dtype]
        row_bytes = self.row_elements * dt.itemsize
        raw = _read_exact(self.path, self.offset + r0 * row_bytes, (r1 - r0) * row_bytes, self.where)
        return raw.view(dt).reshape((r1 - r0, *self.shape[1:]))


class StridedTensor(LazyTensor):
    """A view into a storage with arbitrary strides (non-contiguous torch tensors): the covered span is
    read once per call and gathered; `load_span(first, count)` returns `count` storage elements."""

    def __init__(self, load_span: Callable[[int, int], np.ndarray], offset: int, shape, stride, dtype: str,
                 where: str):
        self.load_span = load_span
        self.offset = offset
        self.shape = tuple(int(d) for d in shape)
        self.stride = tuple(int(s) for s in stride)
        self.dtype = dtype
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        shape = (r1 - r0, *self.shape[1:]) if self.shape else (1,)
        stride = self.stride if self.shape else (1,)
        first = self.offset + r0 * (stride[0] if self.shape else 0)
        span = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
        data = self.load_span(first, span)
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data, shape=shape, strides=[s * item for s in stride], writeable=False)
        return np.ascontiguousarray(view)


class ConcatTensor(LazyTensor):
    """Shards of one tensor joined along axis 0 or 1 (Meta's model-parallel checkpoints)."""

    def __init__(self, parts: Sequence[LazyTensor], axis: int, where: str):
        if axis not in (0, 1):
            raise ValueError(axis)
        self.parts = list(parts)
        self.axis = axis
        self.dtype = parts[0].dtype
        self.where = where
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        self.shape = tuple(shape)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        if self.axis == 1:
            return np.concatenate([p.rows(r0, r1) for p in self.parts], axis=1)
        out = []
        base = 0
        for p in self.parts:
            lo, hi = max(r0, base), min(r1, base + p.n_rows)
            if lo < hi:
                out.append(p.rows(lo - base, hi - base))
            base += p.n_rows
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)


class RowPermutedTensor(LazyTensor):
    """Rows gathered through a permutation: output row i is source row perm[i]."""

    def __init__(self, base: LazyTensor, perm: np.ndarray, where: str):
        if len(perm) != base.n_rows:
            raise ValueError("permutation length differs from the row count")
        self.base = base
        self.perm = perm
        self.shape = base.shape
        self.dtype = base.dtype
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        src = self.perm[r0:r1]
        lo, hi = int(src.min()), int(src.max()) + 1
        return self.base.rows(lo, hi)[src - lo]


class ArrayTensor(LazyTensor):
    """A tensor computed in memory (e.g. generated rope factors)."""

    def __init__(self, array: np.ndarray, dtype: str, where: str):
        self.array = np.ascontiguousarray(array)
        self.shape = self.array.shape
        self.dtype = dtype
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        return self.array.reshape(self.n_rows, *self.shape[1:])[r0:r1]


def rotary_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that turns Hugging Face's rotate-half q/k layout into GGUF's interleaved-pair layout.

    Each head's rows [first half | second half] become pairs (h0, h1): out row h*hd + 2i + j is
    source row h*hd + j*hd/2 + i.
    """
    if n_head <= 0 or n_rows % (2 * n_head):
        raise LlamapyError(f"can't permute {n_rows} q/k rows into {n_head} heads of an even size")
    hd = n_rows // n_head
    idx = np.arange(n_rows).reshape(n_head, 2, hd // 2)  # (head, half, i)
    return idx.transpose(0, 2, 1).reshape(n_rows)  # (head, i, half)


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Rows in a source dtype as float32 (BF16 widened exactly; F64 rounded)."""
    if dtype == "F32":
        return a
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F64"):
        return a.astype(np.float32)
    raise LlamapyError(f"tensor of type {dtype} can't be converted to floating point weights")


class StackedTensor(LazyTensor):
    """Equal-shaped tensors stacked along a new first axis (per-expert weights merged into one 3-D tensor)."""

    def __init__(self, parts: Sequence[LazyTensor], where: str):
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise LlamapyError(f"{where}: the experts' tensors differ in shape ({', '.join(map(str, shapes))})")
        dtypes = {p.dtype for p in parts}
        self.parts = list(parts)
        # the reference widens anything but F16/F32 to F32 before stacking; mixed F16/F32 stacks as F32
        self.dtype = parts[0].dtype if len(dtypes) == 1 else "F32"
        self.shape = (len(parts), *parts[0].shape)
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        out = [p.read() for p in self.parts[r0:r1]]
        if self.dtype == "F32":
            out = [to_f32(a, p.dtype) for a, p in zip(out, self.parts[r0:r1])]
        return np.stack(out, axis=0)


class PlusOneTensor(LazyTensor):
    """x + 1 (Gemma's norm weights are stored as offsets from 1), computed as the reference does: in
    float16 for an F16 source, otherwise in float32."""

    def __init__(self, base: LazyTensor, where: str):
        self.base = base
        self.shape = base.shape
        self.dtype = "F16" if base.dtype == "F16" else "F32"
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        x = self.base.rows(r0, r1)
        if self.dtype == "F16":
            return (x.view(np.float16) + np.float16(1)).view(x.dtype)
        return to_f32(x, self.base.dtype) + np.float32(1)


class FirstRowsTensor(LazyTensor):
    """The first `n` rows of a tensor (Gemma 3's embedding rows past the vocabulary are dropped)."""

    def __init__(self, base: LazyTensor, n: int, where: str):
        self.base = base
        self.shape = (n, *base.shape[1:])
        self.dtype = base.dtype
        self.where = where

    def rows(self, r0: int, r1: int) -> np.ndarray:
        return self.base.rows(r0, min(r1, self.shape[0]))
