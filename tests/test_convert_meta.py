"""Meta layout: consolidated.NN.pth shards + params.json + tokenizer.model -> GGUF."""
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
    forward_meta,
    gguf_f32_tensors,
    kv_of,
    meta_params,
    meta_weights,
    rounded,
    save_meta,
)

from llamapy.convert import convert
from llamapy.errors import LlamapyError
from llamapy.ggufio.reader import GGUFReader


@pytest.fixture(scope="module")
def weights(vocab_n):
    return meta_weights(vocab_n, with_rope_freqs=True)


def make(root, name, w, spm_model, n_shards=1, dtype="bf16", params=None, tokenizer_in="parent"):
    d = save_meta(root / name, w, params or meta_params(), n_shards=n_shards, dtype=dtype)
    if tokenizer_in == "parent":
        shutil.copy(spm_model, d.parent / "tokenizer.model")
    elif tokenizer_in == "dir":
        shutil.copy(spm_model, d / "tokenizer.model")
    return d


def test_one_and_two_shards_give_identical_bytes(tmp_path, weights, spm_model):
    outs = []
    for shards in (1, 2):
        d = make(tmp_path / f"s{shards}", "llama-2-7b-chat", weights, spm_model, n_shards=shards)
        outs.append(convert(d, tmp_path / f"out{shards}.gguf", "f16").path.read_bytes())
    assert outs[0] == outs[1]


def test_four_shards_f16_checkpoint(tmp_path, weights, spm_model):
    a = make(tmp_path / "a", "7B", weights, spm_model, n_shards=1, dtype="f16")
    b = make(tmp_path / "b", "7B", weights, spm_model, n_shards=4, dtype="f16")
    ra, rb = convert(a, tmp_path / "a.gguf"), convert(b, tmp_path / "b.gguf")
    assert ra.outtype == "F16"  # default for an F16 checkpoint, as the reference
    assert ra.path.read_bytes() == rb.path.read_bytes()


def test_vocab_size_minus_one_comes_from_the_embedding_rows(tmp_path, weights, spm_model, vocab_n):
    notes = []
    d = make(tmp_path, "llama-2-7b", weights, spm_model, params=meta_params(vocab_size=-1))
    res = convert(d, tmp_path / "o.gguf", "f32", log=notes.append)
    assert [n for n in notes if "vocab_size" in n] == [
        f"note: params.json has vocab_size -1; using {vocab_n} from the rows of tok_embeddings"]
    kv = kv_of(res.path)
    assert kv["llama.vocab_size"] == vocab_n
    assert len(kv["tokenizer.ggml.tokens"]) == vocab_n


def test_vocab_size_missing_or_wrong(tmp_path, weights, spm_model, vocab_n):
    params = meta_params()
    del params["vocab_size"]
    d = make(tmp_path / "a", "m", weights, spm_model, params=params)
    assert kv_of(convert(d, tmp_path / "a.gguf", "f32").path)["llama.vocab_size"] == vocab_n
    d = make(tmp_path / "b", "m", weights, spm_model, params=meta_params(vocab_size=vocab_n + 7))
    with pytest.raises(LlamapyError, match=f"vocab_size is {vocab_n + 7} but tok_embeddings.weight has {vocab_n} rows"):
        convert(d, tmp_path / "b.gguf", "f32")


def test_hyperparameters_and_context_guesses(tmp_path, weights, spm_model, vocab_n):
    cases = [({}, None, 4096), ({"norm_eps": 1e-6}, None, 2048), ({"rope_theta": 1e6}, None, 16384),
             ({}, 1234, 1234)]
    for i, (over, ctx, expect) in enumerate(cases):
        hp = dict(TINY, **over)
        d = make(tmp_path / str(i), "m", weights, spm_model, params=meta_params(hp))
        kv = kv_of(convert(d, tmp_path / f"{i}.gguf", "f32", ctx=ctx).path)
        assert kv["llama.context_length"] == expect
        assert kv["llama.feed_forward_length"] == TINY["ffn"]  # from w1's rows
        assert kv["llama.attention.head_count"] == 4 and kv["llama.attention.head_count_kv"] == 2
        assert kv["llama.embedding_length"] == 64 and kv["llama.block_count"] == 2
        assert kv["llama.rope.dimension_count"] == 16
        assert kv["llama.attention.layer_norm_rms_epsilon"] == np.float32(hp["norm_eps"])
        assert kv.get("llama.rope.freq_base") == (1e6 if "rope_theta" in over else None)


def test_tensors_names_types_and_no_permutation(tmp_path, weights, spm_model):
    d = make(tmp_path, "m", weights, spm_model, dtype="f32")
    res = convert(d, tmp_path / "o.gguf", "f32")
    t = gguf_f32_tensors(res.path)
    assert "rope.freqs" not in t and "rope_freqs.weight" not in t  # old checkpoints' buffer is skipped
    assert list(t)[:3] == ["token_embd.weight", "output_norm.weight", "output.weight"]  # the checkpoint's order
    assert len(t) == 3 + 9 * TINY["n_layers"]
    np.testing.assert_array_equal(t["blk.1.attn_q.weight"], weights["layers.1.attention.wq.weight"])
    np.testing.assert_array_equal(t["blk.0.attn_k.weight"], weights["layers.0.attention.wk.weight"])
    np.testing.assert_array_equal(t["blk.0.ffn_gate.weight"], weights["layers.0.feed_forward.w1.weight"])
    np.testing.assert_array_equal(t["blk.0.ffn_down.weight"], weights["layers.0.feed_forward.w2.weight"])
    np.testing.assert_array_equal(t["token_embd.weight"], weights["tok_embeddings.weight"])


@pytest.mark.parametrize("outtype,weight_type", [("f32", "F32"), ("f16", "F16"), ("BF16", "BF16"), ("q8_0", "Q8_0")])
def test_outtypes_keep_norms_f32(tmp_path, weights, spm_model, outtype, weight_type):
    d = make(tmp_path, "m", weights, spm_model, dtype="f32")
    res = convert(d, tmp_path / "o.gguf", outtype)
    with GGUFReader(res.path) as r:
        types = {n: t.type_name for n, t in r.tensors.items()}
        assert r.get("general.file_type") == {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7}[weight_type]
        if weight_type == "Q8_0":
            from llamapy.quantize import quantize_rows

            w = weights["layers.0.feed_forward.w2.weight"]
            assert r.tensors["blk.0.ffn_down.weight"].raw.tobytes() == quantize_rows(8, w).tobytes()
        if weight_type == "BF16":
            bits = r.tensors["blk.0.attn_v.weight"].data
            import torch

            ref = torch.from_numpy(weights["layers.0.attention.wv.weight"]).to(torch.bfloat16).view(torch.int16)
            assert np.array_equal(bits.view(np.int16), ref.numpy())
    for n, t in types.items():
        assert t == ("F32" if n.endswith("norm.weight") else weight_type), n


def test_default_name_like_the_reference(tmp_path, weights, spm_model):
    d = make(tmp_path, "llama-2-7b-chat", weights, spm_model)
    res = convert(d, None, "f16")
    assert res.path == d / "llama-2-7B-chat-F16.gguf"
    kv = kv_of(res.path)
    assert kv["general.name"] == "Llama 2 7b Chat"
    assert kv["general.size_label"] == "103K"  # counted from the checkpoint (rope.freqs included)
    assert kv["general.basename"] == "llama-2" and kv["general.finetune"] == "chat"
    assert "general.version" not in kv
    assert "general.type" not in kv and "tokenizer.ggml.pre" not in kv  # the Meta-layout converter writes neither


def test_tokenizer_metadata_from_sentencepiece(tmp_path, weights, spm_model, vocab_n):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    d = make(tmp_path, "m", weights, spm_model)
    kv = kv_of(convert(d, tmp_path / "o.gguf", "f32").path)
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(vocab_n)]
    np.testing.assert_array_equal(kv["tokenizer.ggml.scores"], np.float32([sp.get_score(i) for i in range(vocab_n)]))
    types = kv["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == 3 and types[2] == 3  # <unk> unknown, <s> </s> control
    assert all(types[3 + i] == 6 for i in range(256))  # <0x00>... byte tokens
    assert all(t == 1 for t in types[259:])


def test_tokenizer_search_order_and_missing(tmp_path, weights, spm_model):
    d = make(tmp_path / "a", "m", weights, spm_model, tokenizer_in=None)
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "x.gguf", "f32", vocab_dir=vocab_dir)
    msg = str(e.value)
    for p in (vocab_dir / "tokenizer.model", d / "tokenizer.model", d.parent / "tokenizer.model",
              vocab_dir / "tokenizer.json", d / "tokenizer.json", d.parent / "tokenizer.json"):
        assert str(p) in msg
    assert not (tmp_path / "x.gguf").exists()
    shutil.copy(spm_model, vocab_dir / "tokenizer.model")
    assert convert(d, tmp_path / "x.gguf", "f32", vocab_dir=vocab_dir).path.exists()


def test_missing_params_and_config_lists_both(tmp_path, weights, spm_model):
    d = make(tmp_path, "m", weights, spm_model)
    (d / "params.json").unlink()
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "x.gguf", "f32")
    assert str(d / "config.json") in str(e.value) and str(d / "params.json") in str(e.value)


def test_vocab_mismatch_and_pad_vocab(tmp_path, spm_model, vocab_n):
    w = meta_weights(vocab_n + 5)
    d = make(tmp_path, "m", w, spm_model)
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "x.gguf", "f32")
    assert f"{vocab_n + 5}" in str(e.value) and f"{vocab_n}" in str(e.value) and "--pad-vocab" in str(e.value)
    kv = kv_of(convert(d, tmp_path / "x.gguf", "f32", pad_vocab=True).path)
    toks = kv["tokenizer.ggml.tokens"]
    assert len(toks) == vocab_n + 5 and toks[vocab_n:] == [f"<dummy{i:05}>" for i in range(1, 6)]
    assert list(kv["tokenizer.ggml.token_type"][vocab_n:]) == [4] * 5
    # a tokenizer larger than the embeddings can't be fixed by padding
    d2 = make(tmp_path / "b", "m", meta_weights(vocab_n - 3), spm_model)
    with pytest.raises(LlamapyError, match="vocab size mismatch") as e:
        convert(d2, tmp_path / "y.gguf", "f32", pad_vocab=True)
    assert "--pad-vocab" not in str(e.value)


def test_added_tokens_json(tmp_path, spm_model, vocab_n):
    w = meta_weights(vocab_n + 2)
    d = make(tmp_path, "m", w, spm_model, tokenizer_in="dir")
    (d / "added_tokens.json").write_text(json.dumps({"<tool>": vocab_n, "</tool>": vocab_n + 1}))
    kv = kv_of(convert(d, tmp_path / "x.gguf", "f32").path)
    assert kv["tokenizer.ggml.tokens"][vocab_n:] == ["<tool>", "</tool>"]
    assert list(kv["tokenizer.ggml.token_type"][vocab_n:]) == [4, 4]
    assert list(kv["tokenizer.ggml.scores"][vocab_n:]) == [-1000.0, -1000.0]


def test_shard_mismatch_and_missing_shard(tmp_path, weights, spm_model):
    d = make(tmp_path, "m", weights, spm_model, n_shards=3)
    (d / "consolidated.01.pth").unlink()
    with pytest.raises(LlamapyError, match=r"consolidated\.01\.pth is missing"):
        convert(d, tmp_path / "x.gguf", "f32")


def test_logits_match_meta_forward(tmp_path, weights, spm_model):
    """The GGUF, read in GGUF's conventions, computes the Meta checkpoint's logits."""
    d = make(tmp_path, "m", weights, spm_model, n_shards=2, dtype="bf16")
    res = convert(d, tmp_path / "o.gguf", "f32")
    ref = forward_meta(rounded(weights, "bf16"), TOKENS)
    np.testing.assert_allclose(forward_gguf(res.path, TOKENS), ref, rtol=0, atol=1e-9)


def test_engine_runs_converted_meta_model(tmp_path, weights, spm_model):
    """llamapy's engine on the converted file gives the Meta forward's logits."""
    d = make(tmp_path, "m", weights, spm_model, n_shards=2, dtype="bf16")
    res = convert(d, tmp_path / "o.gguf", "f32")
    assert_engine_matches(res.path, forward_meta(rounded(weights, "bf16"), TOKENS))


def test_vocab_only_needs_no_weights(tmp_path, weights, spm_model, vocab_n):
    d = make(tmp_path, "llama-2-7b", weights, spm_model)
    (d / "consolidated.00.pth").unlink()
    res = convert(d, None, None, vocab_only=True)
    assert res.path == d / "llama-2-vocab.gguf" and res.n_tensors == 0
    kv = kv_of(res.path)
    assert len(kv["tokenizer.ggml.tokens"]) == vocab_n and kv["llama.vocab_size"] == vocab_n


def test_vocab_type_bpe_looks_only_for_tokenizer_json(tmp_path, weights, spm_model):
    d = make(tmp_path, "m", weights, spm_model)
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "x.gguf", "f16", vocab_type="bpe")
    assert str(d / "tokenizer.json") in str(e.value) and "tokenizer.model" not in str(e.value)
    with pytest.raises(LlamapyError, match="unknown --vocab-type 'hfft': use spm or bpe"):
        convert(d, tmp_path / "x.gguf", "f16", vocab_type="hfft")


def test_llama3_tiktoken_file_is_a_clear_error(tmp_path, weights):
    d = save_meta(tmp_path / "m", weights, meta_params())
    (d / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")
    with pytest.raises(LlamapyError, match=r"tokenizer.model is a tiktoken vocabulary \(Llama 3\)"):
        convert(d, tmp_path / "x.gguf", "f16")


def test_converted_tokenizer_encodes_like_sentencepiece(tmp_path, weights, spm_model):
    """The tokenizer metadata is complete: llamapy's tokenizer, reading only the GGUF, gives
    sentencepiece's ids for tokenizer.model."""
    import sentencepiece as spm
    from test_convert_util import corpus

    from llamapy.tokenizer.core import Tokenizer

    d = make(tmp_path, "m", weights, spm_model)
    tk = Tokenizer.from_gguf(str(convert(d, tmp_path / "o.gguf", "q8_0").path))
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    texts = corpus(40, seed=9) + ["Hello World! ünïcode 🦙 tabs\tand  double  spaces", " leading", "12345 67", ""]
    for t in texts:
        assert tk.encode(t, add_special=False) == sp.encode(t), t
    assert tk.encode("fox", add_special=True)[0] == 1
