"""Output types: parsing `--outtype`, choosing each tensor's GGUF type, and encoding rows into it.

Plain output types (f32, f16, bf16, q8_0) follow the reference converter: 1-D tensors, norms and
biases stay F32, every other weight takes the chosen type (Q8_0 falls back to F16 for rows that are not
a multiple of 32). Any `llama-quantize` type (q4_k_m, q4_0, ...) is also accepted: each tensor is
quantized straight from the checkpoint's values with llamapy's quantizer and the reference's per-tensor
mix, so no F16 file is ever written in between.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import LlamaFileType

from ..errors import LlamapyError
from ..gguf_constants import TYPE_SIZES, TensorType
from .lazy import to_f32

PLAIN = {
    "f32": (LlamaFileType.ALL_F32, TensorType.F32),
    "f16": (LlamaFileType.MOSTLY_F16, TensorType.F16),
    "bf16": (LlamaFileType.MOSTLY_BF16, TensorType.BF16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, TensorType.Q8_0),
}
ALIASES = {
    "fp32": "f32", "float32": "f32", "float": "f32", "0": "f32",
    "fp16": "f16", "float16": "f16", "half": "f16", "1": "f16",
    "bfloat16": "bf16",
    "q4_k": "q4_k_m", "q5_k": "q5_k_m", "q3_k": "q3_k_m",
}
# llama-quantize file types accepted directly (each tensor's type from the quantizer's mix)
MIXES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
         "q5_k_s", "q5_k_m", "q6_k", "iq4_nl")


@dataclass(frozen=True)
class OutType:
    name: str  # "f16", "q4_k_m", "auto"
    file_type: int | None  # general.file_type (LlamaFileType); None until "auto" is resolved
    base: int | None  # the GGUF type of "mostly X" weights for plain types; None for quantizer mixes

    @property
    def label(self) -> str:
        """The type as written in file names: F16, BF16, Q8_0, Q4_K_M."""
        return LlamaFileType(self.file_type).name.partition("_")[2]

    @property
    def is_mix(self) -> bool:
        return self.base is None and self.name != "auto"


def parse_outtype(text: str) -> OutType:
    """An --outtype value, any case: f32 f16 bf16 q8_0 auto, a quantize type (q4_k_m, ...), or the old
    numeric form 0 (f32) / 1 (f16)."""
    s = str(text).strip().lower()
    s = ALIASES.get(s, s)
    if s == "auto":
        return OutType("auto", None, None)
    if s in PLAIN:
        ft, tt = PLAIN[s]
        return OutType(s, int(ft), int(tt))
    if s in MIXES:
        return OutType(s, int(LlamaFileType["MOSTLY_" + s.upper()]), None)
    raise LlamapyError(
        f"unknown --outtype '{text}': use one of f32, f16, bf16, q8_0, auto, or a quantize type "
        f"({', '.join(MIXES)})"
    )


def resolve_auto(first_dtype: str) -> OutType:
    """The reference's 'auto': F16 when the first tensor is F16, else BF16."""
    return parse_outtype("f16" if first_dtype == "F16" else "bf16")


def keeps_f32(gguf_name: str, n_dims: int) -> bool:
    """1-D tensors, norms and non-weights (biases) are always written as F32."""
    return n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight")


def plain_tensor_type(outtype: OutType, gguf_name: str, shape: tuple[int, ...]) -> int:
    """GGUF type of one tensor for a plain output type; `shape` in numpy order."""
    if keeps_f32(gguf_name, len(shape)):
        return int(TensorType.F32)
    t = outtype.base
    blck = TYPE_SIZES[t][0]
    if shape[-1] % blck:
        return int(TensorType.F16)  # as the reference: rows that don't fill whole blocks fall back to F16
    return t


# -- encoding -------------------------------------------------------------------------------------
def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even; NaNs stay (quiet) NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 64).astype(np.uint16), rounded)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero), exact in float32."""
    a = np.abs(x)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(2 * (a - fl)), x)


def q8_0_numpy(x: np.ndarray) -> np.ndarray:
    """Q8_0 blocks of float32 values, byte-identical to the reference's scalar quantizer."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    qs = _roundf(blocks * inv[:, None]).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = qs.view(np.uint8)
    return out.reshape(-1)


def quantize_rows(ttype: int, x: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """Rows of float32 (n_rows, row_len) -> the bytes of GGUF type `ttype`, as the reference quantizer."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        from .. import quantize as q
    except ImportError:
        q = None
    if q is not None and hasattr(q, "quantize_rows"):
        return np.asarray(q.quantize_rows(ttype, x, n_threads=n_threads), dtype=np.uint8).reshape(-1)
    blck, size = TYPE_SIZES[ttype]
    from ..native import ffi, lib

    if lib.lp_type_supported(ttype):
        out = np.empty(x.size // blck * size, dtype=np.uint8)
        rc = lib.lp_quantize_row_ref(ttype, ffi.cast("const float *", x.ctypes.data),
                                     ffi.cast("void *", out.ctypes.data), x.size)
        if rc == 0:
            return out
    if ttype == TensorType.Q8_0:
        return q8_0_numpy(x)
    raise LlamapyError(f"quantizing to {TensorType(ttype).name} needs llamapy's quantizer, which isn't built")


def encode_rows(rows: np.ndarray, src_dtype: str, ttype: int, n_threads: int | None = None) -> np.ndarray:
    """Source rows (any source dtype) -> the bytes of GGUF type `ttype`, as a flat uint8 array."""
    if ttype == TensorType.F16 and src_dtype == "F16":
        return rows.reshape(-1).view(np.uint8)
    if ttype == TensorType.BF16 and src_dtype == "BF16":
        return rows.reshape(-1).view(np.uint8)
    x = to_f32(rows, src_dtype)
    if ttype == TensorType.F32:
        return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint8)
    if ttype == TensorType.F16:
        return x.astype(np.float16).reshape(-1).view(np.uint8)
    if ttype == TensorType.BF16:
        return f32_to_bf16(x).reshape(-1).view(np.uint8)
    row_len = rows.shape[-1] if rows.ndim > 1 else rows.size
    return quantize_rows(ttype, x.reshape(-1, row_len), n_threads)
