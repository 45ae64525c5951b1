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
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .errors import LlamapyError
from .ggufio.constants import KEY_FILE_TYPE, KEY_QUANT_VERSION, TYPE_SIZES, TensorType, ValueType
from .ggufio.constants import type_name as _type_name
from .ggufio.reader import GGUFReader, TensorInfo

T = TensorType
QUANT_VERSION = 2  # GGML_QNT_VERSION
FTYPE_GUESSED = 1024
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
CHUNK_VALUES = 1 << 18  # values per work item: 1 MiB of float32 scratch per thread


class LlamaFtype:
    """llama.cpp's LLAMA_FTYPE ids: the number in general.file_type and in old tutorials' command lines."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ4_NL = 25
    MOSTLY_BF16 = 32


F = LlamaFtype

# ftype -> the type most tensors get
DEFAULT_TYPE = {
    F.ALL_F32: T.F32, F.MOSTLY_F16: T.F16, F.MOSTLY_BF16: T.BF16,
    F.MOSTLY_Q4_0: T.Q4_0, F.MOSTLY_Q4_1: T.Q4_1, F.MOSTLY_Q5_0: T.Q5_0, F.MOSTLY_Q5_1: T.Q5_1,
    F.MOSTLY_Q8_0: T.Q8_0, F.MOSTLY_Q2_K: T.Q2_K,
    F.MOSTLY_Q3_K_S: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q3_K, F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q4_K, F.MOSTLY_Q5_K_S: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q5_K,
    F.MOSTLY_Q6_K: T.Q6_K, F.MOSTLY_IQ4_NL: T.IQ4_NL,
}

# the type of the most common tensor -> the ftype a file without general.file_type is taken for
GUESSED_FTYPE = {
    T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q4_0: F.MOSTLY_Q4_0,
    T.Q4_1: F.MOSTLY_Q4_1, T.Q5_0: F.MOSTLY_Q5_0, T.Q5_1: F.MOSTLY_Q5_1, T.Q8_0: F.MOSTLY_Q8_0,
    T.Q2_K: F.MOSTLY_Q2_K, T.Q3_K: F.MOSTLY_Q3_K_M, T.Q4_K: F.MOSTLY_Q4_K_M, T.Q5_K: F.MOSTLY_Q5_K_M,
    T.Q6_K: F.MOSTLY_Q6_K, T.IQ4_NL: F.MOSTLY_IQ4_NL,
}


@dataclass(frozen=True)
class QuantOption:
    name: str
    ftype: int
    desc: str


# In the reference's order: a legacy number names the first option with that ftype (15 -> "Q4_K").
QUANT_OPTIONS = [
    QuantOption("Q4_0", F.MOSTLY_Q4_0, "4.50 bpw"),
    QuantOption("Q4_1", F.MOSTLY_Q4_1, "5.00 bpw"),
    QuantOption("Q5_0", F.MOSTLY_Q5_0, "5.50 bpw"),
    QuantOption("Q5_1", F.MOSTLY_Q5_1, "6.00 bpw"),
    QuantOption("Q2_K", F.MOSTLY_Q2_K, "2.62 bpw Q2_K + Q3_K attn_v/attn_output/ffn_down"),
    QuantOption("Q3_K", F.MOSTLY_Q3_K_M, "alias for Q3_K_M"),
    QuantOption("Q3_K_S", F.MOSTLY_Q3_K_S, "3.44 bpw Q3_K"),
    QuantOption("Q3_K_M", F.MOSTLY_Q3_K_M, "3.44 bpw Q3_K + Q4_K/Q5_K attn_v/attn_output/ffn_down"),
    QuantOption("Q3_K_L", F.MOSTLY_Q3_K_L, "3.44 bpw Q3_K + Q5_K attn_v/attn_output/ffn_down"),
    QuantOption("IQ4_NL", F.MOSTLY_IQ4_NL, "4.50 bpw non-linear"),
    QuantOption("Q4_K", F.MOSTLY_Q4_K_M, "alias for Q4_K_M"),
    QuantOption("Q4_K_S", F.MOSTLY_Q4_K_S, "4.50 bpw Q4_K + Q5_K first attn_v/ffn_down"),
    QuantOption("Q4_K_M", F.MOSTLY_Q4_K_M, "4.50 bpw Q4_K + Q6_K half of attn_v/ffn_down"),
    QuantOption("Q5_K", F.MOSTLY_Q5_K_M, "alias for Q5_K_M"),
    QuantOption("Q5_K_S", F.MOSTLY_Q5_K_S, "5.50 bpw Q5_K"),
    QuantOption("Q5_K_M", F.MOSTLY_Q5_K_M, "5.50 bpw Q5_K + Q6_K half of attn_v/ffn_down"),
    QuantOption("Q6_K", F.MOSTLY_Q6_K, "6.56 bpw"),
    QuantOption("Q8_0", F.MOSTLY_Q8_0, "8.50 bpw"),
    QuantOption("F16", F.MOSTLY_F16, "16.00 bpw"),
    QuantOption("BF16", F.MOSTLY_BF16, "16.00 bpw"),
    QuantOption("F32", F.ALL_F32, "32.00 bpw"),
    QuantOption("COPY", F.ALL_F32, "only copy tensors, no quantizing"),
]

# Types the reference's --output-tensor-type / --token-embedding-type accept, that llamapy writes
TENSOR_TYPE_NAMES = {t.name.lower(): int(t) for t in (
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
    T.IQ4_NL)}

QUANTIZED = {int(t) for t in TYPE_SIZES if t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)}


def type_name(t: int) -> str:
    return _type_name(t).lower()


def options_help() -> str:
    """The table `--help` prints: legacy number, name, what it is."""
    lines = []
    for o in QUANT_OPTIONS:
        num = f"{o.ftype:2d}  or  " if o.name != "COPY" else " " * 8
        lines.append(f"  {num}{o.name:<7} : {o.desc}")
    return "\n".join(lines)


def parse_ftype(text: str) -> QuantOption | None:
    """A quantization type by name (any case) or by its legacy number; None if it is neither."""
    up = text.strip().upper()
    for o in QUANT_OPTIONS:
        if o.name == up:
            return o
    if re.fullmatch(r"[+-]?\d+", up):
        for o in QUANT_OPTIONS:
            if o.ftype == int(up):
                return o
    return None


def parse_tensor_type(text: str) -> int:
    t = TENSOR_TYPE_NAMES.get(text.strip().lower())
    if t is None:
        raise LlamapyError(f"unknown tensor type '{text}' (valid: {', '.join(TENSOR_TYPE_NAMES)})")
    return t


def blck_size(t: int) -> int:
    return TYPE_SIZES[int(t)][0]


# -- the per-tensor mix --------------------------------------------------------------------------------------
def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers the K-quant mixes give more bits: the first and last eighth, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_of(name: str) -> int | None:
    m = re.match(r"blk\.([+-]?\d+)\.", name)
    return int(m.group(1)) if m else None


def tensor_type_for(name: str, shape: tuple[int, ...], ftype: int, n_layer: int, *,
                    i_attn_v: int | None = None, n_attn_v: int | None = None, i_ffn: int | None = None,
                    n_gqa: int = 1, n_expert: int = 0, arch: str = "llama", has_output: bool = True,
                    is_70b: bool = False, output_tensor_type: int | None = None) -> int:
    """The type the reference's mix gives one weight (llama_tensor_get_type), for a K-quant or legacy ftype.

    `shape` is in GGML order (shape[0] is the row length). The reference counts attn_v and ffn_* tensors
    in file order; those counts (`i_attn_v`, `i_ffn`) default to the layer in the name, which is what they
    are in any file sorted by layer. A row length the chosen type can't hold falls back as the reference
    does (Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16).
    """
    new_type = int(DEFAULT_TYPE[ftype])
    layer = _layer_of(name)
    i_attn_v = layer if i_attn_v is None else i_attn_v
    i_ffn = layer if i_ffn is None else i_ffn
    n_attn_v = n_layer if n_attn_v is None else n_attn_v
    nx = shape[0]
    falcon = arch == "falcon"

    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        if output_tensor_type is not None:
            new_type = output_tensor_type
        elif falcon or nx % blck_size(new_type):
            new_type = T.Q8_0
        elif new_type != T.Q8_0:
            new_type = T.Q6_K
    elif name == "token_embd.weight":
        pass  # only the IQ1/IQ2/IQ3 and TQ mixes change it
    elif "attn_v.weight" in name:
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q4_K if n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = T.Q5_K if i_attn_v < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L or ftype == F.MOSTLY_IQ4_NL and n_gqa >= 4:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i_attn_v, n_attn_v):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and i_attn_v < 4:
            new_type = T.Q5_K
        if is_70b and new_type in (T.Q3_K, T.Q4_K):
            new_type = T.Q5_K
        if n_expert == 8:
            new_type = T.Q8_0
    elif "attn_k.weight" in name:
        if n_expert == 8:
            new_type = T.Q8_0
    elif "attn_q.weight" in name:
        pass
    elif "ffn_down" in name:
        i_layer = i_ffn
        if n_expert > 1:
            i_layer = layer
            if i_layer is None:
                raise LlamapyError(f"can't tell the layer of tensor {name}")
            if not 0 <= i_layer < n_layer:
                raise LlamapyError(f"bad layer {i_layer} for tensor {name}: must be in [0, {n_layer})")
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = (T.Q5_K if i_layer < n_layer // 16
                        else T.Q4_K if not falcon or use_more_bits(i_layer, n_layer) else T.Q3_K)
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K if falcon else T.Q5_K
        elif ftype == F.MOSTLY_Q4_K_M:
            if falcon:
                new_type = (T.Q6_K if i_layer < n_layer // 16
                            else T.Q5_K if use_more_bits(i_layer, n_layer) else T.Q4_K)
            elif use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif i_layer < n_layer // 8 and ftype == F.MOSTLY_IQ4_NL:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M and use_more_bits(i_layer, n_layer):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and not falcon and i_layer < n_layer // 8:
            new_type = T.Q5_K
    elif "attn_output.weight" in name:
        if not falcon:
            if n_expert == 8:
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL,
                             F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M):
                    new_type = T.Q5_K
            else:
                if ftype == F.MOSTLY_Q2_K:
                    new_type = T.Q3_K
                elif ftype == F.MOSTLY_Q3_K_M:
                    new_type = T.Q4_K
                elif ftype == F.MOSTLY_Q3_K_L:
                    new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K
    elif "attn_qkv.weight" in name:
        if ftype in (F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L):
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q4_K_M:
            new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q5_K_M:
            new_type = T.Q6_K

    if nx % blck_size(new_type):
        fallback = {T.Q2_K: T.IQ4_NL, T.Q3_K: T.IQ4_NL, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
        if new_type not in fallback:
            raise LlamapyError(f"tensor {name}: row length {nx} is not a multiple of {type_name(new_type)}'s "
                               f"block size {blck_size(new_type)}, and that type has no fallback")
        new_type = fallback[new_type]
        if nx % blck_size(new_type):
            new_type = T.F16
    return int(new_type)


# -- planning a file ----------------------------------------------------------------------------------------
@dataclass
class QuantizeParams:
    ftype: int
    n_threads: int | None = None
    allow_requantize: bool = False
    quantize_output_tensor: bool = True
    only_copy: bool = False
    pure: bool = False
    output_tensor_type: int | None = None
    token_embedding_type: int | None = None


@dataclass
class TensorPlan:
    info: TensorInfo
    shape: tuple[int, ...]  # as written: trailing 1s dropped, as GGML writes n_dims
    new_type: int
    quantize: bool  # False: the bytes are copied

    @property
    def new_nbytes(self) -> int:
        blck, size = TYPE_SIZES[self.new_type]
        return self.info.n_elements // blck * size


def _n_dims(shape: tuple[int, ...]) -> int:
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def reference_order(names: Iterable[str]) -> list[str]:
    """Tensors in the order the reference's loader keeps them: by the layer in 'blk.N.' (none first), then name."""
    def key(name: str):
        layer = _layer_of(name)
        return (-1 if layer is None else layer, name.encode("utf-8", "surrogateescape"))

    return sorted(names, key=key)


def _should_quantize(name: str, shape: tuple[int, ...], params: QuantizeParams) -> bool:
    if not name.endswith("weight") or _n_dims(shape) < 2 or "_norm.weight" in name:
        return False
    if name == "output.weight" and not params.quantize_output_tensor:
        return False
    if params.only_copy:
        return False
    excluded = ("ffn_gate_inp.weight", "ssm_conv1d.weight", "time_mix_first.weight", "time_mix_w1.weight",
                "time_mix_w2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
                "time_mix_lerp_fused.weight", "attn_rel_b.weight")
    if any(e in name for e in excluded):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


def _hparam(reader: GGUFReader, key: str, default=None):
    arch = reader.architecture or "llama"
    v = reader.get(f"{arch}.{key}", default)
    if isinstance(v, np.ndarray):  # per-layer arrays: the reference's n_gqa() looks at layer 0
        v = int(v[0]) if len(v) else default
    return v


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


def _mix_counter(name: str) -> str | None:
    """Which of the reference's per-kind counters a tensor advances when its type is chosen."""
    if "attn_v.weight" in name:
        return "attn_v"
    if "attn_k.weight" in name or "attn_q.weight" in name:
        return None
    return "ffn_down" if "ffn_down" in name else None


def plan(reader: GGUFReader, params: QuantizeParams) -> list[TensorPlan]:
    """Each tensor's new type, in output order; refuses (before anything is written) what can't be done."""
    if params.ftype not in DEFAULT_TYPE:
        raise LlamapyError(f"file type {params.ftype} can't be written by llamapy")
    default_type = int(DEFAULT_TYPE[params.ftype])
    arch = reader.architecture or "llama"
    n_layer = int(_hparam(reader, "block_count", 0) or 0)
    n_head = int(_hparam(reader, "attention.head_count", 0) or 0)
    n_head_kv = int(_hparam(reader, "attention.head_count_kv", n_head) or 0)
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    n_expert = int(_hparam(reader, "expert_count", 0) or 0)
    is_70b = arch in ("llama", "qwen2") and n_layer == 80 and n_head != n_head_kv
    names = reference_order(reader.tensors)
    has_output = "output.weight" in reader.tensors
    n_attn_v = sum(1 for n in names if any(k in n for k in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")))
    i_attn_v = i_ffn_down = 0

    plans = []
    for name in names:
        info = reader.tensors[name]
        shape = info.shape[: _n_dims(info.shape)]
        quantize = _should_quantize(name, info.shape, params)
        new_type = info.type
        if quantize:
            new_type = default_type
            if not params.pure and default_type in QUANTIZED:
                new_type = tensor_type_for(
                    name, shape, params.ftype, n_layer, i_attn_v=i_attn_v, n_attn_v=n_attn_v, i_ffn=i_ffn_down,
                    n_gqa=n_gqa, n_expert=n_expert, arch=arch, has_output=has_output, is_70b=is_70b,
                    output_tensor_type=params.output_tensor_type)
                counter = _mix_counter(name)
                i_attn_v += counter == "attn_v"
                i_ffn_down += counter == "ffn_down"
            if params.token_embedding_type is not None and name == "token_embd.weight":
                new_type = params.token_embedding_type
            if params.output_tensor_type is not None and name == "output.weight":
                new_type = params.output_tensor_type
            quantize = info.type != new_type
        if quantize:
            if info.shape[0] % blck_size(new_type):
                raise LlamapyError(f"tensor {name}: row length {info.shape[0]} is not a multiple of "
                                   f"{type_name(new_type)}'s block size {blck_size(new_type)}")
            if info.type in QUANTIZED and not params.allow_requantize:
                raise LlamapyError(f"tensor {name} is already quantized ({type_name(info.type)}): requantizing "
                                   "loses quality; pass --allow-requantize to do it anyway")
            if not _can_read(info.type):
                raise LlamapyError(f"tensor {name}: can't convert from type {type_name(info.type)}")
            if not _can_write(new_type):
                raise LlamapyError(f"tensor {name}: llamapy can't write type {type_name(new_type)} yet")
        plans.append(TensorPlan(info, shape, int(new_type), quantize))
    return plans


def _can_read(t: int) -> bool:
    """Whether the C core converts rows of type `t` to float32 (what requantizing needs)."""
    from .engine.native import ffi, lib

    blck, size = TYPE_SIZES[int(t)]
    src, dst = np.zeros(size, np.uint8), np.zeros(blck, np.float32)
    return lib.lp_dequantize_row(int(t), ffi.from_buffer(src), ffi.from_buffer("float *", dst), blck) == 0


def _can_write(t: int) -> bool:
    """Whether the C core has the reference quantizer of type `t`."""
    from .engine.native import ffi, lib

    blck, size = TYPE_SIZES[int(t)]
    src, dst = np.zeros(blck, np.float32), np.zeros(size, np.uint8)
    return lib.lp_quantize_row_ref(int(t), ffi.from_buffer("float *", src), ffi.from_buffer(dst), blck) == 0


# -- quantizing rows ------------------------------------------------------------------------------------------
# Types whose SIMD quantizer writes exactly the scalar reference's bytes (tests/test_quants_k.py checks it on
# every reference tensor) and is 4-7x faster; the others go through the scalar reference.
SIMD_SAME_BYTES = frozenset(int(x) for x in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K))

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
    from .engine.native import ffi, lib

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
        plans = plan(reader, params)
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
