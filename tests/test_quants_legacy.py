"""Legacy formats, IQ4_NL and F32/F16/BF16: numpy reference == C scalar == SIMD, and the reference's error bounds.

Error definitions and thresholds are those of the reference's tests/test-quantize-fns.cpp, on its data
`0.1 + 2*cos(i + offset)`.
"""
from __future__ import annotations

import numpy as np
import pytest

from llamapy import quants
from llamapy.ggufio.constants import TensorType as T
from llamapy.native import ffi, kernels_best, lib, set_kernels

TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1, T.IQ4_NL]
BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1, T.IQ4_NL]
DOT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL]
LEVELS = ["scalar"] + ([kernels_best()] if kernels_best() != "scalar" else [])
LEVELS = [lv.split("+")[0] for lv in LEVELS]

TEST_SIZE = 32 * 128
MAX_QUANTIZATION_REFERENCE_ERROR = 0.0001
MAX_QUANTIZATION_TOTAL_ERROR = 0.002
MAX_DOT_PRODUCT_ERROR = 0.02


@pytest.fixture(params=LEVELS)
def kernels(request):
    set_kernels(request.param)
    yield request.param
    set_kernels(LEVELS[-1])


# -- C calls ----------------------------------------------------------------------------------------------
def c_quantize(t: int, x: np.ndarray, ref: bool = False) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    y = np.zeros((rows, lib.lp_row_size(t, n)), np.uint8)
    fn = lib.lp_quantize_row_ref if ref else lib.lp_quantize_row
    assert fn(t, ffi.from_buffer("float*", x), ffi.from_buffer(y), x.size) == 0
    return y


def c_dequantize(t: int, data: np.ndarray, n: int) -> np.ndarray:
    data = np.ascontiguousarray(data)
    y = np.zeros((data.shape[0], n), np.float32)
    assert lib.lp_dequantize_row(t, ffi.from_buffer(data), ffi.from_buffer("float*", y), y.size) == 0
    return y


def c_vec_dot(t: int, n: int, a: np.ndarray, b: np.ndarray) -> float:
    s = ffi.new("float*")
    assert lib.lp_vec_dot(t, n, ffi.from_buffer(np.ascontiguousarray(a)), ffi.from_buffer(np.ascontiguousarray(b)), s) == 0
    return s[0]


# -- data ---------------------------------------------------------------------------------------------------
def generate_data(offset: float, n: int) -> np.ndarray:
    """The reference test's data: 0.1 + 2*cosf(i + offset), summed in double, stored as float."""
    c = np.cos((np.arange(n, dtype=np.float32) + np.float32(offset)).astype(np.float32))
    return (0.1 + 2.0 * c.astype(np.float64)).astype(np.float32).reshape(1, n)


def array_rmse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64).ravel() - b.astype(np.float64).ravel()
    return float(np.sqrt(np.sum(d * d)) / d.size)


def awkward_rows(n: int = 256) -> np.ndarray:
    """Rows that stress the quantizers: gaussian, heavy tails, outliers, constants, zeros, tiny and huge values."""
    rng = np.random.default_rng(7)
    rows = [
        rng.standard_normal(n),
        rng.standard_cauchy(n),
        np.where(rng.random(n) < 0.02, 50.0, 0.01) * rng.standard_normal(n),
        np.zeros(n),
        np.full(n, 0.5),
        np.full(n, -0.25),
        np.linspace(-1, 1, n),
        1e-8 * rng.standard_normal(n),
        300.0 * rng.standard_normal(n),
        np.abs(rng.standard_normal(n)),
        -np.abs(rng.standard_normal(n)),
        np.tile([1.0, -1.0, 0.5, -0.5], n // 4),  # ties for roundf and for the nibble rounding
    ]
    x = np.array(rows, dtype=np.float32)
    x[3, 7] = -0.0
    return x


# -- byte exactness ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_numpy_c_scalar_and_simd_write_the_same_bytes(t, kernels):
    for x in (awkward_rows(), generate_data(0.0, TEST_SIZE)):
        ref = quants.quantize(t, x)
        assert ref.shape == (x.shape[0], lib.lp_row_size(t, x.shape[1]))
        np.testing.assert_array_equal(c_quantize(t, x, ref=True), ref)
        np.testing.assert_array_equal(c_quantize(t, x), ref)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_numpy_and_c_dequantize_to_the_same_floats(t, kernels):
    x = awkward_rows()
    data = quants.quantize(t, x)
    want = quants.dequantize(t, data, x.shape[1])
    got = c_dequantize(t, data, x.shape[1])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_q4_0_block_by_hand():
    """One block worked by hand: the largest magnitude is -4, so d = 0.5 and x = (q - 8) * 0.5."""
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [-4.0, 1.0, 0.74, 3.5]
    x[0, 16] = 0.25  # 0.25 / 0.5 + 8.5 = 9.0 -> 9
    data = c_quantize(T.Q4_0, x, ref=True)[0]
    assert data[:2].view("<f2")[0] == np.float16(0.5)
    # q = trunc(x / d + 8.5): values 0..3 -> 0, 10, 9 (9.98), 15 (15.5 clamped); zeros -> 8
    assert list(data[2:6]) == [0 | (9 << 4), 10 | (8 << 4), 9 | (8 << 4), 15 | (8 << 4)]
    assert np.array_equal(quants.quantize(T.Q4_0, x)[0], data)


def test_q8_0_rounds_halves_away_from_zero():
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 127.0  # d = 1, id = 1
    x[0, 1:5] = [2.5, -2.5, 0.5, -1.5]
    for level in LEVELS:
        set_kernels(level)
        q = c_quantize(T.Q8_0, x)[0, 2:].view(np.int8)
        assert list(q[:5]) == [127, 3, -3, 1, -2]
    set_kernels(LEVELS[-1])


def test_q8_1_stores_the_scaled_sum():
    x = generate_data(0.5, 64)
    data = c_quantize(T.Q8_1, x, ref=True).reshape(2, 36)
    for blk, xb in zip(data, x.reshape(2, 32)):
        d = np.float32(np.abs(xb).max() / np.float32(127))  # the unrounded scale, not the stored fp16 one
        q = blk[4:].view(np.int8).astype(np.int32)
        assert blk[0:2].view("<f2")[0] == np.float16(d)
        assert blk[2:4].view("<f2")[0] == np.float16(np.float32(q.sum()) * d)


def test_iq4_nl_block_fits_better_than_the_first_guess():
    """The 15 trial scales exist to find a better fit than scaling the largest value to the end level."""
    x = awkward_rows()[:3, :32]
    data = quants.quantize(T.IQ4_NL, x)
    deq = quants.dequantize(T.IQ4_NL, data, 32)
    for row, back in zip(x, deq):
        d0 = np.float32(-row[np.argmax(np.abs(row))] / -127.0)
        levels = quants.legacy.IQ4NL_VALUES.astype(np.float32)
        first = levels[np.abs(row[:, None] / d0 - levels[None, :]).argmin(axis=1)] * d0
        w = row * row
        assert np.sum(w * (row - back) ** 2) <= np.sum(w * (row - first) ** 2) * (1 + 1e-3)


# -- the reference's error bounds --------------------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_round_trip_error(t, kernels):
    x = generate_data(0.0, TEST_SIZE)
    err = array_rmse(x, c_dequantize(t, c_quantize(t, x), TEST_SIZE))
    assert err < MAX_QUANTIZATION_TOTAL_ERROR


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_fast_quantizer_against_reference(t, kernels):
    x = generate_data(0.0, TEST_SIZE)
    fast = c_dequantize(t, c_quantize(t, x), TEST_SIZE)
    ref = c_dequantize(t, c_quantize(t, x, ref=True), TEST_SIZE)
    assert array_rmse(fast, ref) < MAX_QUANTIZATION_REFERENCE_ERROR


@pytest.mark.parametrize("t", DOT_TYPES, ids=lambda t: t.name)
def test_dot_product_error(t, kernels):
    x1, x2 = generate_data(0.0, TEST_SIZE), generate_data(1.0, TEST_SIZE)
    vt = lib.lp_vec_dot_type(t)
    got = c_vec_dot(t, TEST_SIZE, c_quantize(t, x1), c_quantize(vt, x2))
    want = float(np.dot(x1.ravel().astype(np.float64), x2.ravel().astype(np.float64)))
    assert abs(got - want) / TEST_SIZE < MAX_DOT_PRODUCT_ERROR


@pytest.mark.parametrize("t", DOT_TYPES, ids=lambda t: t.name)
def test_dot_product_matches_dequantized_dot(t, kernels):
    """The dot of the quantized rows is the dot of what they dequantize to (up to float rounding)."""
    x = awkward_rows(512)
    x = x[np.abs(x).max(axis=1) < 100]  # keep the f16 range for the float types
    vt = lib.lp_vec_dot_type(t)
    for a, b in zip(x, x[::-1]):
        qa, qb = c_quantize(t, a[None]), c_quantize(vt, b[None])
        da = quants.dequantize(t, qa, 512).astype(np.float64)
        db = quants.dequantize(vt, qb, 512).astype(np.float64)
        want = float(np.dot(da.ravel(), db.ravel()))
        if vt == T.Q8_1:  # the minimum's term uses the stored fp16 sum s of the Q8_1 block, not d * sum(q)
            m = qa.reshape(16, -1)[:, 2:4].copy().view("<f2").astype(np.float64).ravel()
            yb = qb.reshape(16, 36)
            s = yb[:, 2:4].copy().view("<f2").astype(np.float64).ravel()
            dq = yb[:, 0:2].copy().view("<f2").astype(np.float64).ravel() * yb[:, 4:].view(np.int8).sum(axis=1)
            want += float(np.dot(m, s - dq))
        scale = float(np.dot(np.abs(da.ravel()), np.abs(db.ravel()))) + 1e-30
        assert abs(c_vec_dot(t, 512, qa, qb) - want) <= 1e-5 * scale


def test_simd_dot_products_agree_with_scalar():
    if len(LEVELS) == 1:
        pytest.skip("no SIMD kernels on this CPU")
    x1, x2 = generate_data(0.0, TEST_SIZE), generate_data(1.0, TEST_SIZE)
    for t in DOT_TYPES:
        vt = lib.lp_vec_dot_type(t)
        qa, qb = c_quantize(t, x1, ref=True), c_quantize(vt, x2, ref=True)
        got = {}
        for level in LEVELS:
            set_kernels(level)
            got[level] = c_vec_dot(t, TEST_SIZE, qa, qb)
        assert abs(got[LEVELS[0]] - got[LEVELS[1]]) <= 1e-4 * abs(got[LEVELS[0]]) + 1e-3, t.name
    set_kernels(LEVELS[-1])


# -- F16 / BF16 conversions -----------------------------------------------------------------------------------
def test_every_f16_value_converts_exactly(kernels):
    h = np.arange(65536, dtype=np.uint16)
    got = c_dequantize(T.F16, h.view(np.uint8).reshape(1, -1), 65536)[0]
    want = h.view(np.float16).astype(np.float32)
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.isnan(got[~finite]).all()


def test_f32_to_f16_rounds_to_nearest_even(kernels):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    x = np.concatenate([x, (rng.standard_normal(1 << 16) * np.exp(rng.uniform(-20, 12, 1 << 16))).astype(np.float32)])
    x = x[: len(x) // 8 * 8].reshape(1, -1)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint8)
    np.testing.assert_array_equal(c_quantize(T.F16, x), want)
    np.testing.assert_array_equal(c_quantize(T.F16, x, ref=True), want)


def test_f16_nan_is_the_quiet_nan_of_the_reference():
    x = np.array([[np.nan, -np.nan, np.inf, -np.inf] * 2], np.float32)
    got = c_quantize(T.F16, x, ref=True).view("<u2")[0]
    assert list(got[:4]) == [0x7E00, 0xFE00, 0x7C00, 0xFC00]


def test_bf16_rounding_and_nan(kernels):
    u = np.array([0x3F808000, 0x3F818000, 0x3F80C000, 0x7FC00001, 0xFF800001, 0x7F7FFFFF, 0x00000001, 0x80000000],
                 dtype=np.uint32)
    got = c_quantize(T.BF16, u.view(np.float32).reshape(1, -1)).view("<u2")[0]
    assert list(got) == [0x3F80, 0x3F82, 0x3F81, 0x7FC0, 0xFFC0, 0x7F80, 0x0000, 0x8000]


@pytest.mark.parametrize("n", [576, 1536, 600, 37])
def test_f16_vec_dot_rows_is_vec_dot_per_row(n, kernels):
    """One F16 weight row against several activation rows (a batch's tokens, strided): bitwise the one-row dot
    of each (a speculative verify batch relies on it), tails of 8 and of single values included."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float16)
    ys = np.zeros((9, n + 12), np.float16)   # rows not packed: the stride is honoured
    ys[:, :n] = rng.standard_normal((9, n)).astype(np.float16)
    want = np.array([c_vec_dot(T.F16, n, x, ys[j, :n].copy()) for j in range(9)], dtype=np.float32)
    for nrc in (1, 2, 3, 9):
        got = np.full(nrc, np.nan, dtype=np.float32)
        assert lib.lp_vec_dot_rows(T.F16, n, nrc, ffi.from_buffer(x), ffi.from_buffer(ys), ys.strides[0],
                                   ffi.from_buffer("float[]", got)) == 0
        np.testing.assert_array_equal(got, want[:nrc], err_msg=f"{kernels} nrc={nrc}")
