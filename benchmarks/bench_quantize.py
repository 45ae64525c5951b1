"""Benchmark `llamapy quantize` on a TinyLlama-1.1B-shaped F16 file (random weights, ~2.1 GB).

    python benchmarks/bench_quantize.py [--workdir DIR] [--threads 2] [--types Q4_K_M,Q4_0,...]

Writes the F16 file once (kept in the work directory for the next run), then quantizes it with each
type in a fresh process and prints wall time and peak RSS. With LLAMAPY_REF_QUANTIZE naming the
reference's llama-quantize binary, it runs that too, on the same file, and prints the ratios.
Targets: at most half the reference's time for every type (the same bytes), peak RSS under 1 GiB.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_util import REF_COLUMNS, measure, print_table, ref_cells, warm
from make_tiny_llama import write_f16_model  # the same TinyLlama-shaped F16 file the engine benchmark uses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench-quantize"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="Q4_K_M,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0")
    ap.add_argument("--keep", action="store_true", help="keep the quantized outputs")
    a = ap.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    src = os.path.join(a.workdir, "tinyllama-shaped-f16.gguf")
    if not os.path.exists(src):
        t0 = time.perf_counter()
        print(f"writing {src} ...", file=sys.stderr)
        write_f16_model(src)
        print(f"  {os.path.getsize(src) / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    warm(src)  # both quantizers start from a warm page cache

    ref = os.environ.get("LLAMAPY_REF_QUANTIZE")
    llamapy = [sys.executable, "-m", "llamapy", "quantize"]
    rows = []
    for qtype in a.types.split(","):
        out = os.path.join(a.workdir, f"out-{qtype}.gguf")
        ref_out = os.path.join(a.workdir, f"ref-{qtype}.gguf")
        ref_cmd = [ref, src, ref_out, qtype, str(a.threads)] if ref else None
        rows.append({"type": qtype, **measure(llamapy + [src, out, qtype, str(a.threads)], out, ref_cmd, ref_out,
                                              keep=a.keep)})

    print(f"\nquantize a TinyLlama-1.1B-shaped F16 file ({os.path.getsize(src) / 2**30:.2f} GiB), "
          f"{a.threads} threads\n")
    head = "| type   | llamapy s | peak RSS MiB | output MiB |"
    if ref:
        head += REF_COLUMNS
    print_table(head, [f"| {r['type']:<6} | {r['t']:9.1f} | {r['rss']:12.0f} | {r['size']:10.1f} |"
                       + (ref_cells(r) if ref else "") for r in rows])
    print("\ntargets: time ratio <= 0.50x with the same bytes, peak RSS < 1024 MiB (a shared machine: noisy)")


if __name__ == "__main__":
    main()
