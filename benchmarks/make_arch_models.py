"""Random-weight GGUFs shaped like the new architectures' small models, for the engine benchmark:

    qwen2-0.5b   Qwen2.5-0.5B: dim 896, 24 layers, 14 heads (2 KV), ffn 4864, vocab 151936, q/k/v biases, tied
    qwen3-0.6b   Qwen3-0.6B: dim 1024, 28 layers, 16 heads (8 KV) of 128, ffn 3072, vocab 151936, q/k norms, tied
    moe-8x2      a llama-architecture mixture of experts (Mixtral's layout): dim 1024, 16 layers, 16 heads
                 (4 KV), 8 experts of ffn 2048 with 2 used, vocab 32000: ~0.94B parameters, ~0.24B active

    python benchmarks/make_arch_models.py [--workdir DIR] [--models qwen2-0.5b,qwen3-0.6b,moe-8x2] [--type Q4_K_M]

Each is written as F16 (norms F32) with a filler SentencePiece-style vocabulary, then quantized with
`llamapy quantize` (the reference's rules, so both engines run the same file). Files already present are kept.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.ggufio.constants import TensorType as T  # noqa: E402
from llamapy.ggufio.constants import ValueType  # noqa: E402
from llamapy.ggufio.writer import GGUFWriter  # noqa: E402

# name -> (arch, dim, layers, heads, kv heads, head dim, ffn, vocab, experts, experts used, tied)
SHAPES = {
    "qwen2-0.5b": ("qwen2", 896, 24, 14, 2, 64, 4864, 151936, 0, 0, True),
    "qwen3-0.6b": ("qwen3", 1024, 28, 16, 8, 128, 3072, 151936, 0, 0, True),
    "moe-8x2": ("llama", 1024, 16, 16, 4, 64, 2048, 32000, 8, 2, False),
}


def tensor_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor, shape in GGML order (row length first), in the reference's file order."""
    arch, dim, n_layer, n_head, n_kv, hd, ffn, vocab, n_exp, _, tied = SHAPES[name]
    q, kv = n_head * hd, n_kv * hd
    shapes = [("token_embd.weight", (dim, vocab))]
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes += [(b + "attn_norm.weight", (dim,)), (b + "attn_q.weight", (dim, q)), (b + "attn_k.weight", (dim, kv)),
                   (b + "attn_v.weight", (dim, kv)), (b + "attn_output.weight", (q, dim))]
        if arch == "qwen2":
            shapes += [(b + "attn_q.bias", (q,)), (b + "attn_k.bias", (kv,)), (b + "attn_v.bias", (kv,))]
        if arch == "qwen3":
            shapes += [(b + "attn_q_norm.weight", (hd,)), (b + "attn_k_norm.weight", (hd,))]
        shapes.append((b + "ffn_norm.weight", (dim,)))
        if n_exp:
            shapes += [(b + "ffn_gate_inp.weight", (dim, n_exp)), (b + "ffn_gate_exps.weight", (dim, ffn, n_exp)),
                       (b + "ffn_down_exps.weight", (ffn, dim, n_exp)), (b + "ffn_up_exps.weight", (dim, ffn, n_exp))]
        else:
            shapes += [(b + "ffn_gate.weight", (dim, ffn)), (b + "ffn_up.weight", (dim, ffn)),
                       (b + "ffn_down.weight", (ffn, dim))]
    shapes.append(("output_norm.weight", (dim,)))
    if not tied:
        shapes.append(("output.weight", (dim, vocab)))
    return shapes


def add_vocab(w: GGUFWriter, vocab: int) -> None:
    """<unk> <s> </s>, the 256 byte tokens, then filler pieces: enough for a loader and a tokenizer."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(vocab - len(tokens))]
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", tokens)
    w.add("tokenizer.ggml.scores", np.linspace(0, -1, vocab, dtype=np.float32))
    w.add("tokenizer.ggml.token_type", np.array([2, 3, 3] + [6] * 256 + [1] * (vocab - 259), dtype=np.int32))
    w.add("tokenizer.ggml.bos_token_id", 1, ValueType.UINT32)
    w.add("tokenizer.ggml.eos_token_id", 2, ValueType.UINT32)
    w.add("tokenizer.ggml.unknown_token_id", 0, ValueType.UINT32)


def write_f16_model(name: str, path: str) -> None:
    """Random gaussian weights (std 0.02) as F16, norms F32 ones and biases F32 zeros; tensor by tensor."""
    arch, dim, n_layer, n_head, n_kv, hd, ffn, vocab, n_exp, n_used, _ = SHAPES[name]
    rng = np.random.default_rng(0)
    pool = (0.02 * rng.standard_normal(1 << 24)).astype(np.float16)  # tiled at random offsets: fast, aperiodic
    shapes = tensor_shapes(name)
    with GGUFWriter(path) as w:
        w.add("general.architecture", arch)
        w.add("general.name", f"{name}-shaped random")
        w.add("general.file_type", 1, ValueType.UINT32)
        w.add(f"{arch}.context_length", 4096)
        w.add(f"{arch}.embedding_length", dim)
        w.add(f"{arch}.block_count", n_layer)
        w.add(f"{arch}.feed_forward_length", ffn)
        w.add(f"{arch}.attention.head_count", n_head)
        w.add(f"{arch}.attention.head_count_kv", n_kv)
        if hd != dim // n_head:
            w.add(f"{arch}.attention.key_length", hd, ValueType.UINT32)
            w.add(f"{arch}.attention.value_length", hd, ValueType.UINT32)
        w.add(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        w.add(f"{arch}.rope.freq_base", 1000000.0 if arch != "llama" else 10000.0)
        if arch == "llama":
            w.add("llama.rope.dimension_count", hd, ValueType.UINT32)
            w.add("llama.vocab_size", vocab, ValueType.UINT32)
        if n_exp:
            w.add(f"{arch}.expert_count", n_exp, ValueType.UINT32)
            w.add(f"{arch}.expert_used_count", n_used, ValueType.UINT32)
        add_vocab(w, vocab)
        for tname, shape in shapes:
            w.add_tensor_info(tname, shape, T.F32 if len(shape) == 1 else T.F16)
        w.write_header()
        for tname, shape in shapes:
            n = int(np.prod(shape))
            if len(shape) == 1:
                w.write_tensor_data(tname, (np.zeros if tname.endswith("bias") else np.ones)(n, np.float32))
                continue
            parts, left = [], n
            while left:
                k = min(left, len(pool) // 2)
                start = int(rng.integers(0, len(pool) - k))
                parts.append(pool[start:start + k])
                left -= k
            w.write_tensor_data(tname, np.concatenate(parts))


def make(workdir: str, name: str, qtype: str, threads: int) -> str:
    """The quantized file of `name` (made from its F16 file if missing; the F16 file is removed after)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"{name}-shape-{qtype}.gguf")
    if os.path.exists(path):
        return path
    f16 = os.path.join(workdir, f"{name}-shape-f16.gguf")
    if not os.path.exists(f16):
        print(f"writing {f16} ...", file=sys.stderr, flush=True)
        write_f16_model(name, f16)
    print(f"quantizing to {qtype} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "llamapy", "quantize", f16, path, qtype, str(threads)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    os.remove(f16)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench"))
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    for name in [m for m in a.models.split(",") if m]:
        print(f"{name}\t{make(a.workdir, name, a.type, a.threads)}")


if __name__ == "__main__":
    main()
