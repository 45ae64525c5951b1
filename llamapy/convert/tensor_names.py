"""Checkpoint tensor names -> GGUF tensor names for the llama architecture, as tables."""
from __future__ import annotations

import re

# Meta's consolidated.*.pth names
META_GLOBAL = {
    "tok_embeddings": "token_embd",
    "norm": "output_norm",
    "output": "output",
}
META_BLOCK = {
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm",
    "ffn_norm": "ffn_norm",
}
META_SKIP = ("rope.freqs",)  # precomputed rotary frequencies in old checkpoints; llama.cpp computes them

# Hugging Face LlamaForCausalLM / MistralForCausalLM names
HF_GLOBAL = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}
HF_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
# tensors the reference converter drops: buffers, not weights
HF_SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

_META_BLOCK_RE = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _map(name: str, glob: dict[str, str], block: dict[str, str], block_re: re.Pattern) -> str | None:
    m = block_re.match(name)
    if m:
        new = block.get(m.group(2))
        return None if new is None else f"blk.{int(m.group(1))}.{new}.{m.group(3)}"
    base, dot, suffix = name.rpartition(".")
    if dot and suffix in ("weight", "bias") and base in glob:
        return f"{glob[base]}.{suffix}"
    return None


def meta_to_gguf(name: str) -> str | None:
    """GGUF name of a Meta tensor; None if unknown."""
    return _map(name, META_GLOBAL, META_BLOCK, _META_BLOCK_RE)


def hf_to_gguf(name: str) -> str | None:
    """GGUF name of a Hugging Face llama tensor; None if unknown."""
    return _map(name, HF_GLOBAL, HF_BLOCK, _HF_BLOCK_RE)


def block_id(gguf_name: str) -> int | None:
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    return int(m.group(1)) if m else None
