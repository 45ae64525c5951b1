"""The Python API's saved states: save_state/load_state carry the KV cache itself, and the prompt caches."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama


@pytest.fixture(scope="module")
def llm(default_model):
    from llamapy import Llama

    with Llama(default_model, n_ctx=256, n_threads=2, verbose=False) as m:
        yield m


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, llm):
    """A state saved from a tiny random model (no tokenizer, so through the engine), in the API's shape."""
    from llamapy import LlamaState
    from llamapy.engine import state
    from llamapy.engine.engine import Engine

    path = write_random_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", wtype=T.F32, n_vocab=128)
    with Engine(str(path), n_ctx=64, n_threads=1) as e:
        e.eval([1, 2, 3], 0)
        data = state.encode(e, 0)
    return LlamaState(np.asarray([1, 2, 3], dtype=np.intc), np.zeros((1, llm.n_vocab()), dtype=np.single), 3,
                      data, len(data))


def _eval_seconds(llm) -> float:
    from llamapy.native import lib

    return float(lib.lp_engine_eval_seconds(llm._eng._engine))


def test_round_trip_restores_the_kv_cache_without_evaluating(llm):
    llm.reset()
    out = llm("The quick brown fox", max_tokens=6, temperature=0)["choices"][0]["text"]
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens > 0 and state.llama_state_size == len(state.llama_state) > 1000
    nxt = llm.tokenize(b" and then", add_bos=False)
    llm.eval(nxt)
    expected = llm.scores[-1].copy()
    llm.reset()
    llm.eval(llm.tokenize(b"Something else entirely, and longer than the first"))
    before = _eval_seconds(llm)
    llm.load_state(pickle.loads(pickle.dumps(state)))  # a state survives pickling, as llama-cpp-python's does
    assert _eval_seconds(llm) == before  # nothing evaluated: the KV cache came from the state
    assert list(llm.input_ids) == list(state.input_ids)
    np.testing.assert_array_equal(llm.scores[-1], state.scores[-1])
    llm.eval(nxt)
    np.testing.assert_array_equal(llm.scores[-1], expected)
    # a completion of the same prompt over the restored state reuses it and says the same
    llm.load_state(state)
    assert llm("The quick brown fox", max_tokens=6, temperature=0)["choices"][0]["text"] == out


def test_a_state_of_another_model_or_a_damaged_one_is_refused(llm, foreign):
    llm.reset()
    llm.eval(llm.tokenize(b"Hello there"))
    with pytest.raises(ValueError, match="another model"):
        llm.load_state(foreign)
    assert llm.n_tokens == 0  # left empty, not half-loaded
    llm.eval(llm.tokenize(b"Hello there"))
    good = llm.save_state()
    for mutate, words in (
        (lambda s: setattr(s, "llama_state", s.llama_state[:-7]), "cut short"),
        (lambda s: setattr(s, "llama_state", b"junk" * 30), "bad magic"),
        (lambda s: setattr(s, "input_ids", np.asarray(list(s.input_ids[:-1]) + [5], dtype=np.intc)), "do not match"),
        (lambda s: setattr(s, "scores", np.zeros((1, 7), dtype=np.single)), "state.scores"),
    ):
        bad = pickle.loads(pickle.dumps(good))
        mutate(bad)
        with pytest.raises(ValueError, match=words):
            llm.load_state(bad)
    with pytest.raises(TypeError):
        llm.load_state("not a state")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_prompt_cache_reuses_the_longest_prefix(llm, kind, tmp_path):
    from llamapy import LlamaDiskCache, LlamaRAMCache

    cache = LlamaRAMCache(capacity_bytes=64 << 20) if kind == "ram" else LlamaDiskCache(str(tmp_path / "c"))
    llm.set_cache(cache)
    try:
        llm.reset()
        first = llm("The capital of France is", max_tokens=4, temperature=0)["choices"][0]["text"]
        assert llm.tokenize(b"The capital of France is a city") in cache
        key = llm.input_ids.tolist()
        llm.reset()  # the context forgets; the cache still has the state
        state = cache[llm.tokenize(b"The capital of France is")]
        assert state.input_ids.tolist() == key and len(state.llama_state) > 0
        cache[key] = state
        llm.reset()
        again = llm("The capital of France is", max_tokens=4, temperature=0)
        assert again["choices"][0]["text"] == first
        if kind == "disk":  # a new cache object over the same folder finds the saved states
            assert llm.tokenize(b"The capital of France is") in LlamaDiskCache(str(tmp_path / "c"))
    finally:
        llm.set_cache(None)
