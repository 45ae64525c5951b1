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

from ..errors import LlamapyError
from ..ggufio.constants import TYPE_SIZES, TensorType
from ..ggufio.filetypes import QUANT_OPTIONS, ftype_name, parse_ftype
from .lazy import to_f32

# the types the reference converter writes itself: name -> file type (ftype, the type weights get)
PLAIN = {o.name.lower(): o for o in QUANT_OPTIONS if o.name in ("F32", "F16", "BF16", "Q8_0")}
ALIASES = {
    "fp32": "f32", "float32": "f32", "float": "f32", "0": "f32",
    "fp16": "f16", "float16": "f16", "half": "f16", "1": "f16",
    "bfloat16": "bf16",
}


@dataclass(frozen=True)
class OutType:
    name: str  # "f16", "q4_k_m", "auto"
    file_type: int | None  # general.file_type (LLAMA_FTYPE); None until "auto" is resolved
    base: int | None  # the GGUF type of "mostly X" weights for plain types; None for quantizer mixes

    @property
    def label(self) -> str:
        """The type as written in file names: F16, BF16, Q8_0, Q4_K_M."""
        if self.base is None and self.name != "auto":
            return self.name.upper()  # a quantize type as named on the command line (Q4_K_M)
        return ftype_name(self.file_type)

    @property
    def is_mix(self) -> bool:
        return self.base is None and self.name != "auto"


def parse_outtype(text: str) -> OutType:
    """An --outtype value, any case: f32 f16 bf16 q8_0 auto, a quantize type (q4_k_m, q4_0, ...), or the
    old numeric form 0 (f32) / 1 (f16)."""
    s = str(text).strip().lower()
    s = ALIASES.get(s, s)
    if s == "auto":
        return OutType("auto", None, None)
    if s in PLAIN:
        return OutType(s, int(PLAIN[s].ftype), int(PLAIN[s].tensor_type))
    opt = parse_ftype(s) if not s.lstrip("+-").isdigit() else None
    if opt is not None and opt.name != "COPY":
        return OutType(s, int(opt.ftype), None)
    mixes = [o.name.lower() for o in QUANT_OPTIONS if o.name.lower() not in PLAIN and o.name != "COPY"]
    raise LlamapyError(
        f"unknown --outtype '{text}': use f32, f16, bf16, q8_0, auto, or a quantize type ({', '.join(mixes)})"
    )


def resolve_auto(first_dtype: str) -> OutType:
    """The reference's 'auto': F16 when the first tensor is F16, else BF16."""
    return parse_outtype("f16" if first_dtype == "F16" else "bf16")


def keeps_f32(gguf_name: str, n_dims: int) -> bool:
    """1-D tensors, norms, expert routers and non-weights (biases) are always written as F32."""
    return (n_dims <= 1 or gguf_name.endswith(("_norm.weight", ".ffn_gate_inp.weight"))
            or not gguf_name.endswith(".weight"))


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
_HALF_TYPES = {"F16": TensorType.F16, "BF16": TensorType.BF16}


def rows_to_f32(rows: np.ndarray, src_dtype: str) -> np.ndarray:
    """Source rows as float32; F16/BF16 widened by the C core's row kernels (exact)."""
    t = _HALF_TYPES.get(src_dtype)
    if t is None:
        return to_f32(rows, src_dtype)
    from ..native import ffi, lib

    src = np.ascontiguousarray(rows)
    out = np.empty(src.shape, dtype=np.float32)
    if lib.lp_dequantize_row(int(t), ffi.from_buffer(src), ffi.from_buffer("float *", out), src.size) != 0:
        raise LlamapyError(f"can't widen {src_dtype} rows")
    return out


def f32_to_half(x: np.ndarray, ttype: int) -> np.ndarray:
    """float32 -> F16 or BF16 bits with the C core's row kernels: round to nearest even, as the reference
    converter's numpy conversion (NaN payloads aside)."""
    from ..native import ffi, lib

    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(src.shape, dtype=np.uint16)
    if lib.lp_quantize_row(int(ttype), ffi.from_buffer("float *", src), ffi.from_buffer(out), src.size) != 0:
        raise LlamapyError(f"can't convert rows to {TensorType(ttype).name}")
    return out


def quantize_rows(ttype: int, x: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """Rows of float32 (n_rows, row_len) -> the bytes of GGUF type `ttype`, as the reference quantizer."""
    from ..quantize import quantize_rows as q

    return q(int(ttype), x, n_threads=n_threads).reshape(-1)


def encode_rows(rows: np.ndarray, src_dtype: str, ttype: int, n_threads: int | None = None) -> np.ndarray:
    """Source rows (any source dtype) -> the bytes of GGUF type `ttype`, as a flat uint8 array."""
    if ttype == TensorType.F16 and src_dtype == "F16":
        return rows.reshape(-1).view(np.uint8)
    if ttype == TensorType.BF16 and src_dtype == "BF16":
        return rows.reshape(-1).view(np.uint8)
    x = rows_to_f32(rows, src_dtype)
    if ttype == TensorType.F32:
        return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint8)
    if ttype in (TensorType.F16, TensorType.BF16):
        return f32_to_half(x, ttype).reshape(-1).view(np.uint8)
    row_len = rows.shape[-1] if rows.ndim > 1 else rows.size
    return quantize_rows(ttype, x.reshape(-1, row_len), n_threads)
