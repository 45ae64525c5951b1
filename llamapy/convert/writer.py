"""Streaming a ModelSource into a GGUF file: metadata in the reference's order, tensors chunk by chunk.

Each tensor is read, converted and encoded a block of rows at a time into one output buffer, which is
written before the next tensor is touched; peak memory is one output tensor plus one chunk.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import (
    KEY_ARCH,
    KEY_FILE_TYPE,
    KEY_QUANT_VERSION,
    KEY_TYPE,
    QUANT_VERSION,
    TYPE_SIZES,
    TensorType,
    ValueType,
    type_name,
)
from ..ggufio.writer import GGUFWriter
from ..model_args import ModelArgs
from .lazy import LazyTensor
from .outtype import OutType, encode_rows, plain_tensor_type

CHUNK_BYTES = 64 * 1024 * 1024  # float32 bytes of source rows converted at once


@dataclass
class PlannedTensor:
    name: str
    src: LazyTensor
    ttype: int
    shape: tuple[int, ...] | None = None  # GGML order, when not the source's (the quantizer drops trailing 1s)

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        if self.shape is not None:
            return self.shape
        return tuple(reversed(self.src.shape)) if self.src.shape else (1,)

    @property
    def nbytes(self) -> int:
        blck, size = TYPE_SIZES[self.ttype]
        return self.src.n_elements // blck * size


def plan_tensors(tensors: list[tuple[str, LazyTensor]], outtype: OutType, args: ModelArgs) -> list[PlannedTensor]:
    """Each tensor's GGUF type (and, for quantize types, the output order); `args`: the model's hyperparameters.

    Plain types follow the reference converter's rules. A quantize type is planned exactly as
    `llamapy quantize` plans a file this converter wrote as F32: the quantizer's tensor order, counters
    and per-tensor mix, so `--outtype q4_k_m` gives that two-step result's bytes without its F32 file.
    """
    if not outtype.is_mix:
        return [PlannedTensor(n, t, plain_tensor_type(outtype, n, t.shape)) for n, t in tensors]
    from ..ggufio.reader import TensorInfo
    from ..quantize import QuantizeParams, check_convertible
    from ..quants.plan import plan

    f32 = int(TensorType.F32)
    as_f32 = {n: TensorInfo(n, tuple(reversed(t.shape)) or (1,), f32, 0, t.n_elements * 4) for n, t in tensors}
    by_name = dict(tensors)
    plans = plan(as_f32, args, QuantizeParams(ftype=outtype.file_type), check=check_convertible)
    return [PlannedTensor(p.info.name, by_name[p.info.name], p.new_type, p.shape) for p in plans]


def fill_file_type(kvs: list[tuple], file_type: int) -> list[tuple]:
    return [(k, file_type, vt, st) if k == KEY_FILE_TYPE else (k, v, vt, st) for k, v, vt, st in kvs]


def encode_tensor(p: PlannedTensor, n_threads: int | None = None) -> np.ndarray:
    """The whole tensor in its output type, built chunk by chunk."""
    src = p.src
    out = np.empty(p.nbytes, dtype=np.uint8)
    n_rows = src.n_rows
    row_f32 = max(1, src.row_elements) * 4
    step = max(1, CHUNK_BYTES // row_f32)
    pos = 0
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        rows = src.rows(r0, r1)
        if rows.ndim > 2:
            rows = rows.reshape(-1, rows.shape[-1])
        enc = encode_rows(rows, src.dtype, p.ttype, n_threads)
        if pos + enc.size > out.size:
            raise LlamapyError(f"{src.where}: encoded data overruns its {out.size} bytes")
        out[pos:pos + enc.size] = enc
        pos += enc.size
    if pos != out.size:
        raise LlamapyError(f"{src.where}: encoded {pos} bytes, expected {out.size}")
    return out


class _Progress:
    """A rich progress bar over bytes written, shown only on a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("converting", total=total)
            self.bar.start()

    def describe(self, text: str):
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def advance(self, n: int):
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def write_gguf(path: Path, kvs: list[tuple], planned: list[PlannedTensor], *, n_threads: int | None = None,
               progress: bool = True, log: Callable[[str], None] | None = None) -> float:
    """Write the file atomically; returns the seconds it took."""
    t0 = time.perf_counter()
    total = sum(p.nbytes for p in planned)
    bar = _Progress(total, progress)
    try:
        with GGUFWriter(path) as w:
            for key, value, vt, st in kvs:
                if value is None:
                    raise LlamapyError(f"internal: metadata '{key}' has no value")
                w.add(key, value, vt, st)
            for p in planned:
                w.add_tensor_info(p.name, p.ggml_shape, p.ttype)
            w.write_header()
            for i, p in enumerate(planned):
                bar.describe(f"[{i + 1}/{len(planned)}] {p.name}")
                if log is not None:
                    shape = " x ".join(str(d) for d in p.ggml_shape)
                    log(f"[{i + 1:{len(str(len(planned)))}}/{len(planned)}] {p.name:32} {p.src.dtype:>4} -> "
                        f"{type_name(p.ttype):6} {shape}")
                data = encode_tensor(p, n_threads)
                w.write_tensor_data(p.name, data)
                bar.advance(p.nbytes)
                del data
    finally:
        bar.close()
    return time.perf_counter() - t0


def kv_list(arch: str, general: list[tuple], layout_type: bool, arch_kvs: list[tuple], vocab_kvs: list[tuple],
            quant_version: bool) -> list[tuple]:
    """The full metadata in the reference's order."""
    s = ValueType.STRING
    out = [(KEY_ARCH, arch, s, None)]
    if layout_type:
        out.append((KEY_TYPE, "model", s, None))
    out += general + arch_kvs + vocab_kvs
    if quant_version:
        out.append((KEY_QUANT_VERSION, QUANT_VERSION, ValueType.UINT32, None))
    return out
