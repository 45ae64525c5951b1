"""Hugging Face layout: config.json + safetensors / pytorch_model.bin + tokenizer -> GGUF."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_convert_util import (
    TINY,
    TOKENS,
    assert_engine_matches,
    forward_gguf,
    forward_hf,
    gguf_f32_tensors,
    hf_config,
    kv_of,
    meta_to_hf,
    meta_weights,
    rounded,
    save_hf,
)

from llamapy.convert import convert
from llamapy.errors import LlamapyError
from llamapy.ggufio.reader import GGUFReader


@pytest.fixture(scope="module")
def meta_w(vocab_n):
    return meta_weights(vocab_n, seed=3)


@pytest.fixture(scope="module")
def hf_w(meta_w):
    return meta_to_hf(meta_w)


def make(d, w, spm_model, n, fmt="safetensors", n_parts=1, dtype="f32", tokenizer=True, **cfg):
    save_hf(d, w, hf_config(n, **cfg), fmt=fmt, n_parts=n_parts, dtype=dtype)
    if tokenizer:
        shutil.copy(spm_model, d / "tokenizer.model")
    return d


@pytest.mark.parametrize("fmt,n_parts,dtype", [("safetensors", 1, "f32"), ("safetensors", 3, "bf16"),
                                               ("bin", 1, "f16"), ("bin", 2, "f32")])
def test_weights_in_every_format_convert_to_the_same_tensors(tmp_path, hf_w, meta_w, spm_model, vocab_n, fmt,
                                                            n_parts, dtype):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, fmt=fmt, n_parts=n_parts, dtype=dtype)
    res = convert(d, tmp_path / "o.gguf", "f32")
    t = gguf_f32_tensors(res.path)
    want = rounded(meta_w, dtype)
    # Hugging Face's rotate-half q/k rows come back in GGUF's (= Meta's) interleaved order
    np.testing.assert_array_equal(t["blk.0.attn_q.weight"], want["layers.0.attention.wq.weight"])
    np.testing.assert_array_equal(t["blk.1.attn_k.weight"], want["layers.1.attention.wk.weight"])
    np.testing.assert_array_equal(t["blk.1.ffn_down.weight"], want["layers.1.feed_forward.w2.weight"])
    np.testing.assert_array_equal(t["output.weight"], want["output.weight"])
    assert len(t) == 3 + 9 * TINY["n_layers"]


def test_tensor_order_is_the_reference_order(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n)
    with GGUFReader(convert(d, tmp_path / "o.gguf", "f16").path) as r:
        names = list(r.tensors)
    # safetensors keys in name order: lm_head, model.embed_tokens, model.layers.0.input_layernorm, ...
    assert names[:4] == ["output.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.weight"]
    assert names[-1] == "output_norm.weight"


def test_logits_match_hf_forward(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, dtype="bf16")
    res = convert(d, tmp_path / "o.gguf", "f32")
    ref = forward_hf(rounded(hf_w, "bf16"), TOKENS)
    np.testing.assert_allclose(forward_gguf(res.path, TOKENS), ref, rtol=0, atol=1e-9)


def test_engine_runs_converted_hf_model(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, fmt="bin", dtype="f16")
    res = convert(d, tmp_path / "o.gguf", "f16")
    assert_engine_matches(res.path, forward_hf(rounded(hf_w, "f16"), TOKENS))


def test_hyperparameters(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, arch="MistralForCausalLM", head_dim=16,
             rope_scaling={"type": "linear", "factor": 2.0})
    kv = kv_of(convert(d, tmp_path / "o.gguf", "bf16").path)
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "model"
    assert kv["llama.block_count"] == 2 and kv["llama.context_length"] == 256
    assert kv["llama.embedding_length"] == 64 and kv["llama.feed_forward_length"] == 96
    assert kv["llama.attention.head_count"] == 4 and kv["llama.attention.head_count_kv"] == 2
    assert kv["llama.attention.key_length"] == 16 and kv["llama.attention.value_length"] == 16
    assert kv["llama.rope.dimension_count"] == 16 and kv["llama.vocab_size"] == vocab_n
    assert kv["llama.rope.scaling.type"] == "linear" and kv["llama.rope.scaling.factor"] == 2.0
    assert kv["general.file_type"] == 32 and kv["general.quantization_version"] == 2


def test_spm_tokenizer_with_config_files(tmp_path, hf_w, spm_model, vocab_n):
    w = dict(hf_w)
    n = vocab_n + 3
    rng = np.random.default_rng(0)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        w[k] = np.concatenate([w[k], rng.standard_normal((3, TINY["dim"])).astype(np.float32)])
    d = make(tmp_path / "m", w, spm_model, n)
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "chat_template": template,
        "added_tokens_decoder": {
            str(vocab_n): {"content": "<|im_start|>", "special": True},
            str(vocab_n + 1): {"content": "<|im_end|>", "special": False},  # looks special: control anyway
            str(vocab_n + 2): {"content": "\u2581tool", "special": False}}}))
    kv = kv_of(convert(d, tmp_path / "o.gguf", "f16").path)
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.pre"] == "default"
    assert kv["tokenizer.ggml.tokens"][vocab_n:] == ["<|im_start|>", "<|im_end|>", " tool"]
    assert list(kv["tokenizer.ggml.token_type"][vocab_n:]) == [3, 3, 4]
    assert list(kv["tokenizer.ggml.scores"][vocab_n:]) == [-1000.0] * 3
    assert kv["tokenizer.ggml.bos_token_id"] == 1 and kv["tokenizer.ggml.eos_token_id"] == 2  # from config.json
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False
    assert kv["tokenizer.chat_template"] == template


def test_short_tokenizer_is_padded_like_the_reference(tmp_path, hf_w, spm_model, vocab_n):
    w = dict(hf_w)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        w[k] = np.concatenate([w[k], np.zeros((2, TINY["dim"]), np.float32)])
    d = make(tmp_path / "m", w, spm_model, vocab_n + 2)
    kv = kv_of(convert(d, tmp_path / "o.gguf", "f16").path)
    assert kv["tokenizer.ggml.tokens"][vocab_n:] == [f"[PAD{vocab_n}]", f"[PAD{vocab_n + 1}]"]
    assert list(kv["tokenizer.ggml.token_type"][vocab_n:]) == [5, 5]


def test_size_disagreements_are_errors(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "a", hf_w, spm_model, vocab_n + 4)
    with pytest.raises(LlamapyError, match=f"vocab_size is {vocab_n + 4} but model.embed_tokens.weight has {vocab_n} rows"):
        convert(d, tmp_path / "a.gguf", "f16")
    w = {k: (v[:-5] if k in ("model.embed_tokens.weight", "lm_head.weight") else v) for k, v in hf_w.items()}
    d = make(tmp_path / "b", w, spm_model, vocab_n - 5)
    with pytest.raises(LlamapyError, match=f"has {vocab_n} tokens but the model's vocab_size is {vocab_n - 5}"):
        convert(d, tmp_path / "b.gguf", "f16")


@pytest.mark.parametrize("text,label", [("fP16", "F16"), ("F32", "F32"), ("bf16", "BF16"), ("Q8_0", "Q8_0"),
                                        ("1", "F16"), ("0", "F32"), ("float16", "F16")])
def test_outtype_spellings(tmp_path, hf_w, spm_model, vocab_n, text, label):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n)
    assert convert(d, tmp_path / "o.gguf", text).outtype == label


def test_unknown_outtype(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n)
    with pytest.raises(LlamapyError, match="unknown --outtype 'f8'.*q4_k_m"):
        convert(d, tmp_path / "o.gguf", "f8")


@pytest.mark.parametrize("dtype,label", [("f16", "F16"), ("bf16", "BF16"), ("f32", "BF16")])
def test_auto_outtype(tmp_path, hf_w, spm_model, vocab_n, dtype, label):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, dtype=dtype)
    res = convert(d, None, "auto")
    assert res.outtype == label and res.path.name.endswith(f"-{label}.gguf")


@pytest.mark.parametrize("ftype", ["q4_k_m", "Q4_0", "q6_k", "q3_k_s"])
def test_quantize_type_directly_equals_f32_then_quantize(tmp_path, hf_w, spm_model, vocab_n, ftype):
    from llamapy.quantize import parse_ftype, quantize_file

    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, dtype="bf16")
    direct = convert(d, tmp_path / "direct.gguf", ftype)
    f32 = convert(d, tmp_path / "f32.gguf", "f32")
    quantize_file(f32.path, tmp_path / "two.gguf", parse_ftype(ftype).ftype)
    assert direct.path.read_bytes() == (tmp_path / "two.gguf").read_bytes()
    assert direct.outtype == ftype.upper()


def test_unsupported_architecture(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, arch="GPT2LMHeadModel")
    with pytest.raises(LlamapyError, match="'GPT2LMHeadModel' is not supported; supported: LlamaForCausalLM, "
                                           "MistralForCausalLM"):
        convert(d, tmp_path / "o.gguf", "f16")


def test_missing_tokenizer_lists_paths(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, tokenizer=False)
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "o.gguf", "f16")
    assert str(d / "tokenizer.model") in str(e.value) and str(d / "tokenizer.json") in str(e.value)


def test_missing_weights_and_index_parts(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, n_parts=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(LlamapyError, match="model-00002-of-00003.safetensors absent or incomplete"):
        convert(d, tmp_path / "o.gguf", "f16")
    for p in d.glob("model-*.safetensors"):
        p.unlink()
    with pytest.raises(LlamapyError, match="no weights found"):
        convert(d, tmp_path / "o.gguf", "f16")


def test_llama3_rope_factors_tensor(tmp_path, hf_w, spm_model, vocab_n):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n, rope_scaling=rope)
    t = gguf_f32_tensors(convert(d, tmp_path / "o.gguf", "f16").path)
    f = t["rope_freqs.weight"]
    assert f.shape == (8,)  # head_dim / 2
    hd = 16
    wavelen = 2 * np.pi * 10000.0 ** (np.arange(0, hd, 2) / hd)
    assert np.all(f[wavelen < 16] == 1) and np.all(f[wavelen > 64] == 8)  # 64/4 and 64/1: the two bands
    mid = (wavelen >= 16) & (wavelen <= 64)
    assert np.all((f[mid] > 1) & (f[mid] < 8))


def test_byte_level_bpe_with_unknown_pre_tokenizer(tmp_path, hf_w, vocab_n):
    from test_convert_util import corpus
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_n, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = make(tmp_path / "m", hf_w, None, vocab_n, tokenizer=False)
    tk.save(str(d / "tokenizer.json"))
    with pytest.raises(LlamapyError, match=r"BPE pre-tokenizer not recognized \(hash [0-9a-f]{64}\).*smollm"):
        convert(d, tmp_path / "o.gguf", "f16")
    assert not (tmp_path / "o.gguf").exists()


def test_sentencepiece_style_tokenizer_json_needs_tokenizer_model(tmp_path, hf_w, vocab_n):
    d = make(tmp_path / "m", hf_w, None, vocab_n, tokenizer=False)
    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "byte_fallback": True,
                                                            "vocab": {"a": 0}, "merges": []}}))
    with pytest.raises(LlamapyError, match="SentencePiece-style tokenizer .* without its tokenizer.model"):
        convert(d, tmp_path / "o.gguf", "f16")


def test_vocab_only(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n)
    res = convert(d, None, "f16", vocab_only=True)
    assert res.path.name.endswith("-vocab.gguf") and res.n_tensors == 0
    with GGUFReader(res.path) as r:
        assert not r.tensors and len(r.get("tokenizer.ggml.tokens")) == vocab_n


def test_half_conversions_match_the_reference_numpy_rounding():
    """F16/BF16 rows go through the C core's kernels; they must round exactly as the reference converter's
    numpy does (nearest even; overflow to inf; subnormals), and widen exactly."""
    from llamapy.convert.outtype import f32_to_half, rows_to_f32
    from llamapy.ggufio.constants import TensorType

    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.concatenate([x[~np.isnan(x)], np.float32([0.0, -0.0, np.inf, -np.inf, 65504, 65520, 65519.996,
                                                     6.1035156e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08])])
    with np.errstate(over="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(f32_to_half(x, TensorType.F16), f16)
    u = x.view(np.uint32)
    bf16 = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(f32_to_half(x, TensorType.BF16), bf16)
    assert np.array_equal(rows_to_f32(f16.reshape(-1, 1), "F16").ravel(), f16.view(np.float16).astype(np.float32))
    assert np.array_equal(rows_to_f32(bf16, "BF16"), (bf16.astype(np.uint32) << 16).view(np.float32))


def test_model_card_metadata(tmp_path, hf_w, spm_model, vocab_n):
    d = make(tmp_path / "TinyLlama-1.1B-Chat-v1.0", hf_w, spm_model, vocab_n)
    (d / "README.md").write_text("---\nlicense: apache-2.0\ntags: [chat]\nlanguage: en\n"
                                 "base_model: TinyLlama/TinyLlama-1.1B-intermediate\n---\n# a card\n")
    res = convert(d, None, "q8_0", model_name=None)
    assert res.path.name == "TinyLlama-103K-1.1b-Chat-v1.0-Q8_0.gguf"  # the reference's name for this directory
    kv = kv_of(res.path)
    assert kv["general.license"] == "apache-2.0" and kv["general.tags"] == ["chat"]
    assert kv["general.languages"] == ["en"] and kv["general.base_model.count"] == 1
    assert kv["general.base_model.0.organization"] == "TinyLlama"
    assert kv["general.finetune"] == "1.1b-Chat" and kv["general.version"] == "v1.0"
    (d / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    with pytest.raises(LlamapyError, match=r"can't read the model card \(README.md\)"):
        convert(d, tmp_path / "x.gguf", "f16")


def test_model_args_from_config_params_and_gguf_agree(tmp_path, hf_w, spm_model, vocab_n):
    """The same hyperparameters from config.json, Meta's params.json and the converted file."""
    from test_convert_util import meta_params

    from llamapy.model_args import ModelArgs

    fields = ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx_train")
    hf = ModelArgs.from_hf_config(hf_config(vocab_n), where="config.json", n_vocab=vocab_n)
    meta = ModelArgs.from_meta_params(meta_params(), n_vocab=vocab_n, n_ff=TINY["ffn"], n_ctx=256)
    d = make(tmp_path / "m", hf_w, spm_model, vocab_n)
    with GGUFReader(convert(d, tmp_path / "o.gguf", "f32").path) as r:
        gguf = ModelArgs.from_gguf(r)
    want = (vocab_n, 64, 2, 4, 2, 16, 96, 256)
    for args in (hf, meta, gguf):
        assert tuple(getattr(args, f) for f in fields) == want
        assert args.norm_eps == pytest.approx(1e-5) and args.rope_freq_base == 10000.0
    # the reference converter's other spellings of the keys; a missing one is named
    alt = ModelArgs.from_hf_config({"n_layer": 3, "n_head": 2, "n_embd": 8, "n_inner": 12, "n_ctx": 32}, where="c")
    assert (alt.n_layer, alt.n_head, alt.n_head_kv, alt.head_dim, alt.n_ff, alt.n_ctx_train) == (3, 2, 2, 4, 12, 32)
    with pytest.raises(LlamapyError, match="c: none of num_attention_heads, n_head is set"):
        ModelArgs.from_hf_config({"num_hidden_layers": 2}, where="c")
