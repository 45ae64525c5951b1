"""KV cache types (-ctk/-ctv): the engine's quantized cache against the numpy oracle that stores K and V
rows the same way, batches against single steps, context shift and copies on a quantized cache, the
cache's size, and bad type names refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from cliutil import cli
from gguf.constants import GGMLQuantizationType as T
from test_engine import TOKENS, shift_then_fresh
from test_engine_models import write_random_llama

from llamapy.engine import reference as rf
from llamapy.engine.engine import Engine
from llamapy.engine.load import KV_CACHE_TYPES, LoadOptions, kv_cache_type
from llamapy.errors import LlamapyError

TYPES = list(KV_CACHE_TYPES)

# Largest |engine - oracle| / max|oracle logit|. The oracle stores the cache rows as the engine does (the
# numpy quantizers give the C quantizers' bytes), so what is left is summation order and the engine's fast
# quantizer of q (Q8_0/Q8_1 blocks); Q4_1/Q5_1 keys dot with q's fp16 block sum, which the oracle does not
# model. Against f16 (the last column) a type may move the logits by its own rounding: that bound is
# looser and says how far each type is from the default.
TOLERANCE = {"f16": 5e-4, "q4_1": 2e-3, "q5_1": 2e-3}
DEFAULT_TOLERANCE = 1e-5
FROM_F16 = {"f32": 2e-3, "f16": 0.0, "bf16": 1e-2, "q8_0": 1e-2}
FROM_F16_4BIT = 0.1


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """head_dim 32 (one block per head), two KV heads: a row holds two blocks."""
    return write_random_llama(tmp_path_factory.mktemp("kv") / "m.gguf", wtype=T.F32, n_vocab=128, n_embd=128,
                              n_head=4, n_head_kv=2, n_ff=160)


def logits(path, t: str, tv: str | None = None, n_batch: int = 8, tokens=TOKENS) -> np.ndarray:
    with Engine(path, n_ctx=64, n_threads=2, n_batch=n_batch, load=LoadOptions(type_k=t, type_v=tv or t)) as llm:
        return llm.eval_all_logits(tokens)


@pytest.mark.parametrize("t", TYPES)
def test_logits_match_the_quantized_cache_oracle(model, t):
    got = logits(model, t)
    args, w, types = rf.load_weights(model)
    tid = KV_CACHE_TYPES[t]
    want = rf.forward(args, w, TOKENS, types, kv_types=(tid, tid))
    assert rel_err(got, want) < TOLERANCE.get(t, DEFAULT_TOLERANCE)
    # and the oracle sees the type: the f16 cache's logits are not these (except for f16 itself)
    if t not in ("f16",):
        f16_want = rf.forward(args, w, TOKENS, types)
        assert rel_err(want, f16_want) > 0
    assert rel_err(got, logits(model, "f16")) <= FROM_F16.get(t, FROM_F16_4BIT)


def test_f16_default_is_the_f16_cache(model):
    with Engine(model, n_ctx=64, n_threads=2, n_batch=8) as llm:
        default = llm.eval_all_logits(TOKENS)
    assert (default == logits(model, "f16")).all()
    args, w, types = rf.load_weights(model)
    f16_pair = rf.forward(args, w, TOKENS, types, kv_types=(int(T.F16), int(T.F16)))
    assert (f16_pair == rf.forward(args, w, TOKENS, types)).all()


@pytest.mark.parametrize("tk,tv", [("q8_0", "q4_0"), ("f16", "q5_1"), ("q4_1", "f16"), ("iq4_nl", "bf16")])
def test_mixed_k_and_v_types(model, tk, tv):
    got = logits(model, tk, tv)
    args, w, types = rf.load_weights(model)
    want = rf.forward(args, w, TOKENS, types, kv_types=(KV_CACHE_TYPES[tk], KV_CACHE_TYPES[tv]))
    assert rel_err(got, want) < 5e-3


@pytest.mark.parametrize("t", ["q8_0", "q4_0", "q5_1", "f32"])
def test_batch_equals_single_steps(model, t):
    batch = logits(model, t, n_batch=7)
    with Engine(model, n_ctx=64, n_threads=2, n_batch=7, load=LoadOptions(type_k=t, type_v=t)) as llm:
        single = np.stack([llm.eval([tok]) for tok in TOKENS])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-4 * np.abs(batch).max())


@pytest.mark.parametrize("t", ["q8_0", "q4_0", "bf16"])
def test_context_shift_on_a_quantized_cache(tmp_path, t):
    """One layer: after a shift the cache must hold what a fresh evaluation of the kept tokens at their
    new positions holds, up to one more rounding of the re-rotated keys."""
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_layer=1, n_vocab=128, n_embd=128, n_head=4,
                           n_head_kv=2, n_ff=160)
    with Engine(p, n_ctx=16, load=LoadOptions(type_k=t, type_v=t)) as llm:
        shifted, fresh = shift_then_fresh(llm)
        llm.kv_clear()
        llm.eval(TOKENS[:12])
        unshifted = llm.eval([33])   # what a shift that forgot to re-rotate would be near
    tol = {"q8_0": 1e-2, "bf16": 1e-2}.get(t, 5e-2)
    np.testing.assert_allclose(shifted, fresh, atol=tol * np.abs(fresh).max())
    assert rel_err(unshifted, fresh) > rel_err(shifted, fresh)


def test_kv_copy_on_a_quantized_cache(model):
    with Engine(model, n_ctx=64, n_threads=2, n_seq_max=2, load=LoadOptions(type_k="q4_0", type_v="q8_0")) as llm:
        llm.eval(TOKENS[:10], seq_id=0)
        llm.kv_copy(0, 1)
        a = llm.eval([50], seq_id=0)
        b = llm.eval([50], seq_id=1)
    assert (a == b).all()


def test_cache_size_shrinks_by_the_type_ratio(model):
    sizes = {}
    for t in TYPES:
        with Engine(model, n_ctx=64, n_threads=1, n_batch=4, load=LoadOptions(type_k=t, type_v=t)) as llm:
            sizes[t] = llm.kv_bytes()
            assert f"K ({t})" in llm.kv_line()
    # bytes per 32 values: f32 128, f16/bf16 64, q8_0 34, q5_1 24, q5_0 22, q4_1 20, q4_0/iq4_nl 18
    per32 = {"f32": 128, "f16": 64, "bf16": 64, "q8_0": 34, "q5_1": 24, "q5_0": 22, "q4_1": 20, "q4_0": 18,
             "iq4_nl": 18}
    for t, n in per32.items():
        assert sizes[t] * 64 == sizes["f16"] * n, t


def test_type_names_and_ids():
    assert kv_cache_type("Q8_0") == 8 and kv_cache_type(2) == 2 and kv_cache_type("iq4_nl") == 20
    for bad in ("q9", "q4_k", 12, -1, "", True):
        with pytest.raises(LlamapyError, match="cache type"):
            kv_cache_type(bad)


def test_head_size_not_a_multiple_of_the_block(tmp_path):
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_vocab=128)   # head_dim 16
    with pytest.raises(LlamapyError, match="multiple of its block size 32"):
        Engine(p, n_ctx=16, load=LoadOptions(type_k="q8_0"))
    with Engine(p, n_ctx=16, load=LoadOptions(type_k="f32", type_v="bf16")) as llm:
        assert np.isfinite(llm.eval(TOKENS[:4])).all()


@pytest.mark.parametrize("verb,flag", [("run", "-ctk"), ("run", "-ctv"), ("run", "--cache-type-k"),
                                       ("perplexity", "-ctv"), ("chat", "-ctk")])
def test_bad_type_name_is_one_line(capsys, tmp_path, verb, flag):
    text = tmp_path / "t.txt"
    text.write_text("hello " * 50)
    extra = {"run": ["-p", "hi", "-n", "1"], "perplexity": ["-f", str(text), "-c", "16"], "chat": []}[verb]
    code, _, err = cli(capsys, verb, *extra, flag, "q3_0")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cache type 'q3_0'" in lines[0], err


def test_bench_bad_type_is_one_line(capsys):
    code, _, err = cli(capsys, "bench", "-p", "0", "-n", "1", "-r", "1", "-ctk", "f16,bogus")
    assert code == 1 and len(err.strip().splitlines()) == 1, err


def test_bench_type_columns(capsys):
    code, out, _ = cli(capsys, "bench", "-p", "0", "-n", "2", "-r", "1", "-ctk", "f16,q8_0", "-ctv", "q4_0")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert "type_k" in rows[0] and "type_v" in rows[0]
    assert [r.split("|")[6:8] for r in rows[2:]] == [["    f16 ", "   q4_0 "], ["   q8_0 ", "   q4_0 "]]


def test_api_takes_ids_and_names():
    from llamapy import Llama
    from llamapy.store.locate import resolve_model

    model = resolve_model(None)   # the API needs a tokenizer: the default model
    with Llama(model_path=model, n_ctx=64, type_k=8, type_v="q4_0", verbose=False) as llm:
        assert (llm._eng.type_k, llm._eng.type_v) == (8, 2)
    with pytest.raises(ValueError, match="cache type"):
        Llama(model_path=model, n_ctx=64, type_k=99, verbose=False)
