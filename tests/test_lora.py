"""LoRA adapters applied at run time (--lora): the engine adds scale * B (A x) beside each adapted weight's
product, so the logits equal the merged model's (W + scale * alpha / rank * B @ A, merged in numpy here),
a quantized base stays quantized, adapters stack and switch scales without reloading, and a bad adapter is
refused in one line naming the tensor.

Tolerances (largest |difference| / largest |logit|): against the numpy forward pass of the merged F32
model 1e-4 (measured: up to 4e-5); against the engine running the merged file 1e-3 (the engine rounds K, V
and the attention probabilities to F16, where a last-bit difference in summation order can flip a rounding
and move the logits: measured up to 2e-4 on these models, the merged file's side drifting from its oracle,
not the adapter's); against the numpy oracle with the same pairs on a quantized base 1e-4 for F32/Q8_0
bases and 5e-3 for Q4_1 (test_engine.py's tolerances for the base types).
"""
from __future__ import annotations

import numpy as np
import pytest
from cliutil import cli
from gguf.constants import GGMLQuantizationType as T
from lorautil import TARGETS, lora_terms, write_lora, write_merged
from test_engine_models import write_random_llama

from llamapy.engine import reference as rf
from llamapy.engine.engine import Engine
from llamapy.engine.load import LoadOptions
from llamapy.errors import LlamapyError

TOKENS = [1, 5, 7, 9, 11, 3, 2, 8, 40, 41, 50, 60]
ALPHA, RANK = 8.0, 4
TOL_MERGED = 1e-4         # against the oracle's forward pass of the merged model
TOL_MERGED_ENGINE = 1e-3  # against the engine running the merged file
TOL_ORACLE = {T.F32: 1e-4, T.Q8_0: 1e-4, T.Q4_1: 5e-3}


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def merged_oracle(path: str) -> np.ndarray:
    args, w, types = rf.load_weights(path)
    return rf.forward(args, w, TOKENS, types)


def logits(model: str, lora=(), n_batch: int = 8, threads: int = 2, init_without_apply: bool = False,
           scales=None, steps: bool = False) -> np.ndarray:
    load = LoadOptions(lora=list(lora), lora_init_without_apply=init_without_apply)
    with Engine(model, n_ctx=64, n_threads=threads, n_batch=n_batch, load=load) as llm:
        if scales is not None:
            llm.set_lora_scales(scales)
        if steps:
            return np.stack([llm.eval([t]) for t in TOKENS])
        return llm.eval_all_logits(TOKENS)


# a byte-level vocabulary, so that `llamapy run` can tokenize text for the random model
VOCAB = {"tokenizer.ggml.model": "llama",
         "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(125)],
         "tokenizer.ggml.scores": [0.0] * 128, "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 125,
         "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("lora") / "base.gguf", wtype=T.F32, n_vocab=128, tied=False,
                              extra_kv=VOCAB)


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("lora") / "a.gguf", base, rank=RANK, alpha=ALPHA)


@pytest.mark.parametrize("scale", [1.0, 0.5, -2.0])
def test_lora_gives_the_merged_models_logits(base, adapter, tmp_path, scale):
    path, pairs = adapter
    merged = write_merged(tmp_path / "merged.gguf", base, [(pairs, scale * ALPHA / RANK)])
    want = merged_oracle(merged)
    got = logits(base, [(path, scale)])
    assert rel_err(got, want) < TOL_MERGED
    assert rel_err(got, logits(merged)) < TOL_MERGED_ENGINE
    assert rel_err(logits(base), want) > 100 * TOL_MERGED_ENGINE  # the adapter does change the model


def test_single_steps_and_one_thread_agree(base, adapter, tmp_path):
    """Decode steps (each thread its own activations) and batches (shared ones) add the same products."""
    path, pairs = adapter
    want = merged_oracle(write_merged(tmp_path / "merged.gguf", base, [(pairs, ALPHA / RANK)]))
    assert rel_err(logits(base, [(path, 1.0)], steps=True), want) < TOL_MERGED
    assert rel_err(logits(base, [(path, 1.0)], threads=1, n_batch=3), want) < TOL_MERGED


def test_output_and_attention_only_adapters(base, tmp_path):
    """An adapter on a subset of the weights (the output projection included) adapts only those."""
    path, pairs = write_lora(tmp_path / "o.gguf", base, targets=("attn_q", "attn_v", "output"), seed=5)
    assert "output.weight" in pairs and not any("ffn" in n for n in pairs)
    want = merged_oracle(write_merged(tmp_path / "merged.gguf", base, [(pairs, ALPHA / RANK)]))
    assert rel_err(logits(base, [(path, 1.0)]), want) < TOL_MERGED


def test_alpha_zero_means_the_users_scale_alone(base, tmp_path):
    path, pairs = write_lora(tmp_path / "z.gguf", base, alpha=0.0, seed=3)
    want = merged_oracle(write_merged(tmp_path / "merged.gguf", base, [(pairs, 0.7)]))
    assert rel_err(logits(base, [(path, 0.7)]), want) < TOL_MERGED


def test_scale_zero_is_no_adapter(base, adapter):
    path, _ = adapter
    none = logits(base)
    assert np.array_equal(logits(base, [(path, 0.0)]), none)
    assert np.array_equal(logits(base, [(path, 1.0)], init_without_apply=True), none)
    assert np.array_equal(logits(base, [(path, 1.0)], scales=[0.0]), none)


def test_two_adapters_and_switching_scales(base, adapter, tmp_path):
    path, pairs = adapter
    path2, pairs2 = write_lora(tmp_path / "b.gguf", base, rank=8, alpha=4.0, seed=9, targets=("attn_k", "ffn_up"))
    both = merged_oracle(write_merged(tmp_path / "both.gguf", base,
                                      [(pairs, 0.5 * ALPHA / RANK), (pairs2, 2.0 * 4.0 / 8)]))
    assert rel_err(logits(base, [(path, 0.5), (path2, 2.0)]), both) < TOL_MERGED
    # the scales change between steps of one engine, nothing reloaded
    only2 = merged_oracle(write_merged(tmp_path / "only2.gguf", base, [(pairs2, 1.0 * 4.0 / 8)]))
    load = LoadOptions(lora=[(path, 0.5), (path2, 2.0)])
    with Engine(base, n_ctx=64, n_threads=2, n_batch=8, load=load) as llm:
        assert llm.lora_scales() == [0.5, 2.0]
        llm.set_lora_scales([0.0, 1.0])
        assert rel_err(llm.eval_all_logits(TOKENS), only2) < TOL_MERGED
        llm.kv_clear()
        llm.set_lora_scales([0.5, 2.0])
        assert rel_err(llm.eval_all_logits(TOKENS), both) < TOL_MERGED
        with pytest.raises(LlamapyError, match="2 adapters"):
            llm.set_lora_scales([1.0])


@pytest.mark.parametrize("btype", [T.F32, T.Q8_0, T.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("atype", [T.F32, T.F16, T.Q8_0], ids=lambda t: "adapter_" + t.name)
def test_quantized_base_against_the_oracle(tmp_path, btype, atype):
    """A quantized base stays quantized: its product as without adapter, the pairs' product beside it."""
    model = write_random_llama(tmp_path / "q.gguf", wtype=btype, n_vocab=128, seed=2)
    path, pairs = write_lora(tmp_path / "a.gguf", model, rank=8 if atype != T.Q8_0 else 32, alpha=ALPHA,
                             ttype=atype, seed=4, b_std=1.0 if btype == T.Q4_1 else 0.3)
    rank = next(iter(pairs.values()))[0].shape[0]
    args, w, types = rf.load_weights(model)
    want = rf.forward(args, w, TOKENS, types, lora=lora_terms(pairs, 0.8, ALPHA, rank))
    got = logits(model, [(path, 0.8)])
    tol = TOL_ORACLE[btype]
    err = rel_err(got, want)
    assert err < tol
    assert err < rel_err(logits(model), want) / 10  # well below what the adapter changes
    assert rel_err(logits(model, [(path, 0.8)], steps=True), want) < tol


def test_every_target_of_the_default_layout(base, adapter):
    _, pairs = adapter
    assert {n.split(".")[2] for n in pairs} == set(TARGETS)


# ---- bad adapters: one line naming the tensor ------------------------------------------------------

def _refused(base, path, match) -> str:
    with pytest.raises(LlamapyError, match=match) as ei:
        logits(base, [(str(path), 1.0)])
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_another_architecture(base, tmp_path):
    path, _ = write_lora(tmp_path / "x.gguf", base, arch="qwen2")
    _refused(base, path, "architecture 'qwen2' does not match the model's 'llama'")


def test_wrong_shape(base, tmp_path):
    f32 = int(T.F32)
    a = {"blk.1.ffn_down.weight.lora_a": ((64, RANK), f32, np.zeros((RANK, 64), np.float32))}
    path, _ = write_lora(tmp_path / "x.gguf", base, extra=a)
    _refused(base, path, r"tensor 'blk\.1\.ffn_down\.weight' has incorrect shape")
    b = {"blk.0.attn_q.weight.lora_b": ((RANK + 1, 64), f32, np.zeros((64, RANK + 1), np.float32))}
    path, _ = write_lora(tmp_path / "y.gguf", base, extra=b)
    _refused(base, path, r"tensor 'blk\.0\.attn_q\.weight'.*disagree on the rank")


def test_missing_half_of_a_pair(base, tmp_path):
    path, _ = write_lora(tmp_path / "x.gguf", base, drop=("blk.0.attn_v.weight.lora_b",))
    _refused(base, path, r"pair for 'blk\.0\.attn_v\.weight' is missing its lora_b")


def test_tensor_the_base_does_not_have(base, tmp_path):
    extra = {"blk.7.attn_q.weight.lora_a": ((64, RANK), int(T.F32), np.zeros((RANK, 64), np.float32)),
             "blk.7.attn_q.weight.lora_b": ((RANK, 64), int(T.F32), np.zeros((64, RANK), np.float32))}
    path, _ = write_lora(tmp_path / "x.gguf", base, extra=extra)
    _refused(base, path, r"tensor 'blk\.7\.attn_q\.weight' does not exist in the model")


def test_not_an_adapter_and_odd_tensors(base, tmp_path):
    _refused(base, base, "not an adapter: general.type is missing")
    path, _ = write_lora(tmp_path / "m.gguf", base, general_type="model")
    _refused(base, path, "general.type is 'model'")
    extra = {"blk.0.attn_q.weight.delta": ((64,), int(T.F32), np.zeros(64, np.float32))}
    path, _ = write_lora(tmp_path / "s.gguf", base, extra=extra)
    _refused(base, path, r"tensor 'blk\.0\.attn_q\.weight\.delta' has an unexpected suffix")
    norm = {"blk.0.attn_norm.weight": ((64,), int(T.F32), np.ones(64, np.float32))}
    path, _ = write_lora(tmp_path / "n.gguf", base, extra=norm)  # norms are skipped, as the reference does
    logits(base, [(path, 1.0)])
    _refused(base, tmp_path / "absent.gguf", "no such file")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00junk")
    _refused(base, tmp_path / "junk.gguf", "LoRA adapter .*junk.gguf")


# ---- the command line -------------------------------------------------------------------------------

def test_run_with_lora(capsys, base, adapter, tmp_path):
    path, pairs = adapter
    merged = write_merged(tmp_path / "merged.gguf", base, [(pairs, 0.5 * ALPHA / RANK)])
    common = ["-p", "hello", "-n", "8", "--temp", "0", "--no-warmup", "-c", "64"]
    code, want, err = cli(capsys, "run", "-m", merged, *common)
    assert code == 0, err
    code, got, err = cli(capsys, "run", "-m", base, "--lora-scaled", path, "0.5", *common)
    assert code == 0, err
    assert got == want
    code, plain, _ = cli(capsys, "run", "-m", base, *common)
    code, off, err = cli(capsys, "run", "-m", base, "--lora-scaled", path, "0", "--lora-scaled", path, "0", *common)
    assert code == 0, err
    assert off == plain


@pytest.mark.parametrize("args, match", [
    (["--lora-scaled", "{good}", "abc"], "the scale must be a number"),
    (["--lora", "{bad}"], r"pair for 'blk\.0\.attn_v\.weight' is missing its lora_b"),
    (["--lora", "{missing}"], "no such file"),
])
def test_run_refuses_bad_adapters(capsys, base, adapter, tmp_path, args, match):
    import re

    bad, _ = write_lora(tmp_path / "bad.gguf", base, drop=("blk.0.attn_v.weight.lora_b",))
    paths = {"good": adapter[0], "bad": bad, "missing": str(tmp_path / "nope.gguf")}
    code, out, err = cli(capsys, "run", "-m", base, "-p", "hi", "-n", "1", "--no-warmup",
                         *[a.format(**paths) for a in args])
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert re.search(match, lines[-1]), err
    assert "Traceback" not in err


@pytest.mark.parametrize("atype", [T.F32, T.F16], ids=lambda t: t.name)
def test_scalar_kernels_agree_and_odd_row_counts(tmp_path, atype):
    """The SIMD LoRA kernels against their scalar references, on an output of 100 rows (blocks of 8 rows
    with a partial last one) adapted too."""
    from llamapy.native import kernels_best, lib, set_kernels

    model = write_random_llama(tmp_path / "m.gguf", wtype=T.F32, n_vocab=100, tied=False, seed=6)
    path, pairs = write_lora(tmp_path / "a.gguf", model, ttype=atype, targets=(*TARGETS, "output"), rank=5)
    args, w, types = rf.load_weights(model)
    want = rf.forward(args, w, TOKENS, types, lora=lora_terms(pairs, 1.5, ALPHA, 5))
    fast = logits(model, [(path, 1.5)])
    assert rel_err(fast, want) < TOL_MERGED
    if kernels_best() == "scalar":
        return
    level = lib.lp_kernels_active()
    try:
        set_kernels("scalar")
        slow = logits(model, [(path, 1.5)])
    finally:
        lib.lp_kernels_set(level)
    assert rel_err(slow, want) < TOL_MERGED
    assert rel_err(fast, slow) < TOL_MERGED


# ---- the Python API (llama-cpp-python's lora_path / lora_scale / lora_base) ------------------------------

def test_python_api_lora_path(base, adapter, tmp_path):
    from llamapy import Llama

    path, pairs = adapter
    want = merged_oracle(write_merged(tmp_path / "merged.gguf", base, [(pairs, 0.5 * ALPHA / RANK)]))
    with Llama(model_path=base, n_ctx=64, lora_path=path, lora_scale=0.5, lora_base=base, logits_all=True,
               verbose=False) as llm:
        llm.eval(TOKENS)
        assert rel_err(np.asarray(llm.scores[:len(TOKENS)]), want) < TOL_MERGED
    bad, _ = write_lora(tmp_path / "bad.gguf", base, arch="qwen2")
    with pytest.raises(RuntimeError, match="Failed to initialize LoRA adapter from lora path: .*architecture"):
        Llama(model_path=base, n_ctx=64, lora_path=bad, verbose=False)
    with pytest.raises(TypeError, match="lora_scale"):
        Llama(model_path=base, n_ctx=64, lora_path=path, lora_scale="1", verbose=False)
    with pytest.raises(ValueError, match="lora_scale"):
        Llama(model_path=base, n_ctx=64, lora_path=path, lora_scale=float("inf"), verbose=False)


# ---- the Modelfile's ADAPTER ------------------------------------------------------------------------------

def test_modelfile_adapter_is_stored_and_applied(base, adapter, tmp_path, monkeypatch):
    from llamapy.chat.ollama_repl import OllamaChat
    from llamapy.store.modelfile import parse
    from llamapy.store.models import create_model, model_settings, render_modelfile

    monkeypatch.setenv("LLAMAPY_MODELS", str(tmp_path / "models"))
    path, pairs = adapter
    create_model("tuned", parse(f"FROM {base}\nADAPTER {path}\nPARAMETER temperature 0\n", str(tmp_path)))
    s = model_settings("tuned")
    assert len(s.adapters) == 1 and open(s.adapters[0], "rb").read() == open(path, "rb").read()
    assert f"ADAPTER {s.adapters[0]}\n" in render_modelfile(s)
    create_model("derived", parse("FROM tuned\nSYSTEM be brief\n", str(tmp_path)))  # a stored model's adapters stay
    assert model_settings("derived").adapters == s.adapters
    chat = OllamaChat(s)
    try:
        got = chat.engine().eval_all_logits(TOKENS)
    finally:
        chat.close()
    assert rel_err(got, merged_oracle(write_merged(tmp_path / "m.gguf", base, [(pairs, ALPHA / RANK)]))) < TOL_MERGED
    other = write_random_llama(tmp_path / "other.gguf", wtype=T.F32, n_vocab=128, n_embd=32, n_head=2, n_head_kv=1)
    with pytest.raises(LlamapyError, match=r"ADAPTER: LoRA adapter .*: tensor 'blk\.\d\.\w+\.weight' has incorrect"):
        create_model("bad", parse(f"FROM {other}\nADAPTER {path}\n", str(tmp_path)))


def test_perplexity_and_chat_take_lora(capsys, base, adapter, tmp_path):
    import re

    path, _ = adapter
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)

    def ppl(*extra: str) -> str:
        code, out, err = cli(capsys, "perplexity", "-m", base, "-f", str(text), "-c", "32", "-b", "32", *extra)
        assert code == 0, err
        return re.findall(r"Final estimate: PPL = ([0-9.]+)", out + err)[0]

    plain = ppl()
    assert ppl("--lora-scaled", path, "0") == plain
    assert ppl("--lora", path) != plain
    code, out, err = cli(capsys, "chat", "-m", base, "--lora", str(tmp_path / "nope.gguf"), "-c", "64")
    assert code == 1 and "no such file" in err.strip().splitlines()[-1]


def test_tied_output_is_not_a_tensor_of_the_model(tmp_path):
    """A model that ties its output to the token embeddings has no output.weight to adapt (as the reference)."""
    tied = write_random_llama(tmp_path / "tied.gguf", wtype=T.F32, n_vocab=128, tied=True)
    f32 = int(T.F32)
    extra = {"output.weight.lora_a": ((64, RANK), f32, np.zeros((RANK, 64), np.float32)),
             "output.weight.lora_b": ((RANK, 128), f32, np.zeros((128, RANK), np.float32))}
    path, _ = write_lora(tmp_path / "o.gguf", tied, targets=("attn_q",), extra=extra)
    _refused(tied, path, r"tensor 'output\.weight' does not exist in the model")


def test_fused_tensors_phi3(tmp_path):
    """Phi-3 keeps q, k, v in one tensor (attn_qkv) and gate, up in another (ffn_up): each slot gets its rows
    of B."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_arch import _build

    model, _ = _build((torch, transformers), tmp_path, "phi3")
    path, pairs = write_lora(tmp_path / "a.gguf", model, targets=("attn_qkv", "attn_output", "ffn_up", "ffn_down"),
                             arch="phi3")
    assert any(".attn_qkv." in n for n in pairs) and any(".ffn_up." in n for n in pairs)
    want = merged_oracle(write_merged(tmp_path / "merged.gguf", model, [(pairs, 0.5 * ALPHA / RANK)]))
    assert rel_err(logits(model, [(path, 0.5)]), want) < TOL_MERGED
    assert rel_err(logits(model, [(path, 0.5)], steps=True), want) < TOL_MERGED
