"""Hugging Face architectures besides llama: Mixtral, Qwen2/3 (dense and MoE), Gemma 2/3, Phi-3.

Tiny random checkpoints in each architecture's tensor names are converted; the GGUF's names, shapes,
types, values and metadata are checked against what the reference converter writes. With
LLAMAPY_REF_CONVERT=/path/to/convert_hf_to_gguf.py the files are also compared byte for byte with the
reference converter's own output (for the architectures it has).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_convert_util import gguf_f32_tensors, kv_of, save_hf

from llamapy.convert import convert
from llamapy.errors import LlamapyError
from llamapy.ggufio.reader import GGUFReader

H, NH, NKV, HD, FF, NL = 64, 4, 2, 16, 96, 2
N_EXP, MOE_FF, SH_FF = 4, 32, 64


def _cfg(arch: str, n_vocab: int, **extra) -> dict:
    cfg = {"architectures": [arch], "hidden_size": H, "intermediate_size": FF, "num_attention_heads": NH,
           "num_hidden_layers": NL, "num_key_value_heads": NKV, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "max_position_embeddings": 256, "vocab_size": n_vocab, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False, "torch_dtype": "float32"}
    cfg.update(extra)
    return cfg


CONFIGS = {
    "qwen2": lambda n: _cfg("Qwen2ForCausalLM", n),
    "qwen3": lambda n: _cfg("Qwen3ForCausalLM", n, head_dim=HD),
    "qwen2moe": lambda n: _cfg("Qwen2MoeForCausalLM", n, num_experts=N_EXP, num_experts_per_tok=2,
                               moe_intermediate_size=MOE_FF, shared_expert_intermediate_size=SH_FF),
    "qwen3moe": lambda n: _cfg("Qwen3MoeForCausalLM", n, head_dim=HD, num_experts=N_EXP, num_experts_per_tok=2,
                               moe_intermediate_size=MOE_FF),
    "mixtral": lambda n: _cfg("MixtralForCausalLM", n, num_local_experts=N_EXP, num_experts_per_tok=2),
    # 8 experts: llama-quantize gives attn_v/attn_k/attn_output more bits for these
    "mixtral8": lambda n: _cfg("MixtralForCausalLM", n, num_local_experts=8, num_experts_per_tok=2),
    "gemma2": lambda n: _cfg("Gemma2ForCausalLM", n, head_dim=HD, attn_logit_softcapping=50.0,
                             final_logit_softcapping=30.0, sliding_window=128, tie_word_embeddings=True),
    "gemma3": lambda n: _cfg("Gemma3ForCausalLM", n, head_dim=HD, sliding_window=128, tie_word_embeddings=True,
                             rope_theta=1000000.0),
    "phi3": lambda n: _cfg("Phi3ForCausalLM", n, original_max_position_embeddings=256, sliding_window=128),
}


def weights(kind: str, n_vocab: int, seed: int = 0) -> dict:
    """Random weights under the Hugging Face names of `kind`."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    n_exp = 8 if kind == "mixtral8" else N_EXP
    hd = HD if kind in ("qwen3", "qwen3moe", "gemma2", "gemma3") else H // NH
    w = {"model.embed_tokens.weight": r(n_vocab, H), "model.norm.weight": r(H)}
    if not kind.startswith("gemma"):
        w["lm_head.weight"] = r(n_vocab, H)
    for i in range(NL):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = r(H)
        w[p + "post_attention_layernorm.weight"] = r(H)
        if kind == "phi3":
            w[p + "self_attn.qkv_proj.weight"] = r((NH + 2 * NKV) * hd, H)
            w[p + "mlp.gate_up_proj.weight"] = r(2 * FF, H)
            w[p + "mlp.down_proj.weight"] = r(H, FF)
        else:
            w[p + "self_attn.q_proj.weight"] = r(NH * hd, H)
            w[p + "self_attn.k_proj.weight"] = r(NKV * hd, H)
            w[p + "self_attn.v_proj.weight"] = r(NKV * hd, H)
        w[p + "self_attn.o_proj.weight"] = r(H, NH * hd)
        if kind in ("qwen2", "qwen2moe"):
            for x, n in (("q", NH), ("k", NKV), ("v", NKV)):
                w[p + f"self_attn.{x}_proj.bias"] = r(n * hd)
        if kind in ("qwen3", "qwen3moe", "gemma3"):
            w[p + "self_attn.q_norm.weight"] = r(hd)
            w[p + "self_attn.k_norm.weight"] = r(hd)
        if kind.startswith("gemma"):
            w[p + "pre_feedforward_layernorm.weight"] = r(H)
            w[p + "post_feedforward_layernorm.weight"] = r(H)
        if kind in ("qwen2", "qwen3", "gemma2", "gemma3"):
            w[p + "mlp.gate_proj.weight"] = r(FF, H)
            w[p + "mlp.up_proj.weight"] = r(FF, H)
            w[p + "mlp.down_proj.weight"] = r(H, FF)
        if kind in ("qwen2moe", "qwen3moe"):
            w[p + "mlp.gate.weight"] = r(N_EXP, H)
            for x in range(N_EXP):
                w[p + f"mlp.experts.{x}.gate_proj.weight"] = r(MOE_FF, H)
                w[p + f"mlp.experts.{x}.up_proj.weight"] = r(MOE_FF, H)
                w[p + f"mlp.experts.{x}.down_proj.weight"] = r(H, MOE_FF)
        if kind == "qwen2moe":
            w[p + "mlp.shared_expert_gate.weight"] = r(1, H)
            w[p + "mlp.shared_expert.gate_proj.weight"] = r(SH_FF, H)
            w[p + "mlp.shared_expert.up_proj.weight"] = r(SH_FF, H)
            w[p + "mlp.shared_expert.down_proj.weight"] = r(H, SH_FF)
        if kind.startswith("mixtral"):
            w[p + "block_sparse_moe.gate.weight"] = r(n_exp, H)
            for x in range(n_exp):
                w[p + f"block_sparse_moe.experts.{x}.w1.weight"] = r(FF, H)
                w[p + f"block_sparse_moe.experts.{x}.w2.weight"] = r(H, FF)
                w[p + f"block_sparse_moe.experts.{x}.w3.weight"] = r(FF, H)
    return w


BPE_ONLY = ("qwen2moe", "qwen3moe")  # the reference reads only a tokenizer.json for these


def bpe_tokenizer(d, n_vocab):
    """A tiny byte-level BPE tokenizer.json with Qwen's special tokens."""
    from test_convert_util import corpus
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=n_vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(d / "tokenizer.json"))


@pytest.fixture
def qwen_pre(monkeypatch):
    """The tiny BPE tokenizer's probe hash taken as Qwen2's pre-tokenizer (its real vocabulary is too big to
    build here)."""
    from llamapy.convert import vocab

    real = vocab.detect_pre
    monkeypatch.setattr(vocab, "PRE_TOKENIZER_HASHES", dict(vocab.PRE_TOKENIZER_HASHES))

    def detect(path):
        from hashlib import sha256

        from tokenizers import Tokenizer

        h = sha256(str(Tokenizer.from_file(str(path)).encode(vocab.CHKTXT).ids).encode()).hexdigest()
        vocab.PRE_TOKENIZER_HASHES.setdefault(h, "qwen2")
        return real(path)

    monkeypatch.setattr(vocab, "detect_pre", detect)


def make(d, kind, spm_model, n_vocab, dtype="f32", n_parts=1):
    w = weights(kind, n_vocab)
    save_hf(d, w, CONFIGS[kind](n_vocab), dtype=dtype, n_parts=n_parts)
    if kind in BPE_ONLY:
        bpe_tokenizer(d, n_vocab)
    else:
        shutil.copy(spm_model, d / "tokenizer.model")
    return d, w


# the tensors each architecture's GGUF has in every block, besides attn_norm/attn_output
BLOCK_TENSORS = {
    "qwen2": ["attn_q", "attn_k", "attn_v", "attn_q.bias", "attn_k.bias", "attn_v.bias", "ffn_norm", "ffn_gate",
              "ffn_up", "ffn_down"],
    "qwen3": ["attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up",
              "ffn_down"],
    "qwen2moe": ["attn_q", "attn_k", "attn_v", "attn_q.bias", "attn_k.bias", "attn_v.bias", "ffn_norm",
                 "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_inp_shexp",
                 "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"],
    "qwen3moe": ["attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate_inp",
                 "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"],
    "mixtral": ["attn_q", "attn_k", "attn_v", "ffn_norm", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps",
                "ffn_down_exps"],
    "gemma2": ["attn_q", "attn_k", "attn_v", "post_attention_norm", "ffn_norm", "post_ffw_norm", "ffn_gate",
               "ffn_up", "ffn_down"],
    "gemma3": ["attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
               "post_ffw_norm", "ffn_gate", "ffn_up", "ffn_down"],
    "phi3": ["attn_qkv", "ffn_norm", "ffn_up", "ffn_down"],
}
BLOCK_TENSORS["mixtral8"] = BLOCK_TENSORS["mixtral"]
ARCH_NAME = {"mixtral": "llama", "mixtral8": "llama"}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_tensor_names_shapes_and_metadata(tmp_path, kind, spm_model, vocab_n, qwen_pre):
    d, w = make(tmp_path / kind, kind, spm_model, vocab_n)
    out = convert(d, tmp_path / "out.gguf", "f32").path
    kv = kv_of(out)
    arch = ARCH_NAME.get(kind, kind)
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.block_count"] == NL and kv[f"{arch}.embedding_length"] == H
    assert kv[f"{arch}.attention.head_count"] == NH and kv[f"{arch}.attention.head_count_kv"] == NKV
    r = GGUFReader(out)
    names = set(r.tensors)
    want = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not kind.startswith("gemma") else set())
    for i in range(NL):
        want |= {f"blk.{i}.attn_norm.weight", f"blk.{i}.attn_output.weight"}
        want |= {f"blk.{i}.{t}" if t.endswith(".bias") else f"blk.{i}.{t}.weight" for t in BLOCK_TENSORS[kind]}
    assert names == want
    t = gguf_tensors(out)
    if kind in ("qwen2moe", "qwen3moe", "mixtral"):
        n_ff = FF if kind == "mixtral" else MOE_FF
        assert r.tensors["blk.1.ffn_down_exps.weight"].shape == (n_ff, H, N_EXP)
        assert r.tensors["blk.1.ffn_gate_exps.weight"].shape == (H, n_ff, N_EXP)
        down = "block_sparse_moe.experts.2.w2" if kind == "mixtral" else "mlp.experts.2.down_proj"
        np.testing.assert_array_equal(t["blk.1.ffn_down_exps.weight"][2], w[f"model.layers.1.{down}.weight"])
        assert kv[f"{arch}.expert_count"] == N_EXP and kv[f"{arch}.expert_used_count"] == 2
    if kind in ("qwen2moe", "qwen3moe"):
        assert kv[f"{arch}.expert_feed_forward_length"] == MOE_FF
        assert (kv.get(f"{arch}.expert_shared_feed_forward_length") == SH_FF) == (kind == "qwen2moe")
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "qwen2"
        assert len(kv["tokenizer.ggml.merges"]) > 0
    if kind.startswith("gemma"):  # norms are stored as offsets from 1
        np.testing.assert_array_equal(t["blk.0.post_ffw_norm.weight"],
                                      w["model.layers.0.post_feedforward_layernorm.weight"] + np.float32(1))
        np.testing.assert_array_equal(t["output_norm.weight"], w["model.norm.weight"] + np.float32(1))
        assert kv["tokenizer.ggml.add_space_prefix"] is False
        assert kv[f"{arch}.attention.sliding_window"] == 128 and kv[f"{arch}.attention.key_length"] == HD
    if kind == "gemma2":
        assert kv["gemma2.attn_logit_softcapping"] == 50.0 and kv["gemma2.final_logit_softcapping"] == 30.0
    if kind == "gemma3":
        assert kv["gemma3.rope.freq_base"] == 1000000.0
        np.testing.assert_array_equal(t["blk.1.attn_q_norm.weight"], w["model.layers.1.self_attn.q_norm.weight"] + 1)
    if kind.startswith("qwen"):  # no rotary permutation outside llama
        np.testing.assert_array_equal(t["blk.0.attn_k.weight"], w["model.layers.0.self_attn.k_proj.weight"])
    if kind in ("qwen3", "qwen3moe"):
        np.testing.assert_array_equal(t["blk.0.attn_k_norm.weight"], w["model.layers.0.self_attn.k_norm.weight"])
        assert kv[f"{arch}.attention.key_length"] == HD
    if kind == "phi3":
        assert kv["phi3.rope.dimension_count"] == H // NH and kv["phi3.attention.sliding_window"] == 128
        np.testing.assert_array_equal(t["blk.0.ffn_up.weight"], w["model.layers.0.mlp.gate_up_proj.weight"])


def gguf_tensors(path) -> dict:
    return gguf_f32_tensors(path)


@pytest.mark.parametrize("kind", ["qwen2moe", "mixtral"])
def test_plain_outtypes_keep_the_router_f32(tmp_path, kind, spm_model, vocab_n, qwen_pre):
    d, _ = make(tmp_path / kind, kind, spm_model, vocab_n, dtype="bf16")
    r = GGUFReader(convert(d, tmp_path / "out.gguf", "f16").path)
    assert r.tensors["blk.0.ffn_gate_inp.weight"].type == 0  # F32
    assert r.tensors["blk.0.ffn_up_exps.weight"].type == 1  # F16


def test_missing_expert_is_an_error(tmp_path, spm_model, vocab_n):
    w = weights("mixtral", vocab_n)
    del w["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_hf(tmp_path, w, CONFIGS["mixtral"](vocab_n))
    shutil.copy(spm_model, tmp_path / "tokenizer.model")
    with pytest.raises(LlamapyError, match="experts"):
        convert(tmp_path, tmp_path / "out.gguf", "f32")


def test_unsupported_architecture_lists_the_supported(tmp_path, spm_model, vocab_n):
    save_hf(tmp_path, weights("qwen2", vocab_n), _cfg("FalconForCausalLM", vocab_n))
    with pytest.raises(LlamapyError, match=r"'FalconForCausalLM' is not supported; supported: .*Qwen2MoeForCausalLM"):
        convert(tmp_path, tmp_path / "out.gguf", "f32")


# -- byte-for-byte against the reference converter ---------------------------------------------------------
REF = os.environ.get("LLAMAPY_REF_CONVERT")
IN_REFERENCE = ["qwen2", "mixtral", "gemma2", "phi3"]  # qwen2moe too, but only with Qwen's real tokenizer


def ref_convert(d, out, outtype):
    if not REF or not os.path.isfile(REF):
        pytest.skip("set LLAMAPY_REF_CONVERT to the reference convert_hf_to_gguf.py to compare with it")
    p = subprocess.run([sys.executable, REF, str(d), "--outfile", str(out), "--outtype", outtype],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("kind", IN_REFERENCE)
def test_byte_identical_to_the_reference_converter(tmp_path, kind, outtype, spm_model, vocab_n):
    d, _ = make(tmp_path / kind, kind, spm_model, vocab_n, dtype="bf16" if outtype == "f16" else "f32")
    ref = ref_convert(d, tmp_path / "ref.gguf", outtype)
    ours = convert(d, tmp_path / "ours.gguf", outtype).path
    assert ours.read_bytes() == ref.read_bytes()


# The reference names a BPE pre-tokenizer only for the real tokenizers it has hashes of; Qwen's vocabulary is
# too big to build here, so both converters are told the tiny tokenizer's pre-tokenizer is Qwen2's (the
# reference by a wrapper that replaces its hash lookup); everything else is compared as is.
_REF_WRAPPER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("ref_convert", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.argv = sys.argv[1:]
spec.loader.exec_module(mod)
mod.Model.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
mod.main()
"""


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("kind", ["qwen2moe", "qwen2"])
def test_bpe_models_byte_identical_to_the_reference_converter(tmp_path, kind, outtype, spm_model, vocab_n,
                                                              qwen_pre):
    if not REF or not os.path.isfile(REF):
        pytest.skip("set LLAMAPY_REF_CONVERT to the reference convert_hf_to_gguf.py to compare with it")
    pytest.importorskip("transformers", reason="the reference converter reads BPE tokenizers with transformers")
    d, _ = make(tmp_path / kind, kind, spm_model, vocab_n)
    (d / "tokenizer.model").unlink(missing_ok=True)
    bpe_tokenizer(d, vocab_n)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"}))
    ref = tmp_path / "ref.gguf"
    p = subprocess.run([sys.executable, "-c", _REF_WRAPPER, REF, str(d), "--outfile", str(ref), "--outtype", outtype],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    ours = convert(d, tmp_path / "ours.gguf", outtype).path
    def plain(kv):
        return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in kv.items()}

    assert plain(kv_of(ours)) == plain(kv_of(ref))
    assert ours.read_bytes() == ref.read_bytes()


def phi3_with_added_tokens(d, spm_model, n_spm):
    """Phi-3 as shipped: vocab_size past the SentencePiece model, chat tokens added by the tokenizer configs."""
    n = n_spm + 8
    save_hf(d, weights("phi3", n), CONFIGS["phi3"](n))
    shutil.copy(spm_model, d / "tokenizer.model")
    names = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>"]
    (d / "added_tokens.json").write_text(json.dumps({t: n_spm + i for i, t in enumerate(names)}))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|endoftext|>",
        "added_tokens_decoder": {str(n_spm + i): {"content": t, "special": t in ("<|endoftext|>", "<|end|>")}
                                 for i, t in enumerate(names)}}))
    (d / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": n_spm + 1, "content": "<|assistant|>", "special": True}]}))
    return d, n_spm


def test_phi3_added_tokens_as_the_reference(tmp_path, spm_model, vocab_n):
    d, n_spm = phi3_with_added_tokens(tmp_path / "phi3", spm_model, vocab_n)
    kv = kv_of(convert(d, tmp_path / "out.gguf", "f32").path)
    toks, types, scores = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.scores"]
    assert len(toks) == n_spm + 8 and toks[n_spm + 7] == f"[PAD{n_spm + 7}]" and scores[n_spm + 7] == -10000.0
    assert types[n_spm + 7] == 5  # unused
    # special in tokenizer_config -> control; tokenizer.json's entry wins for <|assistant|>; others user-defined
    assert [types[n_spm + i] for i in range(6)] == [3, 3, 4, 4, 3, 4]
    assert toks[n_spm + 4] == "<|end|>" and scores[n_spm + 4] == -1000.0


def test_phi3_added_tokens_byte_identical_to_the_reference(tmp_path, spm_model, vocab_n):
    d, _ = phi3_with_added_tokens(tmp_path / "phi3", spm_model, vocab_n)
    ref = ref_convert(d, tmp_path / "ref.gguf", "f16")
    assert convert(d, tmp_path / "ours.gguf", "f16").path.read_bytes() == ref.read_bytes()


def phi3_long_rope(d, spm_model, n_vocab):
    half = H // NH // 2
    cfg = CONFIGS["phi3"](n_vocab)
    cfg.update(max_position_embeddings=1024, rope_scaling={
        "type": "longrope", "long_factor": [1.0 + i / 4 for i in range(half)],
        "short_factor": [1.0 + i / 16 for i in range(half)]})
    save_hf(d, weights("phi3", n_vocab), cfg)
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


def test_phi3_long_rope_factors(tmp_path, spm_model, vocab_n):
    out = convert(phi3_long_rope(tmp_path / "phi3", spm_model, vocab_n), tmp_path / "out.gguf", "f16").path
    kv = kv_of(out)
    assert list(kv)[1] == "phi3.rope.scaling.attn_factor"  # where the reference puts it
    assert kv["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(4) / np.log(256)), rel=1e-6)
    t = gguf_f32_tensors(out)
    np.testing.assert_array_equal(t["rope_factors_long.weight"], [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75])
    assert list(GGUFReader(out).tensors)[:2] == ["rope_factors_long.weight", "rope_factors_short.weight"]


def test_phi3_long_rope_byte_identical_to_the_reference(tmp_path, spm_model, vocab_n):
    d = phi3_long_rope(tmp_path / "phi3", spm_model, vocab_n)
    ref = ref_convert(d, tmp_path / "ref.gguf", "q8_0")
    assert convert(d, tmp_path / "ours.gguf", "q8_0").path.read_bytes() == ref.read_bytes()


def _variant(d, kind, spm_model, n_vocab, dtype="f32", drop=(), **cfg_extra):
    w = {n: a for n, a in weights(kind, n_vocab).items() if n not in drop}
    cfg = CONFIGS[kind](n_vocab)
    cfg.update(cfg_extra)
    save_hf(d, w, cfg, dtype=dtype)
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


VARIANTS = {
    # Qwen2.5's small models tie the output to the embeddings and ship no lm_head
    "qwen2-tied": lambda d, s, n: _variant(d, "qwen2", s, n, drop=("lm_head.weight",), tie_word_embeddings=True),
    "qwen2-yarn": lambda d, s, n: _variant(d, "qwen2", s, n, rope_scaling={
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    # Gemma's norms + 1 computed in float16 for a float16 checkpoint
    "gemma2-f16": lambda d, s, n: _variant(d, "gemma2", s, n, dtype="f16"),
    "gemma2-bf16": lambda d, s, n: _variant(d, "gemma2", s, n, dtype="bf16"),
}


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_byte_identical_to_the_reference_converter(tmp_path, variant, outtype, spm_model, vocab_n):
    d = VARIANTS[variant](tmp_path / variant, spm_model, vocab_n)
    ref = ref_convert(d, tmp_path / "ref.gguf", outtype)
    assert convert(d, tmp_path / "ours.gguf", outtype).path.read_bytes() == ref.read_bytes()


def test_variant_metadata(tmp_path, spm_model, vocab_n):
    kv = kv_of(convert(VARIANTS["qwen2-yarn"](tmp_path / "y", spm_model, vocab_n), tmp_path / "y.gguf", "f32").path)
    assert (kv["qwen2.rope.scaling.type"], kv["qwen2.rope.scaling.factor"]) == ("yarn", 4.0)
    assert kv["qwen2.rope.scaling.original_context_length"] == 64
    out = convert(VARIANTS["qwen2-tied"](tmp_path / "t", spm_model, vocab_n), tmp_path / "t.gguf", "f32").path
    assert "output.weight" not in GGUFReader(out).tensors
    t = gguf_f32_tensors(convert(VARIANTS["gemma2-f16"](tmp_path / "g", spm_model, vocab_n), tmp_path / "g.gguf",
                                 "f32").path)
    w = weights("gemma2", vocab_n)["model.norm.weight"].astype(np.float16)
    np.testing.assert_array_equal(t["output_norm.weight"], (w + np.float16(1)).astype(np.float32))


def test_gemma3_multimodal_checkpoint_gives_its_text_model(tmp_path, spm_model, vocab_n):
    """Gemma3ForConditionalGeneration: text_config, language_model.* tensors, vision tensors left out, and the
    embedding rows past the tokenizer's vocabulary dropped; the same file as the text-only checkpoint."""
    text, w = make(tmp_path / "text", "gemma3", spm_model, vocab_n)
    cfg = CONFIGS["gemma3"](vocab_n)
    text_cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "vocab_size")}
    mm = {"language_model." + n: a for n, a in w.items()}
    mm["language_model.model.embed_tokens.weight"] = np.concatenate(
        [w["model.embed_tokens.weight"], np.ones((8, H), np.float32)])
    mm["vision_tower.vision_model.post_layernorm.weight"] = np.ones(8, np.float32)
    mm["multi_modal_projector.mm_input_projection_weight"] = np.ones((8, H), np.float32)
    d = tmp_path / "gemma-3-mm"
    save_hf(d, mm, {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": text_cfg,
                    "vision_config": {"hidden_size": 8}, "bos_token_id": 1, "eos_token_id": 2})
    shutil.copy(spm_model, d / "tokenizer.model")
    ours = convert(d, tmp_path / "mm.gguf", "f16").path
    plain = convert(text, tmp_path / "text.gguf", "f16").path
    r, p = GGUFReader(ours), GGUFReader(plain)
    assert list(r.tensors) == list(p.tensors)
    assert r.tensors["token_embd.weight"].shape == (H, vocab_n)
    strip = {"general.name", "general.size_label"}
    assert {k: v for k, v in kv_of(ours).items() if k not in strip}.keys() == \
        {k: v for k, v in kv_of(plain).items() if k not in strip}.keys()
    a, b = gguf_f32_tensors(ours), gguf_f32_tensors(plain)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])


@pytest.mark.parametrize("change,message", [
    ({"architectures": {"Qwen2ForCausalLM": 1}}, "architecture None is not supported"),
    ({"architectures": [["Qwen2ForCausalLM"]]}, r"architecture \['Qwen2ForCausalLM'\] is not supported"),
    ({"sliding_window": "big"}, "sliding_window = 'big' is not a valid count"),
    ({"attn_logit_softcapping": True}, "attn_logit_softcapping = True is not a valid number"),
])
def test_bad_configs_are_one_line_errors(tmp_path, spm_model, vocab_n, change, message):
    d, _ = make(tmp_path / "g", "gemma2", spm_model, vocab_n)
    cfg = CONFIGS["gemma2"](vocab_n)
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlamapyError, match=message):
        convert(d, tmp_path / "out.gguf", "f32")
