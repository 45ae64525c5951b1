"""`llamapy quantize`: a GGUF file to another tensor type, with llama.cpp's per-tensor mixes and bytes.

    quantize_file("model-f16.gguf", "model-q4_k_m.gguf", ftype=parse_ftype("Q4_K_M").ftype)

The output is the file the reference quantizer writes: the same tensor order, metadata (input keys in
order, then general.quantization_version and general.file_type), tensor types and bytes. Tensors stream
from the input's mmap one at a time; rows are quantized in chunks by a pool of threads calling the C
reference quantizer (cffi releases the GIL), and the file appears only when it is complete.
"""
from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import LlamapyError
from .ggufio.constants import KEY_FILE_TYPE, KEY_QUANT_VERSION, QUANT_VERSION, TYPE_SIZES, TensorType, ValueType
from .ggufio.constants import type_name as _type_name
from .ggufio.filetypes import FTYPE_GUESSED, GUESSED_FTYPE, QUANT_OPTIONS, options_help, parse_ftype
from .ggufio.filetypes import LlamaFtype as F
from .ggufio.reader import GGUFReader
from .model_args import ModelArgs
from .quants.plan import QuantizeParams, TensorPlan, blck_size, plan, reference_order

# the names a quantize command line uses, from the table of file types
__all__ = ["QUANT_OPTIONS", "QuantizeParams", "options_help", "parse_ftype", "plan_file", "quantize_file",
           "quantize_rows"]

T = TensorType
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
CHUNK_VALUES = 1 << 18  # values per work item: 1 MiB of float32 scratch per thread

# Types the reference's --output-tensor-type / --token-embedding-type accept, that llamapy writes
TENSOR_TYPE_NAMES = {t.name.lower(): int(t) for t in (
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
    T.IQ4_NL)}


def type_name(t: int) -> str:
    return _type_name(t).lower()


def parse_tensor_type(text: str) -> int:
    t = TENSOR_TYPE_NAMES.get(text.strip().lower())
    if t is None:
        raise LlamapyError(f"unknown tensor type '{text}' (valid: {', '.join(TENSOR_TYPE_NAMES)})")
    return t


def file_ftype(reader: GGUFReader) -> int:
    """The input's ftype as the reference's loader reports it: general.file_type, else guessed."""
    ft = reader.get(KEY_FILE_TYPE)
    if ft is not None:
        return int(ft)
    counts: dict[int, int] = {}
    best, best_n = int(T.F32), 0
    for name in reference_order(reader.tensors):
        t = reader.tensors[name].type
        counts[t] = counts.get(t, 0) + 1
        if counts[t] > best_n:
            best, best_n = t, counts[t]
    return GUESSED_FTYPE.get(best, F.ALL_F32) | FTYPE_GUESSED


def plan_file(reader: GGUFReader, params: QuantizeParams) -> list[TensorPlan]:
    """Each of a GGUF's tensors with its new type, in output order (see quants.plan.plan)."""
    return plan(reader.tensors, ModelArgs.from_gguf(reader, strict=False), params, check=check_convertible)


def check_convertible(name: str, src_type: int, dst_type: int) -> None:
    """Refuse (one line) a conversion the C core can't do: reading `src_type` rows or writing `dst_type`."""
    if not _can_read(src_type):
        raise LlamapyError(f"tensor {name}: can't convert from type {type_name(src_type)}")
    if not _can_write(dst_type):
        raise LlamapyError(f"tensor {name}: llamapy can't write type {type_name(dst_type)} yet")


def _can_read(t: int) -> bool:
    """Whether the C core converts rows of type `t` to float32 (what requantizing needs)."""
    from .native import ffi, lib

    blck, size = TYPE_SIZES[int(t)]
    src, dst = np.zeros(size, np.uint8), np.zeros(blck, np.float32)
    return lib.lp_dequantize_row(int(t), ffi.from_buffer(src), ffi.from_buffer("float *", dst), blck) == 0


def _can_write(t: int) -> bool:
    """Whether the C core has the reference quantizer of type `t`."""
    from .native import ffi, lib

    blck, size = TYPE_SIZES[int(t)]
    src, dst = np.zeros(blck, np.float32), np.zeros(size, np.uint8)
    return lib.lp_quantize_row_ref(int(t), ffi.from_buffer("float *", src), ffi.from_buffer(dst), blck) == 0


# -- quantizing rows ------------------------------------------------------------------------------------------
# Types whose SIMD quantizer writes exactly the scalar reference's bytes (tests/test_quants_k.py and
# tests/test_quants_legacy_simd.py check it) and is several times faster; the others go through the scalar
# reference.
SIMD_SAME_BYTES = frozenset(int(x) for x in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
                                             T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0))

def default_threads() -> int:
    return os.cpu_count() or 1


class _Scratch(threading.local):
    buf: np.ndarray | None = None

    def floats(self, n: int) -> np.ndarray:
        if self.buf is None or self.buf.size < n:
            self.buf = np.empty(n, np.float32)
        return self.buf[:n]


def _convert_chunks(src, src_type: int, dst: np.ndarray, dst_type: int, n: int, n_rows: int,
                    pool: ThreadPoolExecutor | None, on_rows: Callable[[int], None] | None = None) -> None:
    """Rows [0, n_rows) of `src` (bytes of src_type) -> `dst` (uint8, rows x row_bytes of dst_type)."""
    from .native import ffi, lib

    src_row = n // blck_size(src_type) * TYPE_SIZES[src_type][1]
    dst_row = dst.shape[1] if n_rows else 0
    src_base = ffi.cast("char *", ffi.from_buffer(src))
    dst_base = ffi.cast("char *", ffi.from_buffer(dst, require_writable=True))
    scratch = _Scratch()
    per_chunk = max(1, CHUNK_VALUES // n)

    def work(r0: int, r1: int) -> int:
        count = (r1 - r0) * n
        s = src_base + r0 * src_row
        if src_type == T.F32:
            f = ffi.cast("float *", s)
        else:
            buf = scratch.floats(count)
            f = ffi.cast("float *", ffi.from_buffer(buf, require_writable=True))
            if lib.lp_dequantize_row(src_type, s, f, count) != 0:
                raise LlamapyError(f"can't convert from type {type_name(src_type)}")
        quantize_row = lib.lp_quantize_row if dst_type in SIMD_SAME_BYTES else lib.lp_quantize_row_ref
        if quantize_row(dst_type, f, dst_base + r0 * dst_row, count) != 0:
            raise LlamapyError(f"can't quantize to type {type_name(dst_type)}")
        return r1 - r0

    chunks = [(r, min(r + per_chunk, n_rows)) for r in range(0, n_rows, per_chunk)]
    if pool is None or len(chunks) == 1:
        for r0, r1 in chunks:
            done = work(r0, r1)
            if on_rows:
                on_rows(done)
        return
    futures = [pool.submit(work, r0, r1) for r0, r1 in chunks]
    try:
        for fut in futures:
            done = fut.result()
            if on_rows:
                on_rows(done)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def quantize_rows(ttype: int, x: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """float32 rows (rows, n) -> uint8 (rows, row_bytes) of `ttype`, with the reference quantizer's bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    rows, n = x.shape
    if n % blck_size(ttype):
        raise LlamapyError(f"row length {n} is not a multiple of {type_name(ttype)}'s block size {blck_size(ttype)}")
    out = np.empty((rows, n // blck_size(ttype) * TYPE_SIZES[int(ttype)][1]), np.uint8)
    if not _can_write(ttype):
        raise LlamapyError(f"llamapy can't write type {type_name(ttype)} yet")
    n_threads = n_threads or default_threads()
    if n_threads <= 1 or x.size <= CHUNK_VALUES:
        _convert_chunks(x, int(T.F32), out, int(ttype), n, rows, None)
        return out
    with ThreadPoolExecutor(n_threads) as pool:
        _convert_chunks(x, int(T.F32), out, int(ttype), n, rows, pool)
    return out


# -- the file ------------------------------------------------------------------------------------------------
@dataclass
class QuantizeResult:
    n_tensors: int
    n_quantized: int
    size_in: int  # bytes of tensor data
    size_out: int


ProgressFn = Callable[[str, int, int], None]  # (tensor name, elements done in this call, elements in all)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def quantize_file(inp: str | os.PathLike, out: str | os.PathLike, ftype: int, n_threads: int | None = None,
                  *, progress: ProgressFn | None = None, **opts) -> QuantizeResult:
    """Quantize GGUF `inp` to `out` as `ftype` (a LlamaFtype id). Options: allow_requantize,
    quantize_output_tensor, only_copy, pure, output_tensor_type, token_embedding_type (as QuantizeParams)."""
    inp, out = os.fspath(inp), os.fspath(out)
    if _same_file(inp, out):
        raise LlamapyError(f"{out}: the output file is the input file; give another output path")
    params = QuantizeParams(ftype=ftype, n_threads=n_threads, **opts)
    with GGUFReader(inp) as reader:
        out_ftype = file_ftype(reader) if params.only_copy else params.ftype
        plans = plan_file(reader, params)
        total = sum(p.info.n_elements for p in plans)
        with open(inp, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with ThreadPoolExecutor(params.n_threads or default_threads()) as pool:
                result = _write(reader, plans, out, out_ftype, mm, pool, total, progress)
        finally:
            try:
                mm.close()
            except BufferError:  # a view still alive; the mapping goes with it
                pass
    return result


def _write(reader: GGUFReader, plans: list[TensorPlan], out: str, out_ftype: int, mm: mmap.mmap,
           pool: ThreadPoolExecutor, total: int, progress: ProgressFn | None) -> QuantizeResult:
    from .ggufio.writer import GGUFWriter

    alignment = reader.alignment
    page = mmap.PAGESIZE
    size_in = size_out = n_quantized = 0
    try:
        with GGUFWriter(out, alignment=alignment) as w:
            for key, v in reader.kv.items():
                if key in (KEY_QUANT_VERSION, KEY_FILE_TYPE) or key in SPLIT_KEYS:
                    continue
                w.add_value(key, v)
            w.add(KEY_QUANT_VERSION, QUANT_VERSION, ValueType.UINT32)
            w.add(KEY_FILE_TYPE, int(out_ftype), ValueType.UINT32)
            for p in plans:
                w.add_tensor_info(p.info.name, p.shape, p.new_type)
            w.write_header()
            for p in plans:
                info = p.info
                src = memoryview(mm)[info.offset: info.offset + info.nbytes]
                try:
                    if not p.quantize:
                        w.write_tensor_data(info.name, src)
                        if progress:
                            progress(info.name, info.n_elements, total)
                    else:
                        n, rows = info.shape[0], info.n_rows
                        dst = np.empty((rows, p.new_nbytes // rows), np.uint8)

                        def on_rows(k: int, name=info.name, n=n):
                            if progress:
                                progress(name, k * n, total)

                        _convert_chunks(src, info.type, dst, p.new_type, n, rows, pool, on_rows)
                        w.write_tensor_data(info.name, dst)
                        del dst
                        n_quantized += 1
                finally:
                    src.release()
                # the input's pages are done with: drop them from this process (its RSS stays small)
                start = info.offset // page * page
                if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                    mm.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)
                size_in += info.nbytes
                size_out += p.new_nbytes
    except OSError as e:
        raise LlamapyError(f"{out}: write failed: {e.strerror or e}") from None
    return QuantizeResult(len(plans), n_quantized, size_in, size_out)
