"""The Hugging Face architectures besides llama: what GGUF architecture each becomes, its tensor names,
and the `<arch>.*` metadata the reference converter writes for it, read from config.json directly.

Qwen2, Qwen2-MoE, Mixtral (llama with experts), Gemma 2 and Phi-3 follow the reference converter of
early 2025 key for key; Qwen3, Qwen3-MoE and Gemma 3 are newer than it and follow what later llama.cpp
converters write (`qwen3.*` / `qwen3moe.*` / `gemma3.*`, q/k norms; of a multimodal Gemma 3 checkpoint,
the text model: `text_config` over the top-level config, `language_model.` tensors, vision tensors left
out, embedding rows past the vocabulary dropped).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LlamapyError
from ..ggufio.constants import KEY_FILE_TYPE, ValueType

U32, F32, STR = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING


@dataclass(frozen=True)
class HFArch:
    gguf: str  # the GGUF architecture name
    extras: tuple[str, ...] = ()  # tensor_names.HF_BLOCK_EXTRA tables
    experts: str | None = None  # tensor_names.HF_EXPERTS table of per-expert weights to stack
    permute_qk: bool = False  # llama: q/k rows into GGUF's interleaved rotary order
    norm_plus_one: bool = False  # Gemma: norm weights stored as offsets from 1
    skip_lm_head: bool = False  # Gemma: tied embeddings; a stray lm_head is dropped
    vocab: str = "llama"  # how the reference reads the tokenizer: llama, spm-or-bpe, bpe, spm, phi3
    text_part: bool = False  # a multimodal checkpoint: text_config and the language_model.* tensors only


ARCHS = {
    "LlamaForCausalLM": HFArch("llama", permute_qk=True),
    "MistralForCausalLM": HFArch("llama", permute_qk=True),
    "LLaMAForCausalLM": HFArch("llama", permute_qk=True),
    "MixtralForCausalLM": HFArch("llama", ("mixtral",), "mixtral", permute_qk=True),
    "Qwen2ForCausalLM": HFArch("qwen2", vocab="spm-or-bpe"),
    "Qwen3ForCausalLM": HFArch("qwen3", ("qk_norm",), vocab="spm-or-bpe"),
    "Qwen2MoeForCausalLM": HFArch("qwen2moe", ("qwen_moe",), "qwen_moe", vocab="bpe"),
    "Qwen3MoeForCausalLM": HFArch("qwen3moe", ("qwen_moe", "qk_norm"), "qwen_moe", vocab="bpe"),
    "Gemma2ForCausalLM": HFArch("gemma2", ("gemma",), norm_plus_one=True, skip_lm_head=True, vocab="spm"),
    "Gemma3ForCausalLM": HFArch("gemma3", ("gemma", "qk_norm"), norm_plus_one=True, skip_lm_head=True,
                                vocab="spm"),
    "Gemma3ForConditionalGeneration": HFArch("gemma3", ("gemma", "qk_norm"), norm_plus_one=True, skip_lm_head=True,
                                             vocab="spm", text_part=True),
    "Phi3ForCausalLM": HFArch("phi3", ("phi3",), vocab="phi3"),
}
SUPPORTED_ARCHITECTURES = tuple(a for a in ARCHS if a != "LLaMAForCausalLM")


def _find(cfg: dict, *keys: str):
    for k in keys:
        if k in cfg:
            return cfg[k]
    return None


def _need(cfg: dict, where: str, *keys: str):
    v = _find(cfg, *keys)
    if v is None:
        raise LlamapyError(f"{where}: config.json has no {' or '.join(keys)}")
    return v


def base_kvs(arch: str, cfg: dict, where: str, n_layer: int, expert_count_key: str = "num_local_experts"
             ) -> list[tuple]:
    """The keys every reference model class writes first, each when config.json sets it, in its order."""
    kvs: list[tuple] = [(f"{arch}.block_count", n_layer, U32, None)]
    opt = [("context_length", ("max_position_embeddings", "n_ctx"), U32),
           ("embedding_length", ("hidden_size", "n_embd"), U32),
           ("feed_forward_length", ("intermediate_size", "n_inner"), U32),
           ("attention.head_count", ("num_attention_heads", "n_head"), U32),
           ("attention.head_count_kv", ("num_key_value_heads",), U32),
           ("rope.freq_base", ("rope_theta",), F32),
           ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",), F32),
           ("attention.layer_norm_epsilon", ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"), F32),
           ("expert_count", (expert_count_key,), U32),
           ("expert_used_count", ("num_experts_per_tok",), U32)]
    for key, names, vt in opt:
        v = _find(cfg, *names)
        if v is not None:
            kvs.append((f"{arch}.{key}", v, vt, None))
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        kvs.append((f"{arch}.attention.key_length", cfg["head_dim"], U32, None))
        kvs.append((f"{arch}.attention.value_length", cfg["head_dim"], U32, None))
    kvs.append((KEY_FILE_TYPE, None, U32, None))
    del where
    return kvs


def _yarn(arch: str, cfg: dict) -> list[tuple]:
    rope = cfg.get("rope_scaling")
    if isinstance(rope, dict) and "factor" in rope and rope.get("type") == "yarn":
        return [(f"{arch}.rope.scaling.type", "yarn", STR, None),
                (f"{arch}.rope.scaling.factor", rope["factor"], F32, None),
                (f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"], U32,
                 None)]
    return []


def arch_kvs(hf_arch: str, cfg: dict, where: str) -> list[tuple]:
    """`<arch>.*` metadata for a non-llama architecture, in the reference's order (file type left None)."""
    kvs = _arch_kvs(hf_arch, cfg, where)
    for key, value, vt, _ in kvs:
        if value is None:
            continue
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0 if vt == U32
              else isinstance(value, (int, float)) and not isinstance(value, bool) if vt == F32 else True)
        if not ok:
            raise LlamapyError(f"{where}: {key.split('.', 1)[1]} = {value!r} is not a valid "
                               f"{'count' if vt == U32 else 'number'}")
    return kvs


def _arch_kvs(hf_arch: str, cfg: dict, where: str) -> list[tuple]:
    spec = ARCHS[hf_arch]
    a = spec.gguf
    n_layer = _need(cfg, where, "num_hidden_layers", "n_layer")
    if a in ("qwen2", "qwen3"):
        return base_kvs(a, cfg, where, n_layer) + _yarn(a, cfg)
    if a in ("qwen2moe", "qwen3moe"):
        kvs = base_kvs(a, cfg, where, n_layer)
        for key, name in (("expert_count", "num_experts"), ("expert_feed_forward_length", "moe_intermediate_size"),
                          ("expert_shared_feed_forward_length", "shared_expert_intermediate_size")):
            if cfg.get(name) is not None:
                kvs.append((f"{a}.{key}", cfg[name], U32, None))
        return kvs + _yarn(a, cfg)
    if a == "gemma2":
        n_head = _need(cfg, where, "num_attention_heads")
        return [
            ("gemma2.context_length", _need(cfg, where, "max_position_embeddings"), U32, None),
            ("gemma2.embedding_length", _need(cfg, where, "hidden_size"), U32, None),
            ("gemma2.block_count", n_layer, U32, None),
            ("gemma2.feed_forward_length", _need(cfg, where, "intermediate_size"), U32, None),
            ("gemma2.attention.head_count", n_head, U32, None),
            ("gemma2.attention.head_count_kv", cfg.get("num_key_value_heads", n_head), U32, None),
            ("gemma2.attention.layer_norm_rms_epsilon", _need(cfg, where, "rms_norm_eps"), F32, None),
            ("gemma2.attention.key_length", _need(cfg, where, "head_dim"), U32, None),
            ("gemma2.attention.value_length", cfg["head_dim"], U32, None),
            (KEY_FILE_TYPE, None, U32, None),
            ("gemma2.attn_logit_softcapping", _need(cfg, where, "attn_logit_softcapping"), F32, None),
            ("gemma2.final_logit_softcapping", _need(cfg, where, "final_logit_softcapping"), F32, None),
            ("gemma2.attention.sliding_window", _need(cfg, where, "sliding_window"), U32, None),
        ]
    if a == "gemma3":
        kvs = [
            ("gemma3.context_length", cfg.get("max_position_embeddings", 131072), U32, None),
            ("gemma3.embedding_length", _need(cfg, where, "hidden_size"), U32, None),
            ("gemma3.block_count", n_layer, U32, None),
            ("gemma3.feed_forward_length", _need(cfg, where, "intermediate_size"), U32, None),
            ("gemma3.attention.head_count", cfg.get("num_attention_heads", 8), U32, None),
            ("gemma3.attention.layer_norm_rms_epsilon", cfg.get("rms_norm_eps", 1e-6), F32, None),
            ("gemma3.attention.key_length", cfg.get("head_dim", 256), U32, None),
            ("gemma3.attention.value_length", cfg.get("head_dim", 256), U32, None),
            (KEY_FILE_TYPE, None, U32, None),
            ("gemma3.rope.freq_base", cfg.get("rope_theta", 1_000_000.0), F32, None),
            ("gemma3.attention.sliding_window", _need(cfg, where, "sliding_window"), U32, None),
            ("gemma3.attention.head_count_kv", cfg.get("num_key_value_heads", 4), U32, None),
        ]
        if cfg.get("final_logit_softcapping") is not None:
            raise LlamapyError(f"{where}: Gemma 3 with final_logit_softcapping is not supported")
        rope = cfg.get("rope_scaling")
        if isinstance(rope, dict) and rope.get("rope_type") == "linear":
            kvs += [("gemma3.rope.scaling.type", "linear", STR, None),
                    ("gemma3.rope.scaling.factor", rope["factor"], F32, None)]
        return kvs
    if a == "phi3":
        n_embd = _need(cfg, where, "hidden_size", "n_embd")
        n_head = _need(cfg, where, "num_attention_heads", "n_head")
        return [
            ("phi3.context_length", _need(cfg, where, "n_positions", "max_position_embeddings"), U32, None),
            ("phi3.rope.scaling.original_context_length", _need(cfg, where, "original_max_position_embeddings"),
             U32, None),
            ("phi3.embedding_length", n_embd, U32, None),
            ("phi3.feed_forward_length", _need(cfg, where, "intermediate_size"), U32, None),
            ("phi3.block_count", n_layer, U32, None),
            ("phi3.attention.head_count", n_head, U32, None),
            ("phi3.attention.head_count_kv", _need(cfg, where, "num_key_value_heads", "n_head_kv"), U32, None),
            ("phi3.attention.layer_norm_rms_epsilon", _need(cfg, where, "rms_norm_eps"), F32, None),
            ("phi3.rope.dimension_count", n_embd // n_head, U32, None),
            ("phi3.rope.freq_base", _need(cfg, where, "rope_theta"), F32, None),
            (KEY_FILE_TYPE, None, U32, None),
            ("phi3.attention.sliding_window", cfg.get("sliding_window") or 0, U32, None),
        ]
    raise AssertionError(a)
