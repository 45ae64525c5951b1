"""The C engine against the numpy oracle (llamapy.engine.reference) on tiny random models, and the
engine's own invariants: batches = single steps, sequences independent, KV cache edits, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama

from llamapy.engine import reference as rf
from llamapy.engine.engine import Engine
from llamapy.errors import LlamapyError
from llamapy.native import kernels_best, lib, set_kernels

TOKENS = [1, 5, 7, 9, 11, 3, 2, 8, 40, 41, 50, 60, 70, 80, 90, 95, 100, 120, 3, 4]
K_QUANTS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)

# Largest |engine - oracle| / max|oracle logit| allowed. The oracle rounds activations as the engine's
# quantizers do, so what is left is summation order, except: Q4_1/Q5_1 (the engine's dot uses the
# activations' fp16 block sum, which the oracle doesn't model), F16 (fp16 products summed in float) and
# BF16 (bf16-rounded activations amplify tiny differences).
TOLERANCE = {T.F32: 1e-5, T.F16: 5e-4, T.BF16: 5e-3, T.Q4_1: 5e-3, T.Q5_1: 5e-3}
DEFAULT_TOLERANCE = 1e-4


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("m") / "f32.gguf", wtype=T.F32, n_vocab=128)


@pytest.mark.parametrize("wtype", [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, *K_QUANTS],
                         ids=lambda t: t.name)
def test_logits_match_oracle(tmp_path, wtype):
    if not lib.lp_type_supported(int(wtype)):
        pytest.skip(f"no kernels for {wtype.name} in this build")
    k = wtype in K_QUANTS  # rows of 256
    p = write_random_llama(tmp_path / "m.gguf", wtype=wtype, n_vocab=128, n_embd=256 if k else 64,
                           n_ff=512 if k else 96)
    with Engine(p, n_ctx=64, n_threads=2, n_batch=8) as llm:
        got = llm.eval_all_logits(TOKENS)
    args, w, types = rf.load_weights(p)
    want = rf.forward(args, w, TOKENS, types)
    assert rel_err(got, want) < TOLERANCE.get(wtype, DEFAULT_TOLERANCE)


@pytest.mark.parametrize("kwargs", [
    dict(biases=True), dict(rope_freqs=True), dict(tied=False),
    dict(rope_scaling=("linear", 4.0)), dict(rope_scaling=("yarn", 4.0)),
    dict(n_head=8, n_head_kv=1), dict(n_head=4, n_head_kv=4), dict(rope_freq_base=500000.0),
], ids=["biases", "rope_freqs", "untied", "linear", "yarn", "mqa", "mha", "freq_base"])
def test_model_variants_match_oracle(tmp_path, kwargs):
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_vocab=128, **kwargs)
    with Engine(p, n_ctx=64, n_threads=2) as llm:
        got = llm.eval_all_logits(TOKENS)
    args, w, types = rf.load_weights(p)
    ext = 1.0 if kwargs.get("rope_scaling", ("",))[0] == "yarn" else 0.0
    want = rf.forward(args, w, TOKENS, types, yarn_ext_factor=ext)
    # the oracle's angles are computed in double, the engine's in float (as the reference)
    assert rel_err(got, want) < 2e-4


def test_oracle_notices_a_wrong_model(tmp_path):
    """The tolerance means something: a different rope base is far outside it."""
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_vocab=128)
    args, w, types = rf.load_weights(p)
    want = rf.forward(args, w, TOKENS, types)
    args.rope_freq_base = 20000.0
    assert rel_err(rf.forward(args, w, TOKENS, types), want) > 1e-3


def test_batch_equals_single_steps(f32_model):
    with Engine(f32_model, n_ctx=64, n_threads=2, n_batch=7) as llm:
        batch = llm.eval_all_logits(TOKENS)
        llm.kv_clear()
        single = np.stack([llm.eval([t]) for t in TOKENS])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-5 * np.abs(batch).max())


@pytest.mark.parametrize("wtype", [T.Q4_1, T.Q4_0, T.Q4_K], ids=lambda t: t.name)
def test_quantized_batch_equals_single_steps(tmp_path, wtype):
    """Prompt tiles and single-column kernels (Q4_0: repacked rows; K-quants: multi-row dots) agree."""
    k = wtype == T.Q4_K
    p = write_random_llama(tmp_path / "m.gguf", wtype=wtype, embd_type=T.Q8_0, n_vocab=128,
                           n_embd=256 if k else 64, n_ff=512 if k else 96)
    with Engine(p, n_ctx=64, n_threads=2, n_batch=64) as llm:
        batch = llm.eval_all_logits(TOKENS)
        llm.kv_clear()
        single = np.stack([llm.eval([t]) for t in TOKENS])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-4 * np.abs(batch).max())


def test_threads_do_not_change_results(f32_model):
    outs = []
    for n in (1, 2, 3):
        with Engine(f32_model, n_ctx=64, n_threads=n) as llm:
            assert llm.n_threads == n
            outs.append(llm.eval_all_logits(TOKENS))
    assert all((o == outs[0]).all() for o in outs)


def test_scalar_kernels_agree(tmp_path):
    if kernels_best() == "scalar":
        pytest.skip("only scalar kernels on this CPU")
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.Q4_0, embd_type=T.Q8_0, n_vocab=128)
    with Engine(p, n_ctx=64) as llm:
        fast = llm.eval_all_logits(TOKENS)
    level = lib.lp_kernels_active()
    try:
        set_kernels("scalar")
        with Engine(p, n_ctx=64) as llm:
            slow = llm.eval_all_logits(TOKENS)
    finally:
        lib.lp_kernels_set(level)
    assert rel_err(fast, slow) < 1e-3


def test_engine_keeps_its_kernels_across_a_switch(tmp_path):
    """An engine runs the kernels active when it was created: lp_kernels_set changes only later engines."""
    if kernels_best() == "scalar":
        pytest.skip("only scalar kernels on this CPU")
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.Q2_K, n_vocab=128, n_embd=256, n_ff=512)
    level = lib.lp_kernels_active()
    with Engine(p, n_ctx=64, n_batch=8) as llm:
        before = llm.eval_all_logits(TOKENS)
        try:
            set_kernels("scalar")
            llm.kv_clear()
            after = llm.eval_all_logits(TOKENS)
        finally:
            lib.lp_kernels_set(level)
    assert (after == before).all()


def test_sequences_are_independent(f32_model):
    a, b = TOKENS[:9], TOKENS[5:17]
    with Engine(f32_model, n_ctx=32, n_seq_max=3, n_batch=8) as llm:
        alone_a = llm.eval(a)
        llm.kv_clear()
        alone_b = llm.eval(b, seq_id=1)
        llm.kv_clear()
        llm.eval(a[:4], seq_id=2)  # a sequence at another position in the same batches
        both = llm.eval_batch([(0, a), (1, b), (2, a[4:6])])
        assert [llm.n_past(s) for s in range(3)] == [9, 12, 6]
        assert llm.tokens(2) == a[:6]
    np.testing.assert_allclose(both[0], alone_a, atol=1e-5 * np.abs(alone_a).max())
    np.testing.assert_allclose(both[1], alone_b, atol=1e-5 * np.abs(alone_b).max())


def test_eval_batch_first_output(f32_model):
    with Engine(f32_model, n_ctx=32, n_seq_max=2, n_batch=5) as llm:
        all_a = llm.eval_all_logits(TOKENS[:10])
        llm.kv_clear()
        outs = llm.eval_batch([(1, TOKENS[10:16]), (0, TOKENS[:10])], first_output=4)
    assert outs[0].shape == (2, llm.n_vocab) and outs[1].shape == (6, llm.n_vocab)
    np.testing.assert_allclose(outs[1], all_a[4:], atol=1e-5 * np.abs(all_a).max())


def test_prefix_truncate_and_copy(f32_model):
    with Engine(f32_model, n_ctx=32, n_seq_max=2) as llm:
        fresh = llm.eval(TOKENS[:6] + [99, 98])
        llm.kv_clear()
        llm.eval(TOKENS[:10])
        llm.kv_truncate(0, 6)
        assert llm.n_past(0) == 6 and llm.tokens(0) == TOKENS[:6]
        reused = llm.eval([99, 98])
        llm.kv_copy(0, 1)
        copied = llm.eval([97], seq_id=1)
        llm.kv_clear(0)
        again = llm.eval(TOKENS[:6] + [99, 98, 97])
    np.testing.assert_allclose(reused, fresh, atol=1e-5 * np.abs(fresh).max())
    np.testing.assert_allclose(copied, again, atol=1e-5 * np.abs(again).max())


def shift_then_fresh(llm) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate 12 tokens, drop tokens 2..6 by a context shift, evaluate one more: those logits, and the
    logits of a fresh evaluation of the kept tokens and that one (the cache is cleared for it)."""
    llm.eval(TOKENS[:12])
    llm.context_shift(0, 2, 5)
    assert llm.tokens(0) == TOKENS[:2] + TOKENS[7:12]
    shifted = llm.eval([33])
    llm.kv_clear()
    return shifted, llm.eval(TOKENS[:2] + TOKENS[7:12] + [33])


def test_context_shift_rerotates_keys(tmp_path):
    """With one layer a cached key depends on its token and position only, so after a shift the cache
    must equal a fresh evaluation of the kept tokens at their new positions."""
    p = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_layer=1, n_vocab=128)
    with Engine(p, n_ctx=16) as llm:
        shifted, fresh = shift_then_fresh(llm)
        with pytest.raises(LlamapyError):
            llm.context_shift(0, 5, 10)
    # keys pass through fp16 twice when shifted
    np.testing.assert_allclose(shifted, fresh, atol=2e-3 * np.abs(fresh).max())


def test_context_limit(f32_model):
    with Engine(f32_model, n_ctx=8) as llm:
        llm.eval(TOKENS[:8])
        with pytest.raises(LlamapyError, match="context size 8"):
            llm.eval([1])
        with pytest.raises(LlamapyError, match="outside the vocabulary"):
            llm.kv_clear() or llm.eval([128])
        with pytest.raises(LlamapyError, match="sequence 1 out of range"):
            llm.eval([1], seq_id=1)


def test_embed(f32_model):
    with Engine(f32_model, n_ctx=32, embeddings=True) as llm:
        llm.eval(TOKENS[:4])
        h = llm.hidden_states(TOKENS[:6])
        v = llm.embed(TOKENS[:6])
        assert llm.tokens(0) == TOKENS[:4]  # other sequences untouched
        after = llm.eval([5])
        llm.kv_clear()
        before = llm.eval(TOKENS[:4] + [5])
    args, w, types = rf.load_weights(f32_model)
    assert h.shape == (6, args.n_embd)
    mean = h.mean(axis=0)
    np.testing.assert_allclose(v, mean / np.linalg.norm(mean), atol=1e-6)
    assert abs(np.linalg.norm(v) - 1) < 1e-6
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max())


def _matmul_and_row_dots(wtype, n: int, nr: int, nc: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """lp_matmul of a random (nr, n) weight by nc random columns, and the same outputs from lp_vec_dot row by row."""
    from test_engine_models import random_tensor

    from llamapy.native import ffi

    rng = np.random.default_rng(seed)
    w = np.ascontiguousarray(random_tensor(rng, nr, n, wtype, 0.05))
    x = (rng.standard_normal((nc, n)) * np.where(rng.random((nc, n)) < 0.02, 50, 1)).astype(np.float32)
    out = np.zeros((nc, nr), np.float32)
    assert lib.lp_matmul(int(wtype), n, nr, nc, ffi.from_buffer(w), ffi.from_buffer("float[]", x),
                         ffi.from_buffer("float[]", out)) == 0
    vt = lib.lp_vec_dot_type(int(wtype))
    want = np.zeros_like(out)
    q = np.zeros(lib.lp_row_size(vt, n), np.uint8)
    s = ffi.new("float *")
    for c in range(nc):
        lib.lp_quantize_activations(vt, ffi.from_buffer("float[]", x[c]), ffi.from_buffer(q), n)
        for r in range(nr):
            assert lib.lp_vec_dot(int(wtype), n, ffi.from_buffer(w[r]), ffi.from_buffer(q), s) == 0
            want[c, r] = s[0]
    assert np.all(np.isfinite(want)) and np.abs(want).max() > 0
    return out, want


@pytest.mark.parametrize("wtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_fast_matmul_matches_row_kernels(wtype):
    """The engine's tiled matmul against the format's own dot product, every tile shape and edge."""
    out, want = _matmul_and_row_dots(wtype, 256, 11, 5, int(wtype))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("wtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_prompt_tiles_are_bitwise_the_decode_kernel(wtype):
    """Several columns at once give each column bitwise what it gets alone: prompts and generation sum in the
    same order. On the default model a one-ulp change in the prompt path alone moves perplexity by ~0.5%."""
    from test_engine_models import random_tensor

    from llamapy.native import ffi

    n, nr, nc = 576, 44, 9   # row blocks, 2x4 tiles, an odd column group and the 4x1 edge
    rng = np.random.default_rng(int(wtype))
    w = np.ascontiguousarray(random_tensor(rng, nr, n, wtype, 0.05))
    x = (rng.standard_normal((nc, n)) * np.where(rng.random((nc, n)) < 0.02, 50, 1)).astype(np.float32)
    many = np.zeros((nc, nr), np.float32)
    assert lib.lp_matmul(int(wtype), n, nr, nc, ffi.from_buffer(w), ffi.from_buffer("float[]", x),
                         ffi.from_buffer("float[]", many)) == 0
    for c in range(nc):
        one = np.zeros(nr, np.float32)
        assert lib.lp_matmul(int(wtype), n, nr, 1, ffi.from_buffer(w), ffi.from_buffer("float[]", x[c].copy()),
                             ffi.from_buffer("float[]", one)) == 0
        np.testing.assert_array_equal(many[c].view(np.uint32), one.view(np.uint32))


@pytest.mark.parametrize("wtype", K_QUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("nc", [1, 3, 6])
def test_kquant_matmul_is_the_row_dot(wtype, nc):
    """K-quant products (decode tiles for one column, multi-row dots for more) give bitwise each row's vec_dot."""
    out, want = _matmul_and_row_dots(wtype, 768, 13, nc, int(wtype) * 10 + nc)  # 3 blocks a row; tiles and a tail
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


# ---- bad models ------------------------------------------------------------------------------

def test_other_architecture(tmp_path):
    p = write_random_llama(tmp_path / "m.gguf", extra_kv={"general.architecture": "rwkv6"})
    with pytest.raises(LlamapyError, match="architecture 'rwkv6' is not supported"):
        Engine(p)


def test_missing_tensor(tmp_path):
    p = write_random_llama(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(LlamapyError, match="tensor 'blk.1.ffn_up.weight' is missing"):
        Engine(p)


def test_shape_that_does_not_fit(tmp_path):
    p = write_random_llama(tmp_path / "m.gguf", reshape={"blk.0.attn_k.weight": (64, 48)})
    with pytest.raises(LlamapyError, match=r"'blk.0.attn_k.weight' has shape \[64, 48\], expected \[64, 32\]"):
        Engine(p)


def test_inconsistent_heads(tmp_path):
    p = write_random_llama(tmp_path / "m.gguf", extra_kv={"llama.attention.head_count_kv": 3})
    with pytest.raises(LlamapyError, match="not a multiple of head_count_kv 3"):
        Engine(p)
