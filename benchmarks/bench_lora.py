"""Decode speed with a LoRA adapter applied at run time against the merged model and the model without it.

    python benchmarks/bench_lora.py [--model PATH] [--rank 8] [--threads 2] [-n 64] [-r 5]

The adapter is random (rank 8 on attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down of every
layer, in F16), written to a temporary file, and merged into a copy of the model with `export-lora --outtype
base` (each merged tensor requantized to its own type, so a step of the merged model reads what a step of the
base reads). The three engines are loaded once; the rounds alternate between them (one token at a time, -n
tokens a round, the KV cache cleared between rounds) so the machine's noise hits them alike; the table shows
each one's best and median tokens per second, and the ratios of the best, of the medians and the median of
the ratios of adjacent rounds (the figure least moved by other load on the machine). Timings on a shared
machine are noisy: compare ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_util import print_table  # noqa: E402

TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def write_adapter(path: str, base: str, rank: int, seed: int = 0) -> int:
    """A random adapter over the base's TARGETS; the number of pairs."""
    from llamapy.ggufio.constants import TensorType
    from llamapy.ggufio.reader import GGUFReader
    from llamapy.ggufio.writer import GGUFWriter

    rng = np.random.default_rng(seed)
    pairs = {}
    with GGUFReader(base) as r:
        arch = r.architecture
        for name, t in r.tensors.items():
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blk" and parts[2] in TARGETS and parts[3] == "weight":
                n_in, n_out = t.shape[0], t.shape[1]
                pairs[name] = ((rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float16),
                               (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float16))
    with GGUFWriter(path) as w:
        w.add("general.architecture", arch)
        w.add("general.type", "adapter")
        w.add("adapter.type", "lora")
        w.add("adapter.lora.alpha", float(2 * rank))
        for name, (a, b) in pairs.items():
            w.add_tensor_info(name + ".lora_a", (a.shape[1], rank), TensorType.F16)
            w.add_tensor_info(name + ".lora_b", (rank, b.shape[0]), TensorType.F16)
        w.write_header()
        for name, (a, b) in pairs.items():
            w.write_tensor_data(name + ".lora_a", a)
            w.write_tensor_data(name + ".lora_b", b)
    return len(pairs)


def decode_round(llm, n: int) -> float:
    """Tokens per second of n one-token steps from an empty cache."""
    llm.kv_clear()
    tok = 1
    t0 = time.perf_counter()
    for _ in range(n):
        logits = llm.eval([tok])
        tok = int(np.argmax(logits))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF model (default: the default model)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64, help="tokens a round")
    ap.add_argument("-r", type=int, default=15, help="rounds each")
    a = ap.parse_args()

    from llamapy.engine.engine import Engine
    from llamapy.engine.load import LoadOptions
    from llamapy.store.locate import resolve_model

    model = resolve_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = os.path.join(tmp, "adapter.gguf")
        n_pairs = write_adapter(adapter, model, a.rank)
        from llamapy.convert.export_lora import export_lora

        merged_path = os.path.join(tmp, "merged.gguf")
        export_lora(model, [(adapter, 1.0)], merged_path, "base", n_threads=a.threads)
        kw = dict(n_ctx=a.n + 8, n_threads=a.threads)
        with Engine(model, **kw) as base, Engine(model, **kw, load=LoadOptions(lora=[(adapter, 1.0)])) as lora, \
                Engine(merged_path, **kw) as merged:
            decode_round(base, 8), decode_round(lora, 8), decode_round(merged, 8)  # warm up
            tb, tl, tm = [], [], []
            for _ in range(a.r):
                tb.append(decode_round(base, a.n))
                tl.append(decode_round(lora, a.n))
                tm.append(decode_round(merged, a.n))
    print(f"model {os.path.basename(model)}, adapter: rank {a.rank} on {n_pairs} tensors; {a.threads} threads, "
          f"{a.r} rounds of {a.n} tokens\n")
    rows = [f"| {name} | {max(ts):.1f} | {statistics.median(ts):.1f} | |"
            for name, ts in (("base", tb), ("merged (export-lora)", tm), ("--lora", tl))]
    for name, ref in (("merged", tm), ("base", tb)):
        med = statistics.median(tl) / statistics.median(ref)
        paired = statistics.median(b / a for a, b in zip(ref, tl))
        rows.append(f"| ratio (--lora / {name}) | {max(tl) / max(ref):.3f} | {med:.3f} | {paired:.3f} |")
    print_table("| decode | best t/s | median t/s | median of paired ratios |", rows)


if __name__ == "__main__":
    main()
