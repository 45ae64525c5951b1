"""Write a TinyLlama-1.1B-shaped llama GGUF with random weights, then quantize it with `llamapy quantize`.

    python benchmarks/make_tiny_llama.py [--workdir DIR] [--types Q4_K_M,Q4_0] [--threads 2]

The F16 file (~2.1 GB: dim 2048, 22 layers, 32 heads, 4 KV heads, ffn 5632, vocab 32000) carries a small
SentencePiece-style vocabulary, so both llamapy and the reference load it (for benchmarks only: the
text it writes means nothing). Files already present are kept.
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

DIM, N_LAYER, N_HEAD, N_HEAD_KV, FFN, VOCAB, CTX = 2048, 22, 32, 4, 5632, 32000, 2048


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor, shape in GGML order (row length first), in the reference's file order."""
    kv = DIM * N_HEAD_KV // N_HEAD
    shapes = [("token_embd.weight", (DIM, VOCAB))]
    for i in range(N_LAYER):
        b = f"blk.{i}."
        shapes += [(b + "attn_norm.weight", (DIM,)), (b + "attn_q.weight", (DIM, DIM)),
                   (b + "attn_k.weight", (DIM, kv)), (b + "attn_v.weight", (DIM, kv)),
                   (b + "attn_output.weight", (DIM, DIM)), (b + "ffn_norm.weight", (DIM,)),
                   (b + "ffn_gate.weight", (DIM, FFN)), (b + "ffn_up.weight", (DIM, FFN)),
                   (b + "ffn_down.weight", (FFN, DIM))]
    return shapes + [("output_norm.weight", (DIM,)), ("output.weight", (DIM, VOCAB))]


def add_vocab(w: GGUFWriter) -> None:
    """<unk> <s> </s>, the 256 byte tokens, then filler pieces: enough for a loader and a tokenizer."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", tokens)
    w.add("tokenizer.ggml.scores", np.linspace(0, -1, VOCAB, dtype=np.float32))
    w.add("tokenizer.ggml.token_type", np.array(types, dtype=np.int32))
    w.add("tokenizer.ggml.bos_token_id", 1, ValueType.UINT32)
    w.add("tokenizer.ggml.eos_token_id", 2, ValueType.UINT32)
    w.add("tokenizer.ggml.unknown_token_id", 0, ValueType.UINT32)


def write_f16_model(path: str) -> None:
    """Random gaussian weights (std 0.02) as F16, norms as F32 ones; written tensor by tensor."""
    rng = np.random.default_rng(0)
    pool = (0.02 * rng.standard_normal(1 << 24)).astype(np.float16)  # tiled at random offsets: fast, aperiodic
    shapes = tensor_shapes()
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", "tinyllama-shaped random")
        w.add("general.file_type", 1, ValueType.UINT32)
        w.add("llama.context_length", CTX)
        w.add("llama.embedding_length", DIM)
        w.add("llama.block_count", N_LAYER)
        w.add("llama.feed_forward_length", FFN)
        w.add("llama.rope.dimension_count", DIM // N_HEAD)
        w.add("llama.attention.head_count", N_HEAD)
        w.add("llama.attention.head_count_kv", N_HEAD_KV)
        w.add("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add("llama.rope.freq_base", 10000.0)
        w.add("llama.vocab_size", VOCAB)
        add_vocab(w)
        for name, shape in shapes:
            w.add_tensor_info(name, shape, T.F32 if len(shape) == 1 else T.F16)
        w.write_header()
        for name, shape in shapes:
            n = int(np.prod(shape))
            if len(shape) == 1:
                w.write_tensor_data(name, np.ones(n, np.float32))
                continue
            parts, left = [], n
            while left:
                k = min(left, len(pool) // 2)
                start = int(rng.integers(0, len(pool) - k))
                parts.append(pool[start:start + k])
                left -= k
            w.write_tensor_data(name, np.concatenate(parts))


def make(workdir: str, types: list[str], threads: int) -> dict[str, str]:
    """The F16 file and one file per quantization type, made if missing; type -> path."""
    os.makedirs(workdir, exist_ok=True)
    f16 = os.path.join(workdir, "tinyllama-shape-f16.gguf")
    if not os.path.exists(f16):
        print(f"writing {f16} ...", file=sys.stderr, flush=True)
        write_f16_model(f16)
    out = {"F16": f16}
    for t in types:
        path = os.path.join(workdir, f"tinyllama-shape-{t}.gguf")
        if not os.path.exists(path):
            print(f"quantizing to {t} ...", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "llamapy", "quantize", f16, path, t, str(threads)], check=True,
                           cwd=ROOT)
        out[t] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llamapy-bench"))
    ap.add_argument("--types", default="Q4_K_M,Q4_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    for t, p in make(a.workdir, [t for t in a.types.split(",") if t], a.threads).items():
        print(f"{t}\t{p}")


if __name__ == "__main__":
    main()
