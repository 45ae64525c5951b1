"""Benchmark `llamapy quantize` on a TinyLlama-1.1B-shaped F16 file (random weights, ~2.1 GB).

    python benchmarks/bench_quantize.py [--workdir DIR] [--threads 2] [--types Q4_K_M,Q4_0]

Writes the F16 file once (kept in the work directory for the next run), then quantizes it with each
type in a fresh process and prints wall time and peak RSS. With LLAMAPY_REF_QUANTIZE naming the
reference's llama-quantize binary, it runs that too, on the same file, and prints the ratios.
Targets: no slower than the reference, peak RSS under 1 GiB.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from make_tiny_llama import write_f16_model  # the same TinyLlama-shaped F16 file the engine benchmark uses


def run_measured(cmd: list[str]) -> tuple[float, float, int]:
    """Run a command; its wall time in seconds, peak RSS in MiB and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  command failed ({code}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench-quantize"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="Q4_K_M,Q4_0")
    ap.add_argument("--keep", action="store_true", help="keep the quantized outputs")
    a = ap.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    src = os.path.join(a.workdir, "tinyllama-shaped-f16.gguf")
    if not os.path.exists(src):
        t0 = time.perf_counter()
        print(f"writing {src} ...", file=sys.stderr)
        write_f16_model(src)
        print(f"  {os.path.getsize(src) / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    # read once so both quantizers start from a warm page cache
    with open(src, "rb") as f:
        while f.read(1 << 24):
            pass

    ref = os.environ.get("LLAMAPY_REF_QUANTIZE")
    llamapy = [sys.executable, "-m", "llamapy", "quantize"]
    rows = []
    for qtype in a.types.split(","):
        out = os.path.join(a.workdir, f"out-{qtype}.gguf")
        t, rss, code = run_measured(llamapy + [src, out, qtype, str(a.threads)])
        size = os.path.getsize(out) / 2**20 if code == 0 else float("nan")
        row = {"type": qtype, "t": t, "rss": rss, "size": size, "ok": code == 0}
        if ref:
            ref_out = os.path.join(a.workdir, f"ref-{qtype}.gguf")
            rt, rrss, rcode = run_measured([ref, src, ref_out, qtype, str(a.threads)])
            row.update(rt=rt, rrss=rrss, rok=rcode == 0)
            if code == 0 and rcode == 0:
                with open(out, "rb") as f1, open(ref_out, "rb") as f2:
                    same = True
                    while True:
                        b1, b2 = f1.read(1 << 24), f2.read(1 << 24)
                        if b1 != b2:
                            same = False
                            break
                        if not b1:
                            break
                row["same"] = same
            if not a.keep and os.path.exists(ref_out):
                os.unlink(ref_out)
        if not a.keep and os.path.exists(out):
            os.unlink(out)
        rows.append(row)

    print(f"\nquantize a TinyLlama-1.1B-shaped F16 file ({os.path.getsize(src) / 2**30:.2f} GiB), "
          f"{a.threads} threads\n")
    head = "| type   | llamapy s | peak RSS MiB | output MiB |"
    if ref:
        head += " reference s | ref RSS MiB | time ratio | same bytes |"
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        line = f"| {r['type']:<6} | {r['t']:9.1f} | {r['rss']:12.0f} | {r['size']:10.1f} |"
        if ref:
            ratio = r["t"] / r["rt"] if r.get("rok") else float("nan")
            line += f" {r['rt']:11.1f} | {r['rrss']:11.0f} | {ratio:9.2f}x | {r.get('same', '-')!s:>10} |"
        print(line)
    print("\ntargets: time ratio <= 1.00x, peak RSS < 1024 MiB")


if __name__ == "__main__":
    main()
