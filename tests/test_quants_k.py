"""K-quants Q2_K..Q6_K and Q8_K: byte-exact with the reference files, numpy == C, SIMD == scalar."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import ref_ggml
from conftest import shared_path

from llamapy.native import ffi, kernels_best, lib, set_kernels
from llamapy.quants import kquants as K

TYPES = {
    "q2_k": lib.LP_TYPE_Q2_K,
    "q3_k": lib.LP_TYPE_Q3_K,
    "q4_k": lib.LP_TYPE_Q4_K,
    "q5_k": lib.LP_TYPE_Q5_K,
    "q6_k": lib.LP_TYPE_Q6_K,
}
ALL_TYPES = {**TYPES, "q8_k": lib.LP_TYPE_Q8_K}
# the reference quantizer's --pure outputs in ../shared/testdata/quant: file stem by type
REFERENCE_FILES = {"q2_k": "Q2_K", "q3_k": "Q3_K_S", "q4_k": "Q4_K_S", "q5_k": "Q5_K_S", "q6_k": "Q6_K"}
# thresholds of the reference's tests/test-quantize-fns.cpp
MAX_RMSE = {"q2_k": 0.0075, "q3_k": 0.004, "q4_k": 0.002, "q5_k": 0.002, "q6_k": 0.002}
MAX_DOT_ERROR = {"q2_k": 0.04, "q3_k": 0.04, "q4_k": 0.02, "q5_k": 0.02, "q6_k": 0.02}
MAX_REFERENCE_ERROR = 0.0001
TEST_SIZE = 32 * 128

HAS_AVX2 = bool(lib.lp_cpu_has_avx2())
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2+FMA+F16C")
LEVELS = ["scalar"] + (["avx2"] if HAS_AVX2 else [])  # the kernel levels this CPU runs


# -- the C kernels (blocks are independent: a matrix is quantized as one long row) --------------------
def c_quantize(t: int, x: np.ndarray, ref: bool = False) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, lib.lp_row_size(t, n)), dtype=np.uint8)
    fn = lib.lp_quantize_row_ref if ref else lib.lp_quantize_row
    assert fn(t, ffi.from_buffer("float[]", x), ffi.from_buffer(out), rows * n) == 0
    return out


def c_dequantize(t: int, q: np.ndarray, n: int) -> np.ndarray:
    q = np.ascontiguousarray(q, dtype=np.uint8)
    out = np.zeros((q.shape[0], n), dtype=np.float32)
    assert lib.lp_dequantize_row(t, ffi.from_buffer(q), ffi.from_buffer("float[]", out), q.shape[0] * n) == 0
    return out


def c_vec_dot(t: int, qx: np.ndarray, qy: np.ndarray, n: int) -> float:
    s = ffi.new("float *")
    assert (
        lib.lp_vec_dot(
            t, n, ffi.from_buffer(np.ascontiguousarray(qx)), ffi.from_buffer(np.ascontiguousarray(qy)), s
        )
        == 0
    )
    return s[0]


def np_quantize(name: str, x: np.ndarray) -> np.ndarray:
    return getattr(K, f"quantize_{name}")(x)


def np_dequantize(name: str, q: np.ndarray, n: int) -> np.ndarray:
    return getattr(K, f"dequantize_{name}")(q, n)


@pytest.fixture
def kernels():
    """Switch kernels in a test with kernels('scalar') / kernels('avx2'); the previous level is restored."""
    before = lib.lp_kernels_active()
    yield set_kernels
    assert lib.lp_kernels_set(before) == 0


@pytest.fixture(params=["scalar", "avx2"])
def level(request, kernels):
    """Each kernel level in turn, switched on for the test (avx2 skipped on a CPU without it)."""
    if request.param == "avx2" and not HAS_AVX2:
        pytest.skip("this CPU has no AVX2+FMA+F16C")
    kernels(request.param)
    return request.param


# -- deterministic and awkward inputs ------------------------------------------------------------
def cosine_data(offset: float, n: int = TEST_SIZE) -> np.ndarray:
    """The reference test's data: 0.1 + 2*cos(i + offset), cos in float32 as cosf."""
    i = np.arange(n, dtype=np.float32)
    return (np.float64(0.1) + 2 * np.cos(i + np.float32(offset)).astype(np.float32)).astype(np.float32)[
        None, :
    ]


def awkward_rows() -> np.ndarray:
    """(16, 512) rows for every branch of the fits: zeros, constants, ramps, tiny, huge, spikes."""
    rng = np.random.default_rng(1234)
    n = 512
    rows = [
        np.zeros(n),
        np.full(n, 0.125),
        np.full(n, -3.0),
        np.linspace(-1, 1, n),
        rng.standard_normal(n) * 1e-8,
        rng.standard_normal(n) * 1e-20,
        rng.standard_normal(n) * 300,
        np.abs(rng.standard_normal(n)),
        -np.abs(rng.standard_normal(n)),
        rng.standard_t(2, n),
        np.where(rng.random(n) < 0.02, rng.standard_normal(n) * 50, rng.standard_normal(n) * 0.01),
        np.where(np.arange(n) % 64 < 16, 0.0, rng.standard_normal(n)),
        np.round(rng.standard_normal(n) * 4) / 4,
        rng.standard_normal(n) * np.repeat(rng.uniform(0, 2, n // 16), 16),
        np.concatenate([np.zeros(256), rng.standard_normal(256)]),
        np.tile([1.0, -1.0], n // 2),
    ]
    return np.array(rows, dtype=np.float32)


def random_rows(rows: int = 8, n: int = 1024, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)


# -- byte-exact against the reference quantizer -------------------------------------------------------------
def reference_tensors(name: str):
    """(weights (rows, n), the reference's bytes) for every tensor the reference quantized to this type."""
    from llamapy.ggufio.reader import GGUFReader

    src = GGUFReader(shared_path("testdata", "quant", "src.gguf"))
    quant = GGUFReader(shared_path("testdata", "quant", f"{REFERENCE_FILES[name]}.gguf"))
    out = []
    for tname, ti in quant.tensors.items():
        if ti.type_name.lower() != name:
            continue
        x = np.array(src.tensors[tname].data, dtype=np.float32).reshape(ti.n_rows, ti.shape[0])
        out.append((tname, x, np.array(ti.raw)))
    src.close()
    quant.close()
    assert len(out) == 16, f"expected all 16 2-D weights as {name}, found {len(out)}"
    return out


@pytest.mark.parametrize("name", list(TYPES))
def test_c_scalar_matches_reference_files(name, kernels):
    kernels("scalar")
    for tname, x, ref in reference_tensors(name):
        got = c_quantize(TYPES[name], x, ref=True)
        bad = np.nonzero((got != ref).any(axis=1))[0]
        assert len(bad) == 0, f"{tname}: {len(bad)} of {len(ref)} rows differ, first {bad[:5]}"


@needs_avx2
@pytest.mark.parametrize("name", list(TYPES))
def test_c_avx2_quantizer_matches_reference_files(name, kernels):
    kernels("avx2")
    for tname, x, ref in reference_tensors(name):
        got = c_quantize(TYPES[name], x)
        bad = np.nonzero((got != ref).any(axis=1))[0]
        assert len(bad) == 0, f"{tname}: {len(bad)} of {len(ref)} rows differ, first {bad[:5]}"


@pytest.mark.parametrize("name", list(TYPES))
def test_numpy_matches_reference_files(name):
    # the edge rows of src.gguf are among the first rows; then every 16th row keeps this quick
    for tname, x, ref in reference_tensors(name):
        pick = np.unique(np.concatenate([np.arange(32), np.arange(32, len(x), 16)]))
        got = np_quantize(name, x[pick])
        bad = pick[np.nonzero((got != ref[pick]).any(axis=1))[0]]
        assert len(bad) == 0, f"{tname}: rows {bad[:5]} differ"


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_reference_bytes_numpy_equals_c(name, kernels):
    _, x, ref = reference_tensors(name)[0]
    want = np_dequantize(name, ref, x.shape[1])
    for level in LEVELS:
        kernels(level)
        np.testing.assert_array_equal(c_dequantize(TYPES[name], ref, x.shape[1]), want, err_msg=level)


# -- numpy, C scalar and C SIMD write the same bytes --------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_quantizers_agree(name, kernels):
    t = ALL_TYPES[name]
    for x in [awkward_rows(), random_rows(), cosine_data(0.0), cosine_data(0.5, 768)]:
        want = np_quantize(name, x)
        for level in LEVELS:
            kernels(level)
            np.testing.assert_array_equal(c_quantize(t, x, ref=True), want, err_msg=f"{level} reference")
            np.testing.assert_array_equal(c_quantize(t, x), want, err_msg=f"{level} active")


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_dequantize_numpy_equals_c_on_any_bytes(name, kernels):
    """Random blocks (every scale bit pattern), with the fp16 / float scale fields set to finite values."""
    rng = np.random.default_rng(99)
    n = 2048
    q = rng.integers(0, 256, size=(4, n // 256 * K.BLOCK_BYTES[name]), dtype=np.uint8)
    blocks = q.reshape(-1, K.BLOCK_BYTES[name])
    scales = rng.uniform(-2, 2, size=(len(blocks), 2)).astype(np.float32)
    if name == "q8_k":
        blocks[:, :4] = scales[:, :1].view(np.uint8)
    else:
        offset = {"q2_k": 80, "q3_k": 108, "q4_k": 0, "q5_k": 0, "q6_k": 208}[name]
        width = 4 if name in ("q2_k", "q4_k", "q5_k") else 2
        blocks[:, offset : offset + width] = scales[:, : width // 2].astype(np.float16).view(np.uint8)
    want = np_dequantize(name, q, n)
    for level in LEVELS:
        kernels(level)
        np.testing.assert_array_equal(c_dequantize(ALL_TYPES[name], q, n), want, err_msg=level)


# -- the reference's accuracy tests (tests/test-quantize-fns.cpp) --------------------------------------------
def reference_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """The reference's array_rmse: sqrt(sum of squares) / n (sic), in double."""
    d = a.astype(np.float64).ravel() - b.astype(np.float64).ravel()
    return float(np.sqrt(np.sum(d * d)) / d.size)


@pytest.mark.parametrize("name", list(TYPES))
def test_round_trip_error(name, level):
    x = cosine_data(0.0)
    y = c_dequantize(TYPES[name], c_quantize(TYPES[name], x), TEST_SIZE)
    assert reference_rmse(x, y) < MAX_RMSE[name]


@needs_avx2
@pytest.mark.parametrize("name", list(TYPES))
def test_simd_quantizer_vs_scalar_reference(name, kernels):
    x = cosine_data(0.0)
    kernels("scalar")
    ref = c_dequantize(TYPES[name], c_quantize(TYPES[name], x, ref=True), TEST_SIZE)
    kernels("avx2")
    fast = c_dequantize(TYPES[name], c_quantize(TYPES[name], x), TEST_SIZE)
    assert reference_rmse(fast, ref) < MAX_REFERENCE_ERROR


@pytest.mark.parametrize("name", list(TYPES))
def test_dot_product_error(name, level):
    x, y = cosine_data(0.0), cosine_data(1.0)
    qx = c_quantize(TYPES[name], x)
    qy = c_quantize(lib.LP_TYPE_Q8_K, y)
    assert lib.lp_vec_dot_type(TYPES[name]) == lib.LP_TYPE_Q8_K
    got = c_vec_dot(TYPES[name], qx, qy, TEST_SIZE)
    want = float(np.dot(x.astype(np.float64).ravel(), y.astype(np.float64).ravel()))
    assert abs(got - want) / TEST_SIZE < MAX_DOT_ERROR[name]


# -- vec_dot: the exact value of the quantized rows, and SIMD == scalar ------------------------------
def dot_cases():
    """(weight rows, activation rows) with awkward and random values, n = 512."""
    aw = awkward_rows()
    rnd = random_rows(16, 512, seed=3) * np.float32(3)
    return [(aw, rnd), (rnd, aw), (rnd[::-1].copy(), rnd)]


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_vec_dot_is_dot_of_dequantized(name, kernels):
    """Each level's vec_dot equals the float64 dot of the dequantized rows, up to float32 accumulation."""
    t = ALL_TYPES[name]
    for wx, ay in dot_cases():
        qx, qy = np_quantize(name, wx), K.quantize_q8_k(ay)
        dx, dy = (
            np_dequantize(name, qx, 512).astype(np.float64),
            K.dequantize_q8_k(qy, 512).astype(np.float64),
        )
        for r in range(len(wx)):
            want = float(np.dot(dx[r], dy[r]))
            scale = float(np.dot(np.abs(dx[r]), np.abs(dy[r]))) + 1e-30
            for level in LEVELS:
                kernels(level)
                got = c_vec_dot(t, qx[r], qy[r], 512)
                assert abs(got - want) <= 2e-6 * scale, f"{level} row {r}: {got} vs {want}"


@needs_avx2
@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_vec_dot_avx2_vs_scalar(name, kernels):
    t = ALL_TYPES[name]
    rng = np.random.default_rng(11)
    for n in (256, 512, 4096):
        x = rng.standard_normal((4, n)).astype(np.float32)
        y = rng.standard_normal((4, n)).astype(np.float32) * np.float32(5)
        qx, qy = np_quantize(name, x), K.quantize_q8_k(y)
        for r in range(4):
            kernels("scalar")
            s = c_vec_dot(t, qx[r], qy[r], n)
            kernels("avx2")
            v = c_vec_dot(t, qx[r], qy[r], n)
            assert v == pytest.approx(s, rel=1e-5, abs=1e-5 * n)


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_vec_dot_rows_is_vec_dot_per_row(name, kernels):
    """One weight row against several activation rows (strided): bitwise the single-row results."""
    t, n = ALL_TYPES[name], 768
    rng = np.random.default_rng(5)
    qx = np_quantize(name, rng.standard_normal((1, n)).astype(np.float32))
    qy = K.quantize_q8_k(rng.standard_normal((9, n)).astype(np.float32))
    stride = qy.shape[1] + 8  # rows not packed: the stride is honoured
    ys = np.zeros((9, stride), np.uint8)
    ys[:, : qy.shape[1]] = qy
    for level in LEVELS:
        kernels(level)
        want = np.array([c_vec_dot(t, qx, ys[j, : qy.shape[1]], n) for j in range(9)], dtype=np.float32)
        for nrc in (1, 4, 5, 9):
            got = np.full(nrc, np.nan, dtype=np.float32)
            assert (
                lib.lp_vec_dot_rows(
                    t,
                    n,
                    nrc,
                    ffi.from_buffer(qx),
                    ffi.from_buffer(ys),
                    stride,
                    ffi.from_buffer("float[]", got),
                )
                == 0
            )
            np.testing.assert_array_equal(got, want[:nrc], err_msg=f"{level} nrc={nrc}")


@needs_avx2
def test_avx2_bitwise_equals_reference_library(kernels):
    """With a reference build at hand: quantized bytes, dot products and dequantized floats are its own."""
    ref = ref_ggml.load()
    if ref is None:
        pytest.skip(f"set {ref_ggml.ENV} to a reference build's lib folder (libggml-base.so, libggml-cpu.so)")
    kernels("avx2")
    rng = np.random.default_rng(0)
    n = 4096
    a = (rng.standard_normal((16, n)) * rng.uniform(0.1, 5, (16, 1))).astype(np.float32)
    qa = c_quantize(lib.LP_TYPE_Q8_K, a)
    ref_qa = np.zeros_like(qa)
    ref_quant = ref.from_float(lib.LP_TYPE_Q8_K)
    for r in range(len(a)):
        ref_quant(a[r].ctypes.data, ref_qa[r].ctypes.data, n)
    np.testing.assert_array_equal(qa, ref_qa)
    out = ctypes.c_float()
    for name, t in TYPES.items():
        w = (rng.standard_normal((16, n)) * rng.uniform(0.01, 1, (16, 1))).astype(np.float32)
        qw = c_quantize(t, w)
        ref_dot = ref.vec_dot(t)
        for r in range(len(w)):
            ref_dot(n, ctypes.byref(out), 0, qw[r].ctypes.data, 0, qa[r].ctypes.data, 0, 1)
            assert c_vec_dot(t, qw[r], qa[r], n) == out.value, f"{name} row {r}"
        for x in (w, awkward_rows()):
            ref_q = np.zeros((len(x), lib.lp_row_size(t, x.shape[1])), np.uint8)
            ref.quantize_chunk(t, x.ctypes.data, ref_q.ctypes.data, 0, len(x), x.shape[1])
            np.testing.assert_array_equal(c_quantize(t, x), ref_q, err_msg=f"{name} quantize")
        ref_deq = np.zeros_like(w)
        ref.to_float(t)(qw.ctypes.data, ref_deq.ctypes.data, w.size)
        np.testing.assert_array_equal(
            c_dequantize(t, qw, n).view(np.uint32), ref_deq.view(np.uint32), err_msg=name
        )


def test_kernel_table():
    sizes = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210, "q8_k": 292}
    for name, t in ALL_TYPES.items():
        assert lib.lp_blck_size(t) == 256 and lib.lp_type_size(t) == sizes[name] == K.BLOCK_BYTES[name]
        assert lib.lp_vec_dot_type(t) == lib.LP_TYPE_Q8_K
        assert lib.lp_row_size(t, 512) == 2 * sizes[name] and lib.lp_row_size(t, 100) == -1
    assert kernels_best() in ("scalar", "avx2+fma+f16c", "neon")


def test_numpy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        K.quantize_q4_k(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError):
        K.dequantize_q6_k(np.zeros((2, 100), dtype=np.uint8), 256)
