"""K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K in numpy: the readable reference for the C kernels.

Each `quantize_*` takes float32 rows `(rows, n)` with `n % 256 == 0` and returns their GGUF bytes
`(rows, row_bytes)`; each `dequantize_*` takes those bytes and `n` and returns float32 `(rows, n)`.
The quantizers write the bytes the reference quantizer writes without an importance matrix, so every
float32 operation happens in the reference's order: sums run left to right (`np.add.accumulate`, never
numpy's pairwise `sum`), products associate left to right, and rounding is the reference's magic-number
round-half-even. The work is vectorized over sub-blocks.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
BLOCK_BYTES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210, "q8_k": 292}


# -- helpers -------------------------------------------------------------------------------------------------
def _nearest_int(v) -> np.ndarray:
    """Round float32 to nearest, ties to even, as the reference does (add 1.5*2^23, keep the mantissa)."""
    bits = (np.asarray(v, dtype=F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over the last axis, starting from +0 like a C loop."""
    return np.add.accumulate(a, axis=-1)[..., -1] + F32(0)


def _fp16_bits(v) -> np.ndarray:
    return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint16)


def _fp16_value(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(F32)


def _u16_bytes(bits: np.ndarray) -> np.ndarray:
    """(B,) uint16 -> (B, 2) little-endian bytes."""
    return np.ascontiguousarray(bits.astype("<u2")).view(np.uint8).reshape(-1, 2)


def _u16_from(b: np.ndarray) -> np.ndarray:
    """(B, 2) little-endian bytes -> (B,) uint16."""
    return np.ascontiguousarray(b).view("<u2").reshape(-1).astype(np.uint16)


def _to_blocks(x: np.ndarray) -> tuple[np.ndarray, int]:
    x = np.asarray(x, dtype=F32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] % QK_K:
        raise ValueError(f"K-quants need rows of a multiple of {QK_K} values, got shape {x.shape}")
    return np.ascontiguousarray(x).reshape(-1, QK_K), x.shape[0]  # (B, 256)


def _from_bytes(data: np.ndarray, n: int, name: str) -> tuple[np.ndarray, int]:
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 1:
        data = data[None, :]
    if n % QK_K or data.shape[1] != n // QK_K * BLOCK_BYTES[name]:
        raise ValueError(f"{name}: rows of {data.shape[1]} bytes don't hold {n} values")
    return np.ascontiguousarray(data).reshape(-1, BLOCK_BYTES[name]), data.shape[0]  # (B, block bytes)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(B, 256) values 0..3 -> (B, 64): byte 32*h + l holds value 128*h + 32*s + l at bits 2*s."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """(B, 64) -> (B, 256) values 0..3 (inverse of _pack_2bit)."""
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


def _first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest |x| over the last axis and the signed value where it first occurs."""
    idx = np.argmax(np.abs(x), axis=-1)
    mx = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    return np.abs(mx), mx


def _fit_sub_blocks(xb: np.ndarray, make, nmax: int):
    """Blocks (B, 256) as 16 sub-blocks of 16 fitted by `make` at `nmax`: scales (B, 16), levels (B, 16, 16),
    and each block's largest |scale| with its signed value (Q3_K and Q6_K)."""
    B = len(xb)
    scales, L = make(xb.reshape(B * 16, 16), nmax)
    scales, L = scales.reshape(B, 16), L.reshape(B, 16, 16)
    return (scales, L, *_first_absmax(scales))


def _running_max(a: np.ndarray) -> np.ndarray:
    """max(0, a...) over the last axis, as `if (a > m) m = a` from m = 0."""
    m = np.max(a, axis=-1)
    return np.where(m > 0, m, F32(0)).astype(F32)  # +0, never -0: the sign reaches fp16 bytes


# -- the reference's sub-block fits ------------------------------------------------------------
def _make_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Fit x ~ scale * L + min to each row of x (S, n), L in 0..nmax: scale (S,), -min (S,), L (S, n)."""
    mn = np.minimum(np.minimum.reduce(x, axis=1), F32(0))
    mx = np.max(x, axis=1)
    flat = mx == mn
    sum_w = np.add.accumulate(w, axis=1)[:, -1]
    sum_x = np.add.accumulate(w * x, axis=1)[:, -1]

    def mad_of(scale, m, L):
        diff = (scale[:, None] * L.astype(F32) + m[:, None]) - x
        diff = np.abs(diff) if use_mad else diff * diff
        return _seqsum(w * diff)

    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best_mad = mad_of(scale, mn, L)
    for step in range(nstep + 1):  # note: a better fit moves `mn`, and the later grids with it
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
        la = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = la.astype(F32)
        wl = w * lf
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * lf), _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        mad = mad_of(this_scale, this_min, la)
        better = (D > 0) & (mad < best_mad) & ~flat
        L = np.where(better[:, None], la, L)
        best_mad = np.where(better, mad, best_mad)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, F32(0), scale)
    return scale.astype(F32), (-mn).astype(F32), L


def _qx_fit(x, iscale, nmax):
    l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    lf = l.astype(F32)
    w = x * x
    return l, _seqsum((w * x) * lf), _seqsum((w * lf) * lf)


def _make_qx(x, nmax):
    """Fit x ~ scale * (L - nmax), weights x^2, over 19 grids near the max: scale (S,), L (S, n)."""
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    l, sumlx, suml2 = _qx_fit(x, F32(-nmax) / mx, nmax)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = _qx_fit(x, -(F32(nmax) + F32(0.1) * F32(step)) / mx, nmax)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(upd[:, None], l + nmax, L)
        scale = np.where(upd, sumlx / suml2, scale)
        best = np.where(upd, scale * sumlx, best)
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero[:, None], 0, L)


def _make_q3(x, nmax):
    """Q3_K's fit: the max-based grid, then up to 5 passes moving single quants while the fit improves."""
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    L, sumlx, suml2 = _qx_fit(x, F32(-nmax) / mx, nmax)
    active = ~zero
    for _ in range(5):
        changed = np.zeros(len(x), dtype=bool)
        for i in range(x.shape[1]):
            xi = x[:, i]
            w = xi * xi
            li = L[:, i].astype(F32)
            slx = sumlx - (w * xi) * li
            sl2 = suml2 - (w * li) * li
            new_l = np.clip(_nearest_int((xi * sl2) / slx), -nmax, nmax - 1)
            nf = new_l.astype(F32)
            slx2 = slx + (w * xi) * nf
            sl22 = sl2 + (w * nf) * nf
            ok = (
                active
                & (slx > 0)
                & (new_l != L[:, i])
                & (sl22 > 0)
                & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            )
            L[:, i] = np.where(ok, new_l, L[:, i])
            sumlx = np.where(ok, slx2, sumlx)
            suml2 = np.where(ok, sl22, suml2)
            changed |= ok
        active &= changed
    return np.where(zero, F32(0), sumlx / suml2).astype(F32), np.where(zero[:, None], 0, L + nmax)


# -- Q2_K ----------------------------------------------------------------------------------------------------
def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q2_K bytes (rows, n/256*84)."""
    xb, rows = _to_blocks(x)
    B = len(xb)
    xs = xb.reshape(B * 16, 16)
    with np.errstate(all="ignore"):
        scales, mins, L = _make_qkx2(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins, L = scales.reshape(B, 16), mins.reshape(B, 16), L.reshape(B, 16, 16)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        has_s, has_m = max_scale > 0, max_min > 0
        sc = np.where(has_s[:, None], _nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
        mb = np.where(has_m[:, None], _nearest_int((F32(15) / max_min)[:, None] * mins) << 4, 0)
        sc_bytes = ((sc & 0xFF) | (mb & 0xFF)).astype(np.uint8)  # (B, 16)
        d = np.where(has_s, _fp16_bits(max_scale / F32(15)), 0).astype(np.uint16)
        dmin = np.where(has_m, _fp16_bits(max_min / F32(15)), 0).astype(np.uint16)
        dl = _fp16_value(d)[:, None] * (sc_bytes & 0xF).astype(F32)  # (B, 16)
        ml = _fp16_value(dmin)[:, None] * (sc_bytes >> 4).astype(F32)
        lq = np.clip(_nearest_int((xb.reshape(B, 16, 16) + ml[:, :, None]) / dl[:, :, None]), 0, 3)
    L = np.where(dl[:, :, None] != 0, lq, L).reshape(B, QK_K)
    out = np.concatenate([sc_bytes, _pack_2bit(L), _u16_bytes(d), _u16_bytes(dmin)], axis=1)
    return out.reshape(rows, -1)


def dequantize_q2_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q2_K bytes (rows, n/256*84) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q2_k")
    sc = b[:, :16]
    q = _unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)
    dl = _fp16_value(_u16_from(b[:, 80:82]))[:, None] * (sc & 0xF).astype(F32)
    ml = _fp16_value(_u16_from(b[:, 82:84]))[:, None] * (sc >> 4).astype(F32)
    return (dl[:, :, None] * q - ml[:, :, None]).reshape(rows, n)


# -- Q3_K ----------------------------------------------------------------------------------------------------
def _pack_q3_scales(s6: np.ndarray) -> np.ndarray:
    """(B, 16) 6-bit values -> the 12 scale bytes of Q3_K."""
    s6 = s6.astype(np.uint8)
    lo = (s6[:, :8] & 0xF) | ((s6[:, 8:] & 0xF) << 4)
    hi = s6.reshape(-1, 4, 4) >> 4  # [r, k] = value 4*r + k
    hi = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return np.concatenate([lo, hi], axis=1)


def _unpack_q3_scales(b: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of Q3_K -> (B, 16) signed scales -32..31."""
    lo = np.concatenate([b[:, :8] & 0xF, b[:, :8] >> 4], axis=1).astype(np.int32)
    hi = (b[:, 8:12, None] >> (2 * np.arange(4, dtype=np.uint8))) & 3  # [k, r] = value 4*r + k
    hi = hi.transpose(0, 2, 1).reshape(-1, 16).astype(np.int32)
    return (lo | (hi << 4)) - 32


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q3_K bytes (rows, n/256*110)."""
    xb, rows = _to_blocks(x)
    B = len(xb)
    with np.errstate(all="ignore"):
        scales, L, _, max_scale = _fit_sub_blocks(xb, _make_q3, 4)
        nz = max_scale != 0
        iscale = F32(-32) / max_scale
        l8 = (
            (_nearest_int(iscale[:, None] * scales) + 128) & 0xFF
        ) - 128  # the reference stores it in an int8
        s6 = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0)
        sc_bytes = _pack_q3_scales(s6)
        d = np.where(nz, _fp16_bits(F32(1) / iscale), 0).astype(np.uint16)
        dl = _fp16_value(d)[:, None] * _unpack_q3_scales(sc_bytes).astype(F32)
        lq = np.clip(_nearest_int(xb.reshape(B, 16, 16) / dl[:, :, None]), -4, 3) + 4
    L = np.where(dl[:, :, None] != 0, lq, L).reshape(B, 8, 32)
    high = L > 3
    hmask = (high.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    qs = _pack_2bit(np.where(high, L - 4, L).reshape(B, QK_K))
    out = np.concatenate([hmask, qs, sc_bytes, _u16_bytes(d)], axis=1)
    return out.reshape(rows, -1)


def dequantize_q3_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q3_K bytes (rows, n/256*110) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q3_k")
    hm = (b[:, None, :32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (B, 8, 32)
    q = _unpack_2bit(b[:, 32:96]).astype(np.int32) - np.where(hm.reshape(-1, QK_K) != 0, 0, 4)
    dl = _fp16_value(_u16_from(b[:, 108:110]))[:, None] * _unpack_q3_scales(b[:, 96:108]).astype(F32)
    return (dl[:, :, None] * q.reshape(-1, 16, 16).astype(F32)).reshape(rows, n)


# -- Q4_K and Q5_K -------------------------------------------------------------------------------------------
def _pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(B, 8) 6-bit scales and mins -> the 12 scale bytes of Q4_K / Q5_K."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    return np.concatenate(
        [
            ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
            lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
            (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4),
        ],
        axis=1,
    )


def _unpack_k4_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 scale bytes of Q4_K / Q5_K -> scales (B, 8), mins (B, 8)."""
    sc = np.concatenate([b[:, 0:4] & 63, (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([b[:, 4:8] & 63, (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _quantize_k4(xb: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The shared part of Q4_K / Q5_K: d, dmin (B,), the 12 scale bytes (B, 12) and the quants L (B, 256)."""
    B = len(xb)
    xs = xb.reshape(B * 8, 32)
    with np.errstate(all="ignore"):
        av_x = np.sqrt(_seqsum(xs * xs) / F32(32))
        scales, mins, L = _make_qkx2(xs, av_x[:, None] + np.abs(xs), nmax, rmin, 0.1, nstep, False)
        scales, mins, L = scales.reshape(B, 8), mins.reshape(B, 8), L.reshape(B, 8, 32)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(_nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)  # uint8, then MIN(63, .)
        lm = np.minimum(_nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
        d, dmin = _fp16_bits(max_scale / F32(63)), _fp16_bits(max_min / F32(63))
        dl = _fp16_value(d)[:, None] * ls.astype(F32)
        ml = _fp16_value(dmin)[:, None] * lm.astype(F32)
        lq = np.clip(_nearest_int((xb.reshape(B, 8, 32) + ml[:, :, None]) / dl[:, :, None]), 0, nmax)
    L = np.where(dl[:, :, None] != 0, lq, L).reshape(B, 4, 2, 32)  # [chunk of 64, half, l]
    return d, dmin, _pack_k4_scales(ls, lm), L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q4_K bytes (rows, n/256*144)."""
    xb, rows = _to_blocks(x)
    d, dmin, sc_bytes, L = _quantize_k4(xb, 15, -1.0, 20)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).astype(np.uint8).reshape(-1, 128)
    out = np.concatenate([_u16_bytes(d), _u16_bytes(dmin), sc_bytes, qs], axis=1)
    return out.reshape(rows, -1)


def _dequantize_k4(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    sc, m = _unpack_k4_scales(b[:, 4:16])
    dl = _fp16_value(_u16_from(b[:, 0:2]))[:, None] * sc.astype(F32)
    ml = _fp16_value(_u16_from(b[:, 2:4]))[:, None] * m.astype(F32)
    return dl[:, :, None] * q.reshape(-1, 8, 32).astype(F32) - ml[:, :, None]


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(B, 128) -> (B, 256): byte 32*c + l holds value 64*c + l (low) and 64*c + 32 + l (high)."""
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, QK_K)


def dequantize_q4_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q4_K bytes (rows, n/256*144) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q4_k")
    return _dequantize_k4(b, _unpack_nibbles(b[:, 16:144])).reshape(rows, n)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q5_K bytes (rows, n/256*176)."""
    xb, rows = _to_blocks(x)
    d, dmin, sc_bytes, L = _quantize_k4(xb, 31, -0.5, 15)
    L = L.reshape(-1, 8, 32)
    qh = ((L >> 4).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(
        axis=1, dtype=np.uint8
    )
    low = (L & 0xF).reshape(-1, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).astype(np.uint8).reshape(-1, 128)
    out = np.concatenate([_u16_bytes(d), _u16_bytes(dmin), sc_bytes, qh, qs], axis=1)
    return out.reshape(rows, -1)


def dequantize_q5_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q5_K bytes (rows, n/256*176) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q5_k")
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (B, 8, 32)
    q = _unpack_nibbles(b[:, 48:176]) | (high.reshape(-1, QK_K) << 4)
    return _dequantize_k4(b, q).reshape(rows, n)


# -- Q6_K ----------------------------------------------------------------------------------------------------
def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q6_K bytes (rows, n/256*210)."""
    xb, rows = _to_blocks(x)
    B = len(xb)
    with np.errstate(all="ignore"):
        scales, L, max_abs, max_scale = _fit_sub_blocks(xb, _make_qx, 32)
        zero = max_abs < GROUP_MAX_EPS
        iscale = F32(-128) / max_scale
        d = _fp16_bits(F32(1) / iscale)
        sc = ((np.minimum(127, _nearest_int(iscale[:, None] * scales)) + 128) & 0xFF) - 128  # int8
        dl = _fp16_value(d)[:, None] * sc.astype(F32)
        lq = np.clip(_nearest_int(xb.reshape(B, 16, 16) / dl[:, :, None]), -32, 31) + 32
    L = np.where(dl[:, :, None] != 0, lq, L).reshape(B, 2, 4, 32).astype(np.uint8)  # [half, part, l]
    ql = np.concatenate(
        [L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4, L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4], axis=2
    )
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out = np.concatenate(
        [ql.reshape(B, 128), qh.reshape(B, 64), sc.astype(np.int8).view(np.uint8), _u16_bytes(d)], axis=1
    )
    out[zero] = 0
    return out.reshape(rows, -1)


def dequantize_q6_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q6_K bytes (rows, n/256*210) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q6_k")
    ql = b[:, :128].reshape(-1, 2, 1, 2, 32)  # [half, ., ql half, l]
    low = (ql >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1, 1)) & 0xF  # [half, nibble, ql half, l]
    qh = (b[:, 128:192].reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = (
        low.reshape(-1, 2, 4, 32).astype(np.int32) | (qh.astype(np.int32) << 4)
    ) - 32  # part = 2*nibble + ql half
    sc = b[:, 192:208].view(np.int8).astype(F32)
    d = _fp16_value(_u16_from(b[:, 208:210]))
    return ((d[:, None] * sc)[:, :, None] * q.reshape(-1, 16, 16).astype(F32)).reshape(rows, n)


# -- Q8_K ----------------------------------------------------------------------------------------------------
def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, n) -> Q8_K bytes (rows, n/256*292): float32 d, 256 int8 quants, 16 int16 sums."""
    xb, rows = _to_blocks(x)
    amax, mx = _first_absmax(xb)
    zero = amax == 0
    with np.errstate(all="ignore"):
        iscale = F32(-127) / mx
        q = np.minimum(127, _nearest_int(iscale[:, None] * xb)).astype(np.int8)
        d = (F32(1) / iscale).astype(F32)
    q[zero] = 0
    d[zero] = 0
    bsums = q.reshape(-1, 16, 16).sum(axis=2, dtype=np.int16)
    out = np.concatenate(
        [d.astype("<f4").view(np.uint8).reshape(-1, 4), q.view(np.uint8), bsums.astype("<i2").view(np.uint8)],
        axis=1,
    )
    return out.reshape(rows, -1)


def dequantize_q8_k(data: np.ndarray, n: int) -> np.ndarray:
    """Q8_K bytes (rows, n/256*292) -> float32 (rows, n)."""
    b, rows = _from_bytes(data, n, "q8_k")
    d = np.ascontiguousarray(b[:, :4]).view("<f4").astype(F32)  # (B, 1)
    return (d * b[:, 4:260].view(np.int8).astype(F32)).reshape(rows, n)
