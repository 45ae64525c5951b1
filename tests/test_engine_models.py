"""Tiny random llama models written as GGUF, for the engine tests (imported by tests/test_engine*.py).

Weights of block types are random blocks whose scale fields are set so the dequantized weights have a
sensible spread: the file defines the weights, and the oracle reads them back with the `gguf`
package's own dequantizers, so no quantizer is needed.
"""
from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamapy.ggufio.writer import GGUFWriter

# byte offsets of the fp16 scale fields (d, and dmin / m where present) inside one block
SCALE_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.IQ4_NL: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}


def random_tensor(rng: np.random.Generator, rows: int, cols: int, ttype: int, std: float) -> np.ndarray:
    """Data of a (rows, cols) weight of type ttype whose values have roughly the given spread."""
    ttype = T(ttype)
    if ttype == T.F32:
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)
    if ttype == T.F16:
        return (rng.standard_normal((rows, cols)) * std).astype(np.float16)
    if ttype == T.BF16:
        f = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)
    blck, size = GGML_QUANT_SIZES[ttype]
    nb = rows * cols // blck
    blocks = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    fields = SCALE_FIELDS[ttype]
    one = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    for off in fields:
        blocks[:, off:off + 2] = one
    spread = float(dequantize(blocks, ttype).std()) or 1.0
    scale = (std / spread * rng.uniform(0.5, 1.5, size=nb)).astype(np.float16)
    for off in fields:
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(rows, cols // blck * size)


def write_random_llama(
    path,
    *,
    n_vocab: int = 96,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 96,
    n_ctx_train: int = 256,
    wtype: int = T.F32,
    embd_type: int | None = None,
    tied: bool = True,
    biases: bool = False,
    rope_freqs: bool = False,
    rope_scaling: tuple[str, float] | None = None,
    rope_freq_base: float = 10000.0,
    seed: int = 0,
    extra_kv: dict | None = None,
    drop: tuple[str, ...] = (),
    reshape: dict | None = None,
) -> str:
    """Write a random llama GGUF; `drop` leaves tensors out and `reshape` overrides shapes (bad inputs)."""
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    tensors: dict[str, tuple[tuple[int, ...], int, np.ndarray]] = {}

    def mat(name, cols, rows, ttype=wtype, std=None):
        std = std if std is not None else 1.0 / np.sqrt(cols)
        tensors[name] = ((cols, rows), int(ttype), random_tensor(rng, rows, cols, ttype, std))

    def vec(name, n, mean=1.0, std=0.1):
        tensors[name] = ((n,), int(T.F32), (mean + std * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_embd, n_vocab, embd_type if embd_type is not None else wtype, std=1.0)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_embd, n_vocab)
    if rope_freqs:
        vec("rope_freqs.weight", head_dim // 2, mean=2.0, std=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_embd, n_head * head_dim)
        mat(b + "attn_k.weight", n_embd, n_head_kv * head_dim)
        mat(b + "attn_v.weight", n_embd, n_head_kv * head_dim)
        mat(b + "attn_output.weight", n_head * head_dim, n_embd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_embd, n_ff)
        mat(b + "ffn_up.weight", n_embd, n_ff)
        mat(b + "ffn_down.weight", n_ff, n_embd)
        if biases:
            vec(b + "attn_q.bias", n_head * head_dim, 0.0, 0.2)
            vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.2)
            vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.2)
            vec(b + "attn_output.bias", n_embd, 0.0, 0.2)

    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("general.name", "random-llama")
        w.add("general.file_type", 0 if wtype == T.F32 else 1 if wtype == T.F16 else 32 if wtype == T.BF16 else 7)
        w.add("llama.context_length", n_ctx_train)
        w.add("llama.embedding_length", n_embd)
        w.add("llama.block_count", n_layer)
        w.add("llama.feed_forward_length", n_ff)
        w.add("llama.attention.head_count", n_head)
        w.add("llama.attention.head_count_kv", n_head_kv)
        w.add("llama.rope.freq_base", rope_freq_base)
        w.add("llama.rope.dimension_count", head_dim)
        w.add("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add("llama.vocab_size", n_vocab)
        if rope_scaling:
            w.add("llama.rope.scaling.type", rope_scaling[0])
            w.add("llama.rope.scaling.factor", float(rope_scaling[1]))
            w.add("llama.rope.scaling.original_context_length", n_ctx_train // 4)
        for k, v in (extra_kv or {}).items():
            w.add(k, v)
        write_tensors(w, tensors, drop, reshape,
                      lambda new, ttype: random_tensor(rng, int(np.prod(new[1:], dtype=np.int64)), new[0], ttype, 0.1))
    return str(path)


def write_tensors(w: GGUFWriter, tensors: dict, drop=(), reshape: dict | None = None, resized=None) -> None:
    """Write the tensor infos, the header and the data of `tensors` (name -> (shape, type, data)), leaving out
    the names in `drop`. A shape in `reshape` replaces the tensor's in its info; then `resized(shape, type)`,
    when given, makes data of that shape (else the data stays as it is: a file whose sizes disagree)."""
    names = [n for n in tensors if n not in drop]
    for name in names:
        shape, ttype, _ = tensors[name]
        w.add_tensor_info(name, (reshape or {}).get(name, shape), ttype)
    w.write_header()
    for name in names:
        shape, ttype, data = tensors[name]
        new = (reshape or {}).get(name)
        if resized is not None and new is not None and new != shape:
            data = resized(new, ttype)
        w.write_tensor_data(name, data)


def test_random_model_reads_back(tmp_path):
    from llamapy.ggufio.reader import GGUFReader
    from llamapy.model_args import ModelArgs, check_tensors

    p = write_random_llama(tmp_path / "m.gguf", wtype=T.Q4_0, n_embd=64)
    with GGUFReader(p) as r:
        args = ModelArgs.from_gguf(r)
        assert (args.n_head, args.n_head_kv, args.head_dim, args.q_dim, args.kv_dim) == (4, 2, 16, 64, 32)
        t = r.tensors["blk.0.attn_k.weight"]
        w = dequantize(np.array(t.raw), T.Q4_0)
        assert w.shape == (32, 64) and 0.05 < w.std() < 0.3
        if check_tensors.__module__:  # the shapes the hyperparameters call for
            from llamapy.native import lib

            if lib.lp_type_supported(int(T.Q4_0)):
                assert set(check_tensors(r, args)) >= {"token_embd.weight", "blk.1.ffn_down.weight"}
