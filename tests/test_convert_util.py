"""Builders for the convert tests: tiny Meta / Hugging Face checkpoints, a trained SentencePiece model,
and plain numpy forward passes in Meta's, Hugging Face's and GGUF's conventions (the oracles).

Imported by the tests/test_convert_*.py modules; it holds no tests itself.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

TINY = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn": 96, "norm_eps": 1e-5, "rope_theta": 10000.0}

_WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards",
    "quietly", "judge", "boxing", "matches", "pack", "my", "box", "with", "five", "dozen", "liquor",
    "jugs", "llamas", "graze", "on", "green", "hills", "under", "bright", "summer", "skies", "numbers",
    "like", "12", "345", "and", "6789", "appear", "too", "as", "do", "symbols", "such", "as", "+", "-",
    "*", "/", "=", "(", ")", "and", "punctuation",
]


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(4, 14)))) for _ in range(n_lines)]


def train_spm(path: Path, vocab_size: int = 320) -> Path:
    """A byte-fallback BPE SentencePiece model trained like LLaMA's (unk 0, bos 1, eos 2, no normalization,
    whitespace kept, digits split), in a fraction of a second."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
    )
    path.write_bytes(buf.getvalue())
    return path


def spm_size(path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path)).vocab_size()


# -- weights ----------------------------------------------------------------------------------------
def meta_weights(n_vocab: int, seed: int = 1, hp: dict = TINY, with_rope_freqs: bool = False) -> dict:
    """Random float32 weights with Meta's names, in Meta's tensor order."""
    rng = np.random.default_rng(seed)
    d, f = hp["dim"], hp["ffn"]
    hd = d // hp["n_heads"]
    kv = hp["n_kv_heads"] * hd

    def m(*shape, scale=None):
        s = scale if scale is not None else 1 / math.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w = {"tok_embeddings.weight": m(n_vocab, d, scale=1.0), "norm.weight": 1 + m(d, scale=0.1),
         "output.weight": m(n_vocab, d)}
    for i in range(hp["n_layers"]):
        p = f"layers.{i}."
        w[p + "attention.wq.weight"] = m(d, d)
        w[p + "attention.wk.weight"] = m(kv, d)
        w[p + "attention.wv.weight"] = m(kv, d)
        w[p + "attention.wo.weight"] = m(d, d)
        w[p + "feed_forward.w1.weight"] = m(f, d)
        w[p + "feed_forward.w2.weight"] = m(d, f)
        w[p + "feed_forward.w3.weight"] = m(f, d)
        w[p + "attention_norm.weight"] = 1 + m(d, scale=0.1)
        w[p + "ffn_norm.weight"] = 1 + m(d, scale=0.1)
    if with_rope_freqs:
        w["rope.freqs"] = (1.0 / hp["rope_theta"] ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
    return w


def meta_params(hp: dict = TINY, vocab_size: int = -1) -> dict:
    p = {"dim": hp["dim"], "multiple_of": 32, "n_heads": hp["n_heads"], "n_layers": hp["n_layers"],
         "norm_eps": hp["norm_eps"], "vocab_size": vocab_size}
    if hp["n_kv_heads"] != hp["n_heads"]:
        p["n_kv_heads"] = hp["n_kv_heads"]
    if hp.get("rope_theta", 10000.0) != 10000.0:
        p["rope_theta"] = hp["rope_theta"]
    return p


def _split_axis(name: str) -> int:
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1
    return 0


def save_meta(d: Path, w: dict, params: dict, n_shards: int = 1, dtype: str = "bf16") -> Path:
    """consolidated.NN.pth shards (split as Meta splits them) + params.json, written with torch."""
    import torch

    tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    d.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        sd = {}
        for name, a in w.items():
            t = torch.from_numpy(a).to(tdt)
            if a.ndim >= 2 and n_shards > 1:
                t = torch.chunk(t, n_shards, dim=_split_axis(name))[s].clone()
            sd[name] = t
        torch.save(sd, d / f"consolidated.{s:02}.pth")
    (d / "params.json").write_text(json.dumps(params))
    return d


def rounded(w: dict, dtype: str) -> dict:
    """The weights as the checkpoint stores them (rounded to bf16 / f16), back in float32."""
    import torch

    tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    return {k: torch.from_numpy(v).to(tdt).float().numpy() for k, v in w.items()}


# -- Hugging Face --------------------------------------------------------------------------------------
def hf_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta's interleaved q/k rows -> Hugging Face's rotate-half rows (as transformers' converter does)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


META_TO_HF = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
              "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
              "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
              "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
              "ffn_norm": "post_attention_layernorm"}


META_TOP_TO_HF = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}


def meta_hf_name(name: str) -> str:
    """A Meta tensor's Hugging Face name."""
    if name in META_TOP_TO_HF:
        return META_TOP_TO_HF[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{META_TO_HF[rest.rsplit('.', 1)[0]]}.weight"


def to_hf(tensors: dict, hf_name, n_heads: int, n_kv_heads: int, q: str, k: str) -> dict:
    """Tensors under their Hugging Face names (`hf_name`), the rows of those ending in `q` / `k` in
    rotate-half order. numpy arrays or torch tensors alike."""
    out = {}
    for name, a in tensors.items():
        if name.endswith(q):
            a = hf_permute(a, n_heads)
        elif name.endswith(k):
            a = hf_permute(a, n_kv_heads)
        out[hf_name(name)] = a
    return out


def meta_to_hf(w: dict, hp: dict = TINY) -> dict:
    w = {n: a for n, a in w.items() if n != "rope.freqs"}
    return to_hf(w, meta_hf_name, hp["n_heads"], hp["n_kv_heads"], "attention.wq.weight", "attention.wk.weight")


def hf_config(n_vocab: int, hp: dict = TINY, arch: str = "LlamaForCausalLM", **extra) -> dict:
    cfg = {"architectures": [arch], "model_type": "llama", "hidden_size": hp["dim"],
           "intermediate_size": hp["ffn"], "num_attention_heads": hp["n_heads"],
           "num_hidden_layers": hp["n_layers"], "num_key_value_heads": hp["n_kv_heads"],
           "rms_norm_eps": hp["norm_eps"], "rope_theta": hp["rope_theta"], "max_position_embeddings": 256,
           "vocab_size": n_vocab, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
           "torch_dtype": "float32"}
    cfg.update(extra)
    return cfg


def save_hf(d: Path, w: dict, cfg: dict, fmt: str = "safetensors", n_parts: int = 1, dtype: str = "f32") -> Path:
    """config.json + weights as model.safetensors / pytorch_model.bin (optionally in parts with an index)."""
    import torch

    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    names = list(w)
    groups = [names[i::n_parts] for i in range(n_parts)]
    weight_map = {}
    for k, group in enumerate(groups):
        sd = {n: torch.from_numpy(np.ascontiguousarray(w[n])).to(tdt).contiguous() for n in group}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            fname = "model.safetensors" if n_parts == 1 else f"model-{k + 1:05}-of-{n_parts:05}.safetensors"
            save_file(sd, str(d / fname), metadata={"format": "pt"})
        else:
            fname = "pytorch_model.bin" if n_parts == 1 else f"pytorch_model-{k + 1:05}-of-{n_parts:05}.bin"
            torch.save(sd, d / fname)
        weight_map.update({n: fname for n in group})
    if n_parts > 1:
        index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
        (d / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


# -- forward passes (float64 numpy) -------------------------------------------------------------------
def _rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope_pairs(x, pos, theta):  # x: (T, H, hd); Meta / GGUF: rotate (x[2i], x[2i+1])
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)  # (hd/2,)
    ang = pos[:, None] * inv[None, :]  # (T, hd/2)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def _rope_half(x, pos, theta):  # Hugging Face: rotate (x[i], x[i + hd/2])
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def forward(tokens, emb, layers, norm, out_w, n_heads, n_kv, eps, theta, rope):
    """Logits (T, vocab) of a llama; `layers` holds dicts with q k v o gate up down attn_norm ffn_norm."""
    x = emb[np.asarray(tokens)].astype(np.float64)
    T = x.shape[0]
    pos = np.arange(T, dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for L in layers:
        h = _rmsnorm(x, L["attn_norm"], eps)
        q = (h @ L["q"].T).reshape(T, n_heads, -1)
        k = (h @ L["k"].T).reshape(T, n_kv, -1)
        v = (h @ L["v"].T).reshape(T, n_kv, -1)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        rep = n_heads // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1]) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, -1)
        x = x + o @ L["o"].T
        h = _rmsnorm(x, L["ffn_norm"], eps)
        g = h @ L["gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ L["up"].T)) @ L["down"].T
    return _rmsnorm(x, norm, eps) @ out_w.T


def forward_meta(w: dict, tokens, hp: dict = TINY):
    layers = [{"q": w[f"layers.{i}.attention.wq.weight"], "k": w[f"layers.{i}.attention.wk.weight"],
               "v": w[f"layers.{i}.attention.wv.weight"], "o": w[f"layers.{i}.attention.wo.weight"],
               "gate": w[f"layers.{i}.feed_forward.w1.weight"], "down": w[f"layers.{i}.feed_forward.w2.weight"],
               "up": w[f"layers.{i}.feed_forward.w3.weight"], "attn_norm": w[f"layers.{i}.attention_norm.weight"],
               "ffn_norm": w[f"layers.{i}.ffn_norm.weight"]} for i in range(hp["n_layers"])]
    return forward(tokens, w["tok_embeddings.weight"], layers, w["norm.weight"], w["output.weight"],
                   hp["n_heads"], hp["n_kv_heads"], hp["norm_eps"], hp["rope_theta"], _rope_pairs)


def forward_hf(w: dict, tokens, hp: dict = TINY):
    p = "model.layers.{}."
    layers = [{"q": w[p.format(i) + "self_attn.q_proj.weight"], "k": w[p.format(i) + "self_attn.k_proj.weight"],
               "v": w[p.format(i) + "self_attn.v_proj.weight"], "o": w[p.format(i) + "self_attn.o_proj.weight"],
               "gate": w[p.format(i) + "mlp.gate_proj.weight"], "down": w[p.format(i) + "mlp.down_proj.weight"],
               "up": w[p.format(i) + "mlp.up_proj.weight"], "attn_norm": w[p.format(i) + "input_layernorm.weight"],
               "ffn_norm": w[p.format(i) + "post_attention_layernorm.weight"]} for i in range(hp["n_layers"])]
    out = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return forward(tokens, w["model.embed_tokens.weight"], layers, w["model.norm.weight"], out,
                   hp["n_heads"], hp["n_kv_heads"], hp["norm_eps"], hp["rope_theta"], _rope_half)


def kv_of(path) -> dict:
    """A GGUF file's metadata as plain values."""
    from llamapy.ggufio.reader import GGUFReader

    with GGUFReader(path) as r:
        return {k: r.get(k) for k in r.kv}


def gguf_f32_tensors(path) -> dict:
    """Every tensor of a GGUF file with F32/F16/BF16 data, as float32 arrays in numpy order."""
    from llamapy.ggufio.reader import GGUFReader

    out = {}
    with GGUFReader(path) as r:
        for name, t in r.tensors.items():
            a = t.data
            if t.type_name == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            out[name] = np.array(a, dtype=np.float32)
    return out


def forward_gguf(path, tokens):
    """Logits of a F32/F16/BF16 llama GGUF in GGUF's conventions (q/k rows already in pair order)."""

    kv = kv_of(path)
    w = gguf_f32_tensors(path)
    n = kv["llama.block_count"]
    layers = [{k: w[f"blk.{i}.{g}.weight"] for k, g in (
        ("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output"), ("gate", "ffn_gate"),
        ("down", "ffn_down"), ("up", "ffn_up"), ("attn_norm", "attn_norm"), ("ffn_norm", "ffn_norm"))}
        for i in range(n)]
    out = w.get("output.weight", w["token_embd.weight"])
    return forward(tokens, w["token_embd.weight"], layers, w["output_norm.weight"], out,
                   kv["llama.attention.head_count"], kv.get("llama.attention.head_count_kv",
                                                            kv["llama.attention.head_count"]),
                   kv["llama.attention.layer_norm_rms_epsilon"], kv.get("llama.rope.freq_base", 10000.0),
                   _rope_pairs)


# token ids the logit comparisons feed through both forwards
TOKENS = [1, 5, 17, 33, 90, 100, 7, 250, 3, 44, 61, 200]


def assert_engine_matches(path, ref: np.ndarray) -> None:
    """llamapy's engine on a converted file gives the reference forward's logits `ref` on TOKENS
    (F16 KV cache: ~1e-3), with the same argmax at every position."""
    from llamapy.engine.engine import Engine

    with Engine(str(path), n_ctx=64, n_threads=1) as llm:
        got = llm.eval_all_logits(TOKENS)
    assert np.abs(got - ref).max() < 1e-2 * np.abs(ref).max()
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))
