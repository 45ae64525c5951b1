"""Benchmark `llamapy convert` on TinyLlama-1.1B-shaped checkpoints (random weights) it writes itself.

    python benchmarks/bench_convert.py [--workdir DIR] [--types f16,q8_0,q4_k_m] [--layouts meta,hf]

Shape: dim 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632, vocab 32000 (1.1B parameters, 2.2 GB in
BF16). Two inputs are written once and kept in the work directory: a Meta checkpoint (2 BF16 shards of
consolidated.NN.pth + params.json) and a Hugging Face directory (BF16 model.safetensors + config.json);
the tokenizer is a small trained SentencePiece model, padded to 32000 tokens. Each conversion runs in a
fresh process; the table shows wall time, peak RSS, and the memory budget: peak RSS <= 2 x the largest
tensor + 512 MiB. With LLAMAPY_REF_CONVERT_HF naming the reference's convert_hf_to_gguf.py (and
LLAMAPY_REF_PYTHON a Python with torch for it), the reference converts the Hugging Face input too, and the
table adds its time, RSS and whether the files are the same bytes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_util import REF_COLUMNS, measure, print_table, ref_cells, warm  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_convert_util import meta_hf_name, to_hf  # noqa: E402  (the tests' Meta -> Hugging Face export)

DIM, N_LAYER, N_HEAD, N_HEAD_KV, FFN, VOCAB = 2048, 22, 32, 4, 5632, 32000
MIB = 1 << 20


def meta_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Meta's tensors in Meta's order, numpy shapes."""
    kv = DIM * N_HEAD_KV // N_HEAD
    shapes = [("tok_embeddings.weight", (VOCAB, DIM)), ("norm.weight", (DIM,)), ("output.weight", (VOCAB, DIM))]
    for i in range(N_LAYER):
        p = f"layers.{i}."
        shapes += [(p + "attention.wq.weight", (DIM, DIM)), (p + "attention.wk.weight", (kv, DIM)),
                   (p + "attention.wv.weight", (kv, DIM)), (p + "attention.wo.weight", (DIM, DIM)),
                   (p + "feed_forward.w1.weight", (FFN, DIM)), (p + "feed_forward.w2.weight", (DIM, FFN)),
                   (p + "feed_forward.w3.weight", (FFN, DIM)), (p + "attention_norm.weight", (DIM,)),
                   (p + "ffn_norm.weight", (DIM,))]
    return shapes


class Weights:
    """Random BF16 weights (std 0.02; norms 1), tiled from a pool with random offsets: fast, not periodic."""

    def __init__(self):
        import torch

        self.rng = np.random.default_rng(0)
        self.pool = torch.from_numpy((0.02 * self.rng.standard_normal(1 << 24)).astype(np.float32)).bfloat16()

    def make(self, shape):
        import torch

        n = int(np.prod(shape))
        if len(shape) == 1:
            return torch.ones(n, dtype=torch.bfloat16)
        parts, left = [], n
        while left:
            k = min(left, len(self.pool) // 2)
            start = int(self.rng.integers(0, len(self.pool) - k))
            parts.append(self.pool[start:start + k])
            left -= k
        return torch.cat(parts).reshape(shape)


def train_tokenizer(path: str) -> None:
    import sentencepiece as spm

    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(3000)]
    lines = [" ".join(rng.choice(words, size=12)) for _ in range(4000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=2000,
                                   model_type="bpe", byte_fallback=True, minloglevel=2, num_threads=1)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_inputs(workdir: str) -> tuple[str, str]:
    """(Meta dir, HF dir), written once."""
    import torch
    from safetensors.torch import save_file

    meta, hf = os.path.join(workdir, "tinyllama-meta"), os.path.join(workdir, "tinyllama-hf")
    if os.path.exists(os.path.join(meta, "params.json")) and os.path.exists(os.path.join(hf, "config.json")):
        return meta, hf
    os.makedirs(meta, exist_ok=True)
    os.makedirs(hf, exist_ok=True)
    t0 = time.perf_counter()
    print("writing the checkpoints ...", file=sys.stderr)
    train_tokenizer(os.path.join(meta, "tokenizer.model"))
    with open(os.path.join(meta, "tokenizer.model"), "rb") as f:
        tok = f.read()
    with open(os.path.join(hf, "tokenizer.model"), "wb") as f:
        f.write(tok)
    w = Weights()
    full = {name: w.make(shape) for name, shape in meta_shapes()}
    for s in range(2):  # Meta's model-parallel split
        sd = {}
        for name, t in full.items():
            if t.ndim == 1:
                sd[name] = t
            else:
                axis = 1 if name.startswith("tok_embeddings") or name.endswith(("wo.weight", "w2.weight")) else 0
                sd[name] = torch.chunk(t, 2, dim=axis)[s].clone()
        torch.save(sd, os.path.join(meta, f"consolidated.{s:02}.pth"))
        del sd
    with open(os.path.join(meta, "params.json"), "w") as f:
        json.dump({"dim": DIM, "n_layers": N_LAYER, "n_heads": N_HEAD, "n_kv_heads": N_HEAD_KV, "multiple_of": 256,
                   "norm_eps": 1e-5, "vocab_size": -1}, f)

    sd = to_hf(full, meta_hf_name, N_HEAD, N_HEAD_KV, "wq.weight", "wk.weight")
    sd = {name: t.contiguous() for name, t in sd.items()}
    save_file(sd, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
                   "intermediate_size": FFN, "num_attention_heads": N_HEAD, "num_key_value_heads": N_HEAD_KV,
                   "num_hidden_layers": N_LAYER, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                   "max_position_embeddings": 2048, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2,
                   "torch_dtype": "bfloat16"}, f)
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return meta, hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench-convert"))
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--layouts", default="meta,hf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    if a.write_only:
        write_inputs(a.workdir)
        return
    # written by a child process: a child's peak RSS counts what its parent held when it was started
    subprocess.run([sys.executable, os.path.abspath(__file__), "--write-only", "--workdir", a.workdir], check=True)
    meta, hf = os.path.join(a.workdir, "tinyllama-meta"), os.path.join(a.workdir, "tinyllama-hf")
    largest = VOCAB * DIM * 2 / MIB  # tok_embeddings / output in BF16
    budget = 2 * largest + 512
    ref_script = os.environ.get("LLAMAPY_REF_CONVERT_HF")
    ref_python = os.environ.get("LLAMAPY_REF_PYTHON", sys.executable)
    rows = []
    for layout in a.layouts.split(","):
        src = meta if layout == "meta" else hf
        warm(src)
        for t in a.types.split(","):
            out = os.path.join(a.workdir, f"out-{layout}-{t}.gguf")
            cmd = [sys.executable, "-m", "llamapy", "convert", src, "--outtype", t, "--outfile", out,
                   "--threads", str(a.threads)]
            if layout == "meta":
                cmd.append("--pad-vocab")
            ref_out = os.path.join(a.workdir, f"ref-{layout}-{t}.gguf")
            ref_cmd = None
            if ref_script and layout == "hf" and t in ("f16", "q8_0", "bf16", "f32"):
                ref_cmd = [ref_python, ref_script, src, "--outtype", t, "--outfile", ref_out]
            rows.append({"layout": layout, "type": t, **measure(cmd, out, ref_cmd, ref_out)})

    print(f"\nconvert a TinyLlama-1.1B-shaped BF16 checkpoint (largest tensor {largest:.0f} MiB, "
          f"memory budget {budget:.0f} MiB), {a.threads} threads\n")
    head = "| input | outtype | llamapy s | peak RSS MiB | within budget | output MiB |"
    if ref_script:
        head += REF_COLUMNS
    lines = []
    for r in rows:
        name = "Meta .pth x2" if r["layout"] == "meta" else "HF safetensors"
        line = (f"| {name} | {r['type']} | {r['t']:9.1f} | {r['rss']:12.0f} | "
                f"{'yes' if r['ok'] and r['rss'] <= budget else 'NO':>13} | {r['size']:10.1f} |")
        lines.append(line + (ref_cells(r) if ref_script else ""))
    print_table(head, lines)


if __name__ == "__main__":
    main()
