"""KV cache types: perplexity and memory per -ctk/-ctv type, beside the reference's.

    python benchmarks/bench_kv_types.py [--text FILE] [--types f16,q8_0,q4_0] [-c 128]

Perplexity of the default model (`llamapy perplexity -c N -f FILE -ctk T -ctv T`) for each type, its change
from f16 in percent; with LLAMAPY_REF_PERPLEXITY naming llama-perplexity, the reference's own
(`-fa -ctk T -ctv T`: it needs flash attention for a quantized V) and whether ours stays within the
reference's change plus 0.1 percentage points. Then the KV cache's bytes at -c 4096 per type (one sequence),
with the reference's "KV self size" line when the binary is given.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_TEXT = os.path.join(ROOT, "..", "shared", "testdata", "text", "python-license.txt")
PPL = re.compile(r"Final estimate: PPL = ([0-9.]+)")
REF_KV = re.compile(r"KV self size\s*=\s*([0-9.]+) MiB")


def ours_ppl(text: str, ctx: int, t: str, threads: int) -> float:
    cmd = [sys.executable, "-m", "llamapy", "perplexity", "-c", str(ctx), "-f", text, "-ctk", t, "-ctv", t,
           "-t", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = PPL.search(out.stdout + out.stderr)
    if not m:
        sys.exit(f"llamapy perplexity -ctk {t} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(m.group(1))


def ref_run(ref: str, model: str, text: str, ctx: int, t: str, threads: int) -> tuple[float | None, float | None]:
    """The reference's perplexity (None when it did not finish) and its KV size line in MiB."""
    cmd = [ref, "-m", model, "-c", str(ctx), "-f", text, "-fa", "-ctk", t, "-ctv", t, "-t", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    both = out.stdout + out.stderr
    ppl, kv = PPL.search(both), REF_KV.search(both)
    return (float(ppl.group(1)) if ppl else None), (float(kv.group(1)) if kv else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--mem-types", default="f16,f32,bf16,q8_0,q5_1,q5_0,q4_1,q4_0,iq4_nl")
    ap.add_argument("-c", "--ctx", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    from llamapy.engine.engine import Engine
    from llamapy.engine.load import LoadOptions
    from llamapy.store.locate import resolve_model

    model = resolve_model(None)
    ref = os.environ.get("LLAMAPY_REF_PERPLEXITY")
    types = [t for t in a.types.split(",") if t]
    rows = {}
    for t in types:
        rows[t] = (ours_ppl(a.text, a.ctx, t, a.threads), ref_run(ref, model, a.text, a.ctx, t, a.threads)[0]
                   if ref else None)
    base, rbase = rows[types[0]]
    print(f"perplexity, default model, -c {a.ctx}, {os.path.basename(a.text)} (change from {types[0]})\n")
    print("| type | llamapy PPL | change | reference PPL (-fa) | reference change | within ref + 0.1 pp |")
    print("|---|---:|---:|---:|---:|---|")
    for t in types:
        p, r = rows[t]
        ch = 100 * (p / base - 1)
        if r is not None and rbase is not None:
            rch = 100 * (r / rbase - 1)
            ok = "yes" if abs(ch) <= abs(rch) + 0.1 else "NO"
            print(f"| {t} | {p:.4f} | {ch:+.3f}% | {r:.4f} | {rch:+.3f}% | {ok} |")
        else:
            print(f"| {t} | {p:.4f} | {ch:+.3f}% | - | - | - |")

    print("\nKV cache at -c 4096, one sequence\n")
    print("| type | llamapy MiB | ratio to f16 | reference MiB (KV self size) |")
    print("|---|---:|---:|---:|")
    f16 = None
    for t in [t for t in a.mem_types.split(",") if t]:
        with Engine(model, n_ctx=4096, n_batch=8, load=LoadOptions(type_k=t, type_v=t)) as llm:
            mib = llm.kv_bytes() / (llm.n_seq_max + 1) / 2**20   # the engine keeps a scratch sequence too
        f16 = mib if t == "f16" else f16
        rk = ref_run(ref, model, a.text, 4096, t, a.threads)[1] if ref else None
        ratio = f"{mib / f16:.4f}" if f16 else "-"
        print(f"| {t} | {mib:.2f} | {ratio} | {'-' if rk is None else f'{rk:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
