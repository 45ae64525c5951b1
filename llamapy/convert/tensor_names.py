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
# the other architectures' block tensors, added to HF_BLOCK for that architecture
HF_BLOCK_EXTRA = {
    "qk_norm": {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"},
    "mixtral": {"block_sparse_moe.gate": "ffn_gate_inp"},
    "qwen_moe": {
        "mlp.gate": "ffn_gate_inp",
        "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
        "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
        "mlp.shared_expert.up_proj": "ffn_up_shexp",
        "mlp.shared_expert.down_proj": "ffn_down_shexp",
    },
    "gemma": {  # Gemma 2/3: a norm after attention and one each side of the feed-forward
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    },
    "phi3": {"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"},
}
# merged expert tensors: the per-expert weight's name -> GGUF name of the stacked tensor
HF_EXPERTS = {
    "mixtral": {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"},
    "qwen_moe": {"down_proj": "ffn_down_exps", "gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps"},
}
HF_EXPERT_RE = {
    "mixtral": re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$"),
    "qwen_moe": re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(down_proj|gate_proj|up_proj)\.weight$"),
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


def hf_to_gguf(name: str, extras: tuple[str, ...] = ()) -> str | None:
    """GGUF name of a Hugging Face tensor; None if unknown. `extras`: HF_BLOCK_EXTRA tables of the
    architecture, which take precedence over the llama names."""
    block = HF_BLOCK
    if extras:
        block = dict(HF_BLOCK)
        for e in extras:
            block.update(HF_BLOCK_EXTRA[e])
    return _map(name, HF_GLOBAL, block, _HF_BLOCK_RE)


def block_id(gguf_name: str) -> int | None:
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    return int(m.group(1)) if m else None
