"""Numpy references for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and IQ4_NL.

Readable and slow: the oracle the C kernels are tested against. Each quantizer writes the bytes of the
reference quantizer: every operation is single precision, in the C code's order, with its truncating
casts and its roundf (halves away from zero). Rows go in as float32 (rows, n) and come out as uint8
(rows, row_bytes); a row is n/32 blocks laid end to end.
"""
from __future__ import annotations

import numpy as np

QK = 32
F32 = np.float32

# (values per block, bytes per block) of the types here
BLOCK = {
    "q4_0": 18,
    "q4_1": 20,
    "q5_0": 22,
    "q5_1": 24,
    "q8_0": 34,
    "q8_1": 36,
    "iq4_nl": 18,
}

IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


# -- helpers ------------------------------------------------------------------------------------------
def _blocks(x: np.ndarray) -> np.ndarray:
    """(rows, n) float32 -> (rows * n/32, 32) float32 blocks."""
    x = np.ascontiguousarray(x, dtype=F32)
    if x.ndim != 2 or x.shape[1] % QK:
        raise ValueError(f"rows must be 2-D with a length that is a multiple of {QK}, got {x.shape}")
    return x.reshape(-1, QK)


def _rows(blocks: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_blocks, block_bytes) uint8 -> (rows, row_bytes) uint8."""
    return np.ascontiguousarray(blocks).reshape(n_rows, -1)


def _split(data: np.ndarray, n: int, block_bytes: int) -> tuple[np.ndarray, int]:
    """(rows, row_bytes) uint8 -> ((n_blocks, block_bytes) uint8, rows)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim == 1:
        data = data.reshape(1, -1)
    rows = data.shape[0]
    if n % QK or data.shape[1] != n // QK * block_bytes:
        raise ValueError(f"{data.shape[1]} bytes per row don't hold {n} values of {block_bytes}-byte blocks")
    return data.reshape(-1, block_bytes), rows


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 (k,) -> uint8 (k, 2): IEEE half, round to nearest even (NaN becomes the quiet 0x7e00)."""
    h = v.astype(np.float16).view(np.uint16)
    nan = np.isnan(v)
    if nan.any():
        h = np.where(nan, (np.signbit(v).astype(np.uint16) << 15) | np.uint16(0x7E00), h)
    return h.astype("<u2").view(np.uint8).reshape(-1, 2)


def _f16(b: np.ndarray) -> np.ndarray:
    """uint8 (k, 2) -> float32 (k,)."""
    return np.ascontiguousarray(b).view("<f2").reshape(-1).astype(F32)


def _signed_absmax(b: np.ndarray) -> np.ndarray:
    """The value of largest magnitude of each block (the first on a tie), 0 for an all-zero block."""
    a = np.abs(b)
    first = np.argmax(a, axis=1)
    m = b[np.arange(len(b)), first]
    return np.where(a.max(axis=1) > 0, m, F32(0)).astype(F32)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _trunc_int(v: np.ndarray) -> np.ndarray:
    """C's float -> int cast (toward zero)."""
    return np.trunc(v).astype(np.int32)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero."""
    t = np.trunc(v)
    return (t + np.where(np.abs(v - t) >= F32(0.5), np.sign(v), F32(0))).astype(np.int32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(k, 32) ints 0..15 -> (k, 16) uint8: value j low nibble, value j+16 high nibble."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(k, 16) uint8 -> (k, 32) int32."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int32)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """(k, 32) ints 0..31 -> (k, 4) uint8: bit 4 of value j in bit j of a little-endian uint32."""
    bits = ((q >> 4) & 1).astype(np.uint32)
    qh = (bits << np.arange(QK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """(k, 4) uint8 -> (k, 32) int32 holding 0 or 16."""
    v = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return (((v >> np.arange(QK, dtype=np.uint32)) & 1) << 4).astype(np.int32)


# -- plain types --------------------------------------------------------------------------------------
def quantize_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F32)
    return x.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_f32(data: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(data, dtype=np.uint8).view("<f4").reshape(-1, n).astype(F32)


def quantize_f16(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F32)
    return _f16_bytes(x.reshape(-1)).reshape(x.shape[0], -1)


def dequantize_f16(data: np.ndarray, n: int) -> np.ndarray:
    return _f16(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, 2)).reshape(-1, n)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the top 16 bits; NaN keeps its top half, made quiet."""
    x = np.ascontiguousarray(x, dtype=F32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    h = np.where(nan, (u >> 16) | 64, rounded).astype("<u2")
    return h.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_bf16(data: np.ndarray, n: int) -> np.ndarray:
    h = np.ascontiguousarray(data, dtype=np.uint8).view("<u2").astype(np.uint32)
    return (h << 16).view(F32).reshape(-1, n)


# -- Q4_0: x = (q - 8) * d ----------------------------------------------------------------------------
def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    d = (_signed_absmax(b) / F32(-8)).astype(F32)
    id_ = _inverse(d)[:, None]
    q = np.minimum(15, _trunc_int(b * id_ + F32(8.5)))
    return _rows(np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1), x.shape[0])


def dequantize_q4_0(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q4_0"])
    d = _f16(blk[:, 0:2])[:, None]
    q = _unpack_nibbles(blk[:, 2:18]) - 8
    return (q.astype(F32) * d).reshape(rows, n)


# -- Q4_1: x = q * d + m ------------------------------------------------------------------------------
def _min_max_scale(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mn, mx = b.min(axis=1), b.max(axis=1)
    d = ((mx - mn) / F32(levels)).astype(F32)
    return mn.astype(F32), d, _inverse(d)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    mn, d, id_ = _min_max_scale(b, 15)
    q = np.minimum(15, _trunc_int((b - mn[:, None]) * id_[:, None] + F32(0.5)))
    return _rows(np.concatenate([_f16_bytes(d), _f16_bytes(mn), _pack_nibbles(q)], axis=1), x.shape[0])


def dequantize_q4_1(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q4_1"])
    d, m = _f16(blk[:, 0:2])[:, None], _f16(blk[:, 2:4])[:, None]
    q = _unpack_nibbles(blk[:, 4:20])
    return (q.astype(F32) * d + m).reshape(rows, n)


# -- Q5_0: x = (q - 16) * d, q in 0..31 ---------------------------------------------------------------
def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    d = (_signed_absmax(b) / F32(-16)).astype(F32)
    id_ = _inverse(d)[:, None]
    q = np.minimum(31, _trunc_int(b * id_ + F32(16.5)))
    return _rows(np.concatenate([_f16_bytes(d), _pack_high_bits(q), _pack_nibbles(q)], axis=1), x.shape[0])


def dequantize_q5_0(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q5_0"])
    d = _f16(blk[:, 0:2])[:, None]
    q = (_unpack_nibbles(blk[:, 6:22]) | _unpack_high_bits(blk[:, 2:6])) - 16
    return (q.astype(F32) * d).reshape(rows, n)


# -- Q5_1: x = q * d + m, q in 0..31 -------------------------------------------------------------------
def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    b = _blocks(x)
    mn, d, id_ = _min_max_scale(b, 31)
    q = _trunc_int((b - mn[:, None]) * id_[:, None] + F32(0.5)) & 0xFF
    parts = [_f16_bytes(d), _f16_bytes(mn), _pack_high_bits(q), _pack_nibbles(q)]
    return _rows(np.concatenate(parts, axis=1), x.shape[0])


def dequantize_q5_1(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q5_1"])
    d, m = _f16(blk[:, 0:2])[:, None], _f16(blk[:, 2:4])[:, None]
    q = _unpack_nibbles(blk[:, 8:24]) | _unpack_high_bits(blk[:, 4:8])
    return (q.astype(F32) * d + m).reshape(rows, n)


# -- Q8_0 / Q8_1: x = q * d, q in -127..127 (Q8_1 also stores d * sum(q)) ------------------------------
def _q8(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = (np.abs(b).max(axis=1) / F32(127)).astype(F32)
    q = _roundf(b * _inverse(d)[:, None])
    return d, q


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d, q = _q8(_blocks(x))
    return _rows(np.concatenate([_f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1), x.shape[0])


def dequantize_q8_0(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q8_0"])
    d = _f16(blk[:, 0:2])[:, None]
    return (blk[:, 2:].view(np.int8).astype(F32) * d).reshape(rows, n)


def quantize_q8_1(x: np.ndarray) -> np.ndarray:
    d, q = _q8(_blocks(x))
    s = (q.sum(axis=1).astype(F32) * d).astype(F32)
    parts = [_f16_bytes(d), _f16_bytes(s), q.astype(np.int8).view(np.uint8)]
    return _rows(np.concatenate(parts, axis=1), x.shape[0])


def dequantize_q8_1(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["q8_1"])
    d = _f16(blk[:, 0:2])[:, None]
    return (blk[:, 4:].view(np.int8).astype(F32) * d).reshape(rows, n)


# -- IQ4_NL: x = IQ4NL_VALUES[q] * d -------------------------------------------------------------------
def _iq4nl_nearest(v: np.ndarray) -> np.ndarray:
    """Index of the level nearest to v; on a tie the upper one (the C binary search's choice)."""
    vals = IQ4NL_VALUES.astype(F32)
    hi = np.clip(np.searchsorted(vals, v, side="right"), 1, 15)
    lower = (v - vals[hi - 1]) < (vals[hi] - v)
    idx = np.where(lower, hi - 1, hi)
    idx = np.where(v <= vals[0], 0, idx)
    return np.where(v >= vals[15], 15, idx)


def _iq4nl_fit(b: np.ndarray, w: np.ndarray, id_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums sum(w q x) and sum(w q q) for the levels chosen at inverse scale id_, in C's order."""
    q = IQ4NL_VALUES.astype(F32)[_iq4nl_nearest(b * id_[:, None])]
    sumqx = np.zeros(len(b), F32)
    sumq2 = np.zeros(len(b), F32)
    for j in range(QK):  # sequential float32 sums, as the C loop adds them
        wq = w[:, j] * q[:, j]
        sumqx = sumqx + wq * b[:, j]
        sumq2 = sumq2 + wq * q[:, j]
    return sumqx, sumq2


def quantize_iq4_nl(x: np.ndarray, ntry: int = 7) -> np.ndarray:
    """The reference's model quantizer for IQ4_NL without an importance matrix (weights x^2, 2*ntry+1 tries)."""
    b = _blocks(x)
    w = (b * b).astype(F32)
    mx = _signed_absmax(b)
    live = np.abs(mx) >= F32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        v0 = F32(IQ4NL_VALUES[0])
        d = (-mx / v0).astype(F32)
        sumqx, sumq2 = _iq4nl_fit(b, w, (F32(1) / d).astype(F32))
        d = (sumqx / sumq2).astype(F32)
        best = (d * sumqx).astype(F32)
        for itry in range(-ntry, ntry + 1):
            id_ = (F32(itry + int(IQ4NL_VALUES[0])) / mx).astype(F32)
            sumqx, sumq2 = _iq4nl_fit(b, w, id_)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d).astype(F32)
            best = np.where(better, d * sumqx, best).astype(F32)
    d = np.where(live, d, F32(0)).astype(F32)
    L = _iq4nl_nearest(b * _inverse(d)[:, None])
    return _rows(np.concatenate([_f16_bytes(d), _pack_nibbles(L)], axis=1), x.shape[0])


def dequantize_iq4_nl(data: np.ndarray, n: int) -> np.ndarray:
    blk, rows = _split(data, n, BLOCK["iq4_nl"])
    d = _f16(blk[:, 0:2])[:, None]
    q = IQ4NL_VALUES[_unpack_nibbles(blk[:, 2:18])].astype(F32)
    return (d * q).reshape(rows, n)
