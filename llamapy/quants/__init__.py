"""Numpy references of every tensor format llamapy reads and writes, dispatched by GGML type id.

    data = quantize(ttype, x)        # x float32 (rows, n) -> uint8 (rows, row_bytes)
    x2 = dequantize(ttype, data, n)  # uint8 (rows, row_bytes) -> float32 (rows, n)

Readable and slow: the oracle the C kernels are tested against, byte for byte. Legacy formats live in
`legacy`, K-quants in `kquants` (imported only when a K-quant type is asked for). Which type each
tensor of a model gets (llama-quantize's mixes) is `plan`.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import TensorType, type_name

# type id -> (module, function suffix)
_FORMATS: dict[int, tuple[str, str]] = {
    int(TensorType.F32): ("legacy", "f32"),
    int(TensorType.F16): ("legacy", "f16"),
    int(TensorType.BF16): ("legacy", "bf16"),
    int(TensorType.Q4_0): ("legacy", "q4_0"),
    int(TensorType.Q4_1): ("legacy", "q4_1"),
    int(TensorType.Q5_0): ("legacy", "q5_0"),
    int(TensorType.Q5_1): ("legacy", "q5_1"),
    int(TensorType.Q8_0): ("legacy", "q8_0"),
    int(TensorType.Q8_1): ("legacy", "q8_1"),
    int(TensorType.IQ4_NL): ("legacy", "iq4_nl"),
    int(TensorType.Q2_K): ("kquants", "q2_k"),
    int(TensorType.Q3_K): ("kquants", "q3_k"),
    int(TensorType.Q4_K): ("kquants", "q4_k"),
    int(TensorType.Q5_K): ("kquants", "q5_k"),
    int(TensorType.Q6_K): ("kquants", "q6_k"),
    int(TensorType.Q8_K): ("kquants", "q8_k"),
}

SUPPORTED_TYPES = tuple(_FORMATS)


def _function(ttype: int, verb: str):
    try:
        module, suffix = _FORMATS[int(ttype)]
    except KeyError:
        raise LlamapyError(f"no numpy reference for tensor type {type_name(ttype)}") from None
    mod = importlib.import_module(f".{module}", __name__)
    return getattr(mod, f"{verb}_{suffix}")


def quantize(ttype: int, x: np.ndarray) -> np.ndarray:
    """float32 rows (rows, n) -> the bytes of each row in `ttype`, uint8 (rows, row_bytes)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    return _function(ttype, "quantize")(x)


def dequantize(ttype: int, data: np.ndarray, n: int) -> np.ndarray:
    """Rows of `ttype` bytes (rows, row_bytes) -> float32 (rows, n)."""
    return _function(ttype, "dequantize")(np.asarray(data, dtype=np.uint8), n)
