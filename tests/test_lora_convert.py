"""Merging PEFT LoRA adapters while converting (`llamapy convert BASE --lora ADAPTER`): the GGUF equals PEFT's
own merge_and_unload converted, for Meta and Hugging Face bases, safetensors and .bin adapters, rsLoRA, rank and
alpha patterns, two stacked adapters, and modules_to_save with a resized vocabulary and the adapter's tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("peft", reason="the PEFT oracle needs the peft package (the test extra)")

from peftutil import assert_same_tensors, base_hf, base_meta, make_adapter, peft_merged, spm_of_size  # noqa: E402

from llamapy.convert import convert  # noqa: E402
from llamapy.ggufio.reader import GGUFReader  # noqa: E402


def _oracle(tmp_path, base, adapters, tokenizer, outtype="f32"):
    merged = peft_merged(base, adapters, tmp_path / "peft-merged", tokenizer)
    return convert(merged, tmp_path / "want.gguf", outtype).path


@pytest.mark.parametrize("safetensors", [True, False])
def test_hf_base_equals_peft_merge(tmp_path, spm_model, vocab_n, safetensors):
    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    ad = make_adapter(base, tmp_path / "lora", safetensors=safetensors)
    got = convert(base, tmp_path / "got.gguf", "f32", lora=[ad]).path
    assert_same_tensors(got, _oracle(tmp_path, base, [ad], spm_model))


@pytest.mark.parametrize("n_shards,safetensors", [(1, True), (2, False)])
def test_meta_base_equals_peft_merge(tmp_path, spm_model, vocab_n, n_shards, safetensors):
    meta, hf = base_meta(tmp_path, spm_model, vocab_n, n_shards=n_shards)
    ad = make_adapter(hf, tmp_path / "lora", targets=["q_proj", "k_proj", "v_proj", "down_proj", "o_proj"],
                      safetensors=safetensors)
    got = convert(meta, tmp_path / "got.gguf", "f32", lora=[ad]).path
    assert_same_tensors(got, _oracle(tmp_path, hf, [ad], spm_model))


def test_rslora_and_patterns_equal_peft_merge(tmp_path, spm_model, vocab_n):
    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    ad = make_adapter(base, tmp_path / "lora", r=8, alpha=4, rslora=True, rank_pattern={"v_proj": 2},
                      alpha_pattern={"layers.1.self_attn.q_proj": 32})
    got = convert(base, tmp_path / "got.gguf", "f32", lora=[ad]).path
    assert_same_tensors(got, _oracle(tmp_path, base, [ad], spm_model))


def test_two_stacked_adapters_in_order(tmp_path, spm_model, vocab_n):
    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    a1 = make_adapter(base, tmp_path / "l1", seed=1, targets=["q_proj", "up_proj"])
    a2 = make_adapter(base, tmp_path / "l2", seed=2, targets=["q_proj", "o_proj"], r=2)
    got = convert(base, tmp_path / "got.gguf", "f32", lora=f"{a1},{a2}").path
    assert_same_tensors(got, _oracle(tmp_path, base, [a1, a2], spm_model))


def test_modules_to_save_resize_the_vocabulary(tmp_path, spm_model, vocab_n):
    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    big = spm_of_size(tmp_path / "big.model", vocab_n + 40)
    ad = make_adapter(base, tmp_path / "lora", new_vocab=vocab_n + 40, modules_to_save=["embed_tokens", "lm_head"],
                      tokenizer=big)
    got = convert(base, tmp_path / "got.gguf", "f32", lora=[ad]).path
    want = _oracle(tmp_path, base, [ad], big)
    assert_same_tensors(got, want)
    with GGUFReader(got) as r:
        assert r.get("llama.vocab_size") == vocab_n + 40
        assert len(r.get("tokenizer.ggml.tokens")) == vocab_n + 40
        assert r.tensors["token_embd.weight"].shape[1] == vocab_n + 40


def test_fan_in_fan_out_is_ignored_for_linear_layers_as_peft_does(tmp_path, spm_model, vocab_n):
    import json

    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    ad = make_adapter(base, tmp_path / "lora", targets=["q_proj", "down_proj"])
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg["fan_in_fan_out"] = True  # PEFT resets it to False for Linear layers (with a warning) when it loads
    (ad / "adapter_config.json").write_text(json.dumps(cfg))
    notes = []
    got = convert(base, tmp_path / "got.gguf", "f32", lora=[ad], log=notes.append).path
    assert any("fan_in_fan_out is set" in n for n in notes)
    assert_same_tensors(got, _oracle(tmp_path, base, [ad], spm_model))


def test_saved_module_of_another_width_and_missing_adapter(tmp_path, spm_model, vocab_n):
    from test_convert_util import TINY

    from llamapy.errors import LlamapyError

    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    wide = base_hf(tmp_path / "wide", spm_model, vocab_n, hp={**TINY, "dim": 128, "ffn": 192})
    ad = make_adapter(wide, tmp_path / "lora", targets=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(LlamapyError, match=r"a saved module of shape \[\d+, 128\] for a base tensor of \[\d+, 64\]"):
        convert(base, tmp_path / "got.gguf", "f16", lora=[ad])
    with pytest.raises(LlamapyError, match=r"LoRA adapter .*nowhere: no such directory"):
        convert(base, tmp_path / "got.gguf", "f16", lora=[tmp_path / "nowhere"])
    assert not (tmp_path / "got.gguf").exists()


def test_plus_models_two_adapters_each_resizing_the_vocabulary(tmp_path, spm_model, vocab_n):
    """Chinese-LLaMA-Plus, then Chinese-Alpaca-Plus trained over it: each resizes the vocabulary (49953, then
    49954 for the real ones) and saves embed_tokens and lm_head; the second adapter's tokenizer wins."""
    meta, hf = base_meta(tmp_path, spm_model, vocab_n)
    tok1, tok2 = spm_of_size(tmp_path / "t1.model", vocab_n + 30), spm_of_size(tmp_path / "t2.model", vocab_n + 31)
    a1 = make_adapter(hf, tmp_path / "llama-plus", seed=1, new_vocab=vocab_n + 30, tokenizer=tok1,
                      modules_to_save=["embed_tokens", "lm_head"])
    mid = peft_merged(hf, [a1], tmp_path / "llama-plus-merged", tok1)
    a2 = make_adapter(mid, tmp_path / "alpaca-plus", seed=2, new_vocab=vocab_n + 31, tokenizer=tok2,
                      modules_to_save=["embed_tokens", "lm_head"], targets=["q_proj", "v_proj", "down_proj"])
    got = convert(meta, tmp_path / "got.gguf", "f32", lora=[a1, a2]).path
    assert_same_tensors(got, _oracle(tmp_path, hf, [a1, a2], tok2))
    with GGUFReader(got) as r:
        assert r.get("llama.vocab_size") == vocab_n + 31 == len(r.get("tokenizer.ggml.tokens"))


def test_lora_on_the_embeddings_equals_peft_merge(tmp_path, spm_model, vocab_n):
    base = base_hf(tmp_path / "base", spm_model, vocab_n)
    ad = make_adapter(base, tmp_path / "lora", targets=["embed_tokens", "q_proj", "lm_head"])
    got = convert(base, tmp_path / "got.gguf", "f32", lora=[ad]).path
    assert_same_tensors(got, _oracle(tmp_path, base, [ad], spm_model))
    from test_convert_util import gguf_f32_tensors

    plain = gguf_f32_tensors(convert(base, tmp_path / "plain.gguf", "f32").path)
    merged = gguf_f32_tensors(got)
    for name in ("token_embd.weight", "output.weight"):
        assert np.abs(merged[name] - plain[name]).max() > 1e-3, name  # the adapter did change them
