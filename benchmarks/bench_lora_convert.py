"""Benchmark merging a LoRA adapter while converting (`llamapy convert BASE --lora ADAPTER`): peak memory and time
against the same conversion without the adapter, on bench_convert.py's TinyLlama-1.1B-shaped BF16 checkpoints.

    python benchmarks/bench_lora_convert.py [--workdir DIR] [--types q4_0,f16] [--layouts hf,meta] [--rank 8]

The adapter is a random PEFT LoRA adapter (adapter_config.json + F32 adapter_model.safetensors) of rank 8 on
q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj of every layer, written once beside the
checkpoints. Each conversion runs in a fresh process; the table shows wall time, peak RSS, and the memory
budget the merge must keep: peak RSS <= 2 x the largest tensor (the BF16 embeddings, 125 MiB) + 512 MiB.
Timings on a shared machine are noisy; the memory figure is not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_convert import DIM, FFN, MIB, N_HEAD, N_HEAD_KV, N_LAYER, VOCAB  # noqa: E402
from bench_util import measure, print_table, warm  # noqa: E402

MODULES = {"self_attn.q_proj": (DIM, DIM), "self_attn.k_proj": (DIM * N_HEAD_KV // N_HEAD, DIM),
           "self_attn.v_proj": (DIM * N_HEAD_KV // N_HEAD, DIM), "self_attn.o_proj": (DIM, DIM),
           "mlp.gate_proj": (FFN, DIM), "mlp.up_proj": (FFN, DIM), "mlp.down_proj": (DIM, FFN)}


def write_adapter(d: str, rank: int) -> str:
    """A random PEFT adapter over every linear layer (n_out, n_in shapes in MODULES), written once."""
    from safetensors.numpy import save_file

    if os.path.exists(os.path.join(d, "adapter_model.safetensors")):
        return d
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(2)
    sd = {}
    for i in range(N_LAYER):
        for mod, (n_out, n_in) in MODULES.items():
            key = f"base_model.model.model.layers.{i}.{mod}"
            sd[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32)
            sd[f"{key}.lora_B.weight"] = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
    save_file(sd, os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                   "fan_in_fan_out": False, "target_modules": [m.split(".")[1] for m in MODULES],
                   "task_type": "CAUSAL_LM"}, f)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench-convert"))
    ap.add_argument("--types", default="q4_0,f16")
    ap.add_argument("--layouts", default="hf,meta")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    # written by a child process: a child's peak RSS counts what its parent held when it was started
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_convert.py"), "--write-only",
                    "--workdir", a.workdir], check=True)
    adapter = write_adapter(os.path.join(a.workdir, f"tinyllama-lora-r{a.rank}"), a.rank)
    largest = VOCAB * DIM * 2 / MIB
    budget = 2 * largest + 512
    rows = []
    for layout in a.layouts.split(","):
        src = os.path.join(a.workdir, "tinyllama-meta" if layout == "meta" else "tinyllama-hf")
        warm(src)
        for t in a.types.split(","):
            for lora in (False, True):
                out = os.path.join(a.workdir, f"out-lora-{layout}-{t}.gguf")
                cmd = [sys.executable, "-m", "llamapy", "convert", src, "--outtype", t, "--outfile", out,
                       "--threads", str(a.threads)]
                if layout == "meta":
                    cmd.append("--pad-vocab")
                if lora:
                    cmd += ["--lora", adapter]
                rows.append({"layout": layout, "type": t, "lora": lora, **measure(cmd, out)})

    print(f"\nconvert a TinyLlama-1.1B-shaped BF16 checkpoint with and without merging a rank-{a.rank} LoRA adapter "
          f"(largest tensor {largest:.0f} MiB, memory budget {budget:.0f} MiB), {a.threads} threads\n")
    head = "| input | outtype | --lora | seconds | peak RSS MiB | within budget | time vs no adapter |"
    lines = []
    plain = {}
    for r in rows:
        key = (r["layout"], r["type"])
        if not r["lora"]:
            plain[key] = r["t"]
        ratio = f"{r['t'] / plain[key]:.2f}x" if r["lora"] and key in plain else ""
        name = "Meta .pth x2" if r["layout"] == "meta" else "HF safetensors"
        lines.append(f"| {name} | {r['type']} | {'rank ' + str(a.rank) if r['lora'] else 'none'} | {r['t']:7.1f} | "
                     f"{r['rss']:12.0f} | {'yes' if r['ok'] and r['rss'] <= budget else 'NO':>13} | {ratio:>18} |")
    print_table(head, lines)


if __name__ == "__main__":
    main()
