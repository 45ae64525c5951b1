"""K-quant kernels: dot products, activation and weight quantizers, dequantizers, scalar vs SIMD.

    python benchmarks/bench_kquants.py [--repeat 7]

Prints ns per 256-value block (best of --repeat runs, so other load on the machine matters less) for
each level the CPU runs. The reference engine quantizes activations to Q8_K with its scalar code on x86,
so the scalar `q8_K act` line is its cost there. `GB/s` is the weight bytes a dot product consumes per
second on one thread: decode needs it well above the ~15 GB/s one core can read from memory. `rows4` is
how much faster vec_dot_rows runs one weight row against 4 activation rows than 4 vec_dot calls do.
Weight quantizers: `ref` is the scalar reference, `active` what lp_quantize_row uses (same bytes).

With LLAMAPY_REF_GGML naming the lib folder of a reference build (libggml-base.so, libggml-cpu.so), it
also times the reference's own kernels through ctypes on long rows (so the call costs little) and
prints the ratios: its vec_dot (same results, bit for bit), its Q8_K activation quantizer and its
weight quantizers (ggml_quantize_chunk without an importance matrix; same bytes).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llamapy.native import ffi, kernels_best, lib, set_kernels

TYPES = [
    ("q2_K", lib.LP_TYPE_Q2_K),
    ("q3_K", lib.LP_TYPE_Q3_K),
    ("q4_K", lib.LP_TYPE_Q4_K),
    ("q5_K", lib.LP_TYPE_Q5_K),
    ("q6_K", lib.LP_TYPE_Q6_K),
    ("q8_K", lib.LP_TYPE_Q8_K),
]
N_DOT = 256 * 512  # values per vec_dot call: weights and activations stay in L2/L3
N_QUANT = 256 * 64


def best_of(fn, repeat: int, inner: int) -> float:
    """Seconds per call of fn(), the best of `repeat` runs of `inner` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def measure(level: str, repeat: int) -> dict:
    set_kernels(level)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N_DOT).astype(np.float32)
    a = rng.standard_normal(4 * N_DOT).astype(np.float32)  # 4 activation rows
    xb, ab = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", a)
    rb = lib.lp_row_size(lib.LP_TYPE_Q8_K, N_DOT)
    qa = np.zeros(4 * rb, np.uint8)
    qab = ffi.from_buffer(qa)
    lib.lp_quantize_row(lib.LP_TYPE_Q8_K, ab, qab, 4 * N_DOT)
    out = {
        "q8_K act": best_of(
            functools.partial(lib.lp_quantize_row, lib.LP_TYPE_Q8_K, ab, qab, N_DOT), repeat, 5
        )
        / (N_DOT // 256)
    }
    s = ffi.new("float *")
    y = np.zeros(N_DOT, np.float32)
    yb = ffi.from_buffer("float[]", y)
    for name, t in TYPES:
        q = np.zeros(lib.lp_row_size(t, N_DOT), np.uint8)
        qb = ffi.from_buffer(q)
        lib.lp_quantize_row(t, xb, qb, N_DOT)
        blocks = N_DOT // 256
        dot = best_of(functools.partial(lib.lp_vec_dot, t, N_DOT, qb, qab, s), repeat, 20) / blocks
        deq = best_of(functools.partial(lib.lp_dequantize_row, t, qb, yb, N_DOT), repeat, 5) / blocks
        out[name] = {"dot": dot, "gbs": lib.lp_type_size(t) / dot / 1e9, "deq": deq}
        if name != "q8_K":
            qblocks = N_QUANT // 256
            ref = functools.partial(lib.lp_quantize_row_ref, t, xb, qb, N_QUANT)
            active = functools.partial(lib.lp_quantize_row, t, xb, qb, N_QUANT)
            out[name]["ref"] = best_of(ref, 2, 1) / qblocks
            out[name]["active"] = best_of(active, 2, 1) / qblocks
        # prompt processing: one weight row against 4 activation rows, against 4 single dots
        s4 = ffi.new("float[4]")
        single = functools.partial(_four_dots, t, qb, qab, rb, s4)
        rows = functools.partial(lib.lp_vec_dot_rows, t, N_DOT, 4, qb, qab, rb, s4)
        out[name]["single4"] = best_of(single, repeat, 5)
        out[name]["rows4"] = best_of(rows, repeat, 5)
    return out


def _four_dots(t, qb, qab, rb, s4) -> None:
    for j in range(4):
        lib.lp_vec_dot(t, N_DOT, qb, qab + j * rb, s4 + j)


def reference_table(repeat: int) -> None:
    """Ours against the reference's kernels, called through ctypes on long rows."""
    import ctypes

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from ref_ggml import RefGGML

    folder = os.environ["LLAMAPY_REF_GGML"]
    ref = RefGGML(folder)

    n, nq = 256 * 4096, 256 * 32
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ab, wb = ffi.from_buffer("float[]", a), ffi.from_buffer("float[]", w)
    qa = np.zeros(lib.lp_row_size(lib.LP_TYPE_Q8_K, n), np.uint8)
    qab = ffi.from_buffer(qa)
    ref_q8 = ref.from_float(lib.LP_TYPE_Q8_K)
    ours = best_of(functools.partial(lib.lp_quantize_row, lib.LP_TYPE_Q8_K, ab, qab, n), repeat, 3)
    theirs = best_of(functools.partial(ref_q8, a.ctypes.data, qa.ctypes.data, n), repeat, 3)
    blocks = n // 256
    print()
    print(f"against the reference ({folder}), ns per block (quantize: us per block)")
    print(f"q8_K activations: {ours / blocks * 1e9:.1f} vs {theirs / blocks * 1e9:.1f}: {theirs / ours:.2f}x")
    print(
        f"{'type':6} {'dot ours':>9} {'dot ref':>8} {'ratio':>6} {'quant ours':>11} {'quant ref':>10} {'ratio':>6}"
    )
    s, out = ffi.new("float *"), ctypes.c_float()
    for name, t in TYPES[:-1]:
        q = np.zeros(lib.lp_row_size(t, n), np.uint8)
        qb = ffi.from_buffer(q)
        lib.lp_quantize_row(t, wb, qb, n)
        ref_dot = ref.vec_dot(t)
        d_ours = best_of(functools.partial(lib.lp_vec_dot, t, n, qb, qab, s), repeat, 5) / blocks
        d_ref = (
            best_of(
                functools.partial(ref_dot, n, ctypes.byref(out), 0, q.ctypes.data, 0, qa.ctypes.data, 0, 1),
                repeat,
                5,
            )
            / blocks
        )
        q_ours = best_of(functools.partial(lib.lp_quantize_row, t, wb, qb, nq), 3, 1) / (nq // 256)
        q_ref = best_of(
            functools.partial(ref.quantize_chunk, t, w.ctypes.data, q.ctypes.data, 0, 1, nq), 3, 1
        ) / (nq // 256)
        print(
            f"{name:6} {d_ours * 1e9:9.1f} {d_ref * 1e9:8.1f} {d_ref / d_ours:5.2f}x "
            f"{q_ours * 1e6:11.2f} {q_ref * 1e6:10.2f} {q_ref / q_ours:5.1f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    best = kernels_best()
    levels = ["scalar"] + ([best.split("+")[0]] if best != "scalar" else [])
    before = lib.lp_kernels_active()
    try:
        res = {lv: measure(lv, args.repeat) for lv in levels}
    finally:
        lib.lp_kernels_set(before)
    simd = levels[-1]
    print(f"K-quant kernels, ns per block of 256 values (best of {args.repeat}); levels: {', '.join(levels)}")
    print()
    print(
        f"{'type':6} {'dot scalar':>11} {'dot ' + simd:>10} {'speedup':>8} {'GB/s':>6} {'rows4':>6} "
        f"{'dequant':>8} {'quant ref':>10} {'quant active':>13} {'speedup':>8}"
    )
    for name, _ in TYPES:
        sc, sm = res["scalar"][name], res[simd][name]
        line = (
            f"{name:6} {sc['dot'] * 1e9:11.1f} {sm['dot'] * 1e9:10.1f} {sc['dot'] / sm['dot']:7.1f}x "
            f"{sm['gbs']:6.1f} {sm['single4'] / sm['rows4']:5.1f}x {sm['deq'] * 1e9:8.1f}"
        )
        if "ref" in sm:
            line += f" {sm['ref'] * 1e9:10.0f} {sm['active'] * 1e9:13.0f} {sm['ref'] / sm['active']:7.1f}x"
        print(line)
    sc, sm = res["scalar"]["q8_K act"], res[simd]["q8_K act"]
    print()
    print(
        f"q8_K activation quantizer: {sc * 1e9:.1f} ns/block scalar (the reference's x86 path), "
        f"{sm * 1e9:.1f} ns/block {simd}: {sc / sm:.1f}x"
    )
    if os.environ.get("LLAMAPY_REF_GGML"):
        reference_table(args.repeat)


if __name__ == "__main__":
    main()
