"""Round trip with the default model: its weights exported as a Hugging Face directory (safetensors, q/k in
rotate-half order, tokenizer.json + tokenizer_config.json rebuilt from its metadata), converted back:
every tensor, hyperparameter and tokenizer entry must come back as it was."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_convert_util import to_hf

from llamapy.convert import convert
from llamapy.ggufio.reader import GGUFReader

HF_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
HF_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
# SmolLM's pre-tokenizer: single digits, then GPT-2's byte-level split
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


def dequantized(t) -> np.ndarray:
    """A tensor of the default model as float32 in numpy order."""
    from llamapy.native import ffi, lib

    out = np.empty(t.n_elements, dtype=np.float32)
    raw = np.ascontiguousarray(t.raw)
    assert lib.lp_dequantize_row(t.type, ffi.from_buffer(raw), ffi.from_buffer("float *", out), t.n_elements) == 0
    return out.reshape(tuple(reversed(t.shape)))


def hf_name(gguf_name: str) -> str:
    if gguf_name in HF_NAMES:
        return HF_NAMES[gguf_name]
    _, i, base, suffix = gguf_name.split(".")
    return f"model.layers.{i}.{HF_BLOCK[base]}.{suffix}"


@pytest.fixture(scope="module")
def exported(default_model, tmp_path_factory):
    """(original tensors as float32, original metadata, exported HF directory)."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("roundtrip") / "SmolLM2-export"
    d.mkdir()
    with GGUFReader(default_model) as r:
        kv = {k: r.get(k) for k in r.kv}
        tensors = {name: dequantized(t) for name, t in r.tensors.items()}
    n_head, n_kv = kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]
    hf = to_hf(tensors, hf_name, n_head, n_kv, "attn_q.weight", "attn_k.weight")
    save_file(hf, str(d / "model.safetensors"), metadata={"format": "pt"})
    del hf

    toks, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": kv["llama.embedding_length"], "intermediate_size": kv["llama.feed_forward_length"],
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "num_hidden_layers": kv["llama.block_count"],
        "max_position_embeddings": kv["llama.context_length"], "rms_norm_eps": kv["llama.attention.layer_norm_rms_epsilon"],
        "rope_theta": kv["llama.rope.freq_base"], "vocab_size": len(toks), "tie_word_embeddings": True,
        "bos_token_id": kv["tokenizer.ggml.bos_token_id"], "eos_token_id": kv["tokenizer.ggml.eos_token_id"],
    }
    (d / "config.json").write_text(json.dumps(config))
    added = [{"id": i, "content": toks[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in range(len(toks)) if types[i] == 3]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": SMOLLM_PRE,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(toks)}, "merges": list(kv["tokenizer.ggml.merges"])},
    }
    (d / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    ids = {k: kv[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": kv["tokenizer.ggml.add_space_prefix"],
        "bos_token": toks[ids["bos"]], "eos_token": toks[ids["eos"]], "unk_token": toks[ids["unknown"]],
        "pad_token": toks[ids["padding"]], "chat_template": kv["tokenizer.chat_template"],
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }), encoding="utf-8")
    return tensors, kv, d


@pytest.fixture(scope="module")
def converted(exported, tmp_path_factory):
    _, _, d = exported
    res = convert(d, tmp_path_factory.mktemp("roundtrip-out") / "back.gguf", "f32")
    r = GGUFReader(res.path)
    yield r
    r.close()


def test_every_tensor_comes_back(exported, converted):
    tensors, _, _ = exported
    assert sorted(converted.tensors) == sorted(tensors)
    for name, a in tensors.items():
        t = converted.tensors[name]
        assert t.type_name == "F32", name
        assert np.array_equal(t.data, a), name


def test_hyperparameters_come_back(exported, converted):
    _, kv, _ = exported
    for key in ("llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count"):
        assert converted.get(key) == kv[key], key
    assert converted.kv["llama.rope.freq_base"].type.name == "FLOAT32"
    assert converted.get("general.file_type") == 0
    assert converted.get("general.quantization_version") == 2


def test_tokenizer_comes_back(exported, converted):
    _, kv, _ = exported
    assert converted.get("tokenizer.ggml.model") == "gpt2"
    assert converted.get("tokenizer.ggml.pre") == "smollm"  # recognised by the probe text's token hash
    assert converted.get("tokenizer.ggml.tokens") == kv["tokenizer.ggml.tokens"]
    assert np.array_equal(converted.get("tokenizer.ggml.token_type"), kv["tokenizer.ggml.token_type"])
    assert converted.get("tokenizer.ggml.merges") == kv["tokenizer.ggml.merges"]
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_space_prefix",
                "add_bos_token"):
        assert converted.get(f"tokenizer.ggml.{key}") == kv[f"tokenizer.ggml.{key}"], key
    assert converted.get("tokenizer.chat_template") == kv["tokenizer.chat_template"]
    assert "tokenizer.ggml.scores" not in converted


def test_converted_tokenizes_like_the_original(default_model, converted):
    from llamapy.tokenizer.core import Tokenizer

    a, b = Tokenizer.from_gguf(default_model), Tokenizer.from_gguf(converted.path)
    text = "Hello world! 12345 <|im_start|>user\nCafé naïve — 🦙 llamas\t\tgo"
    for special in (False, True):
        assert b.encode(text, parse_special=special) == a.encode(text, parse_special=special)


def test_converted_model_runs_in_llamapy_run(converted):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llamapy", "run", "-m", converted.path, "-p", "The capital of France is",
                        "-n", "4", "--temp", "0"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
