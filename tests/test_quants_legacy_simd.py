"""The SIMD row quantizers of the legacy formats against the C scalar reference, byte for byte, on random
blocks and on the blocks where the scalar loops' order decides: ties of magnitude, signed zeros, the largest
value negative, extremes, and non-finite values (handed to the scalar quantizer whole)."""
from __future__ import annotations

import numpy as np
import pytest

from llamapy.ggufio.constants import TensorType as T
from llamapy.native import ffi, kernels_best, lib, set_kernels

TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
F32_MAX = float(np.finfo(np.float32).max)


def quantize(t: int, x: np.ndarray, ref: bool) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    y = np.zeros(lib.lp_row_size(t, x.size), np.uint8)
    fn = lib.lp_quantize_row_ref if ref else lib.lp_quantize_row
    assert fn(t, ffi.from_buffer("float*", x), ffi.from_buffer(y), x.size) == 0
    return y.tobytes()


def edge_blocks() -> np.ndarray:
    """Blocks of 32 built to hit each branch of the scalar quantizers."""
    rng = np.random.default_rng(21)
    z = np.zeros(32, np.float32)
    blocks = [z.copy(), -z, np.where(np.arange(32) % 2, -0.0, 0.0)]
    def block(base: np.ndarray, **at: float) -> np.ndarray:
        b = np.array(base, dtype=np.float32)
        for k, v in at.items():
            b[int(k[1:])] = v
        return b

    blocks += [
        block(z, i5=-0.0, i9=3.0),                                  # min zero, the first zero negative
        block(z, i0=-0.0, i3=-2.0),                                 # max zero, the first zero negative
        block(rng.standard_normal(32), i7=-9.0, i20=9.0),           # a tie of magnitude, negative first
        block(rng.standard_normal(32), i7=9.0, i20=-9.0),           # positive first
        block(rng.standard_normal(32), i31=-50.0),                  # the largest is negative, last
        block(rng.standard_normal(32), i0=-50.0),
    ]
    blocks += [np.full(32, v) for v in (1.0, -1.0, 1e-30, -1e-45, 65504.0, -65520.0, 1e30, F32_MAX, -F32_MAX)]
    blocks.append(block(rng.standard_normal(32) * 1e38, i3=F32_MAX, i4=-F32_MAX))
    blocks.append(np.linspace(-1, 1, 32))
    blocks.append(np.tile([1.0, -1.0, 0.5, -0.5], 8))
    blocks.append(np.tile([0.0, 1.0], 16))
    blocks.append(np.tile([-1.0, -0.0], 16))
    blocks.append(np.abs(rng.standard_normal(32)) + 1.0)
    blocks.append(-np.abs(rng.standard_normal(32)) - 1.0)
    blocks.append(rng.standard_normal(32) * 1e-40)                    # subnormal
    return np.array(blocks, dtype=np.float32)


def non_finite_blocks() -> np.ndarray:
    rng = np.random.default_rng(5)
    blocks = []
    for v in (np.nan, np.inf, -np.inf):
        for at in (0, 13, 31):
            b = rng.standard_normal(32).astype(np.float32)
            b[at] = v
            blocks.append(b)
    return np.array(blocks, dtype=np.float32)


@pytest.fixture
def simd():
    best = kernels_best().split("+")[0]
    if best == "scalar":
        pytest.skip("no SIMD kernels on this CPU")
    set_kernels(best)
    yield best


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_simd_quantizer_writes_the_scalar_bytes_on_random_rows(t, simd):
    rng = np.random.default_rng(int(t))
    for scale in (1e-3, 1.0, 1e4):
        x = (rng.standard_normal(32 * 4096) * scale).astype(np.float32)
        x[rng.random(x.size) < 0.05] = 0.0
        assert quantize(t, x, ref=False) == quantize(t, x, ref=True)
    # whole F16 values, as a quantize from an F16 file sees them
    x = rng.standard_normal(32 * 4096).astype(np.float16).astype(np.float32)
    assert quantize(t, x, ref=False) == quantize(t, x, ref=True)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_simd_quantizer_writes_the_scalar_bytes_on_edge_blocks(t, simd):
    blocks = edge_blocks()
    for i, b in enumerate(blocks):
        got, want = quantize(t, b, ref=False), quantize(t, b, ref=True)
        assert got == want, f"block {i}: {b[:8]}..."
    assert quantize(t, blocks, ref=False) == quantize(t, blocks, ref=True)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_simd_quantizer_hands_non_finite_blocks_to_the_scalar_one(t, simd):
    for i, b in enumerate(non_finite_blocks()):
        assert quantize(t, b, ref=False) == quantize(t, b, ref=True), f"block {i}"
