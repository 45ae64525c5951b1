"""Saved states of a quantized KV cache: save -> restore -> continue equals never stopping for q8_0 and q4_0
(the rows go to the file in the cache's own types, so the restored cache holds the same bytes), and a state
saved with other KV types is refused in one line that names both."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama

from llamapy.engine import state
from llamapy.engine.engine import Engine
from llamapy.engine.load import KV_CACHE_TYPES, LoadOptions
from llamapy.engine.state import HEADER, StateError

TYPES = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0")]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """head_dim 32: one block of a quantized type per head."""
    return write_random_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", wtype=T.F32, n_vocab=128, n_embd=128,
                              n_head=4, n_head_kv=2, n_ff=160)


def _engine(path, tk: str, tv: str, n_ctx: int = 96) -> Engine:
    return Engine(path, n_ctx=n_ctx, n_threads=2, n_seq_max=2, load=LoadOptions(type_k=tk, type_v=tv))


def _round_trip(e: Engine, tmp_path, n_prompt: int, vocab: int) -> None:
    rng = np.random.default_rng(3)
    prompt = [int(t) for t in rng.integers(1, vocab, n_prompt)]
    more = [int(t) for t in rng.integers(1, vocab, 6)]
    e.kv_clear()
    e.eval(prompt, 0)
    path = tmp_path / "s.lpstate"
    assert state.save_file(e, 0, path) == HEADER.size + 4 * len(prompt) + e.kv_state_size(len(prompt))
    straight = [e.eval([t], 0).copy() for t in more]
    e.kv_clear(1)
    e.eval(more[:2], 1)  # something else first: the restore replaces it
    assert state.load_file(e, 1, path) == prompt
    resumed = [e.eval([t], 1).copy() for t in more]
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    assert state.encode(e, 1, len(prompt)) == path.read_bytes()


@pytest.mark.parametrize("tk,tv", TYPES)
def test_quantized_cache_save_restore_continue_equals_never_stopping(tiny_path, tmp_path, tk, tv):
    with _engine(tiny_path, tk, tv) as e:
        assert e.kv_types == (KV_CACHE_TYPES[tk], KV_CACHE_TYPES[tv])
        _round_trip(e, tmp_path, 40, 128)


@pytest.mark.parametrize("t", ["q8_0", "q4_0"])
def test_quantized_cache_round_trip_on_the_default_model(default_model, tmp_path, t):
    with _engine(default_model, t, t, n_ctx=128) as e:
        _round_trip(e, tmp_path, 50, 5000)


def test_a_quantized_state_is_smaller_than_f16(tiny_path):
    sizes = {}
    for t in ("f16", "q8_0", "q4_0"):
        with _engine(tiny_path, t, t) as e:
            sizes[t] = e.kv_state_size(32)
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


@pytest.mark.parametrize("saved,loaded", [(("q8_0", "q8_0"), ("f16", "f16")), (("q4_0", "q4_0"), ("q8_0", "q8_0")),
                                          (("f16", "f16"), ("q4_0", "q4_0")), (("q8_0", "q4_0"), ("q8_0", "q8_0"))])
def test_a_state_saved_with_other_kv_types_is_refused(tiny_path, tmp_path, saved, loaded):
    path = tmp_path / "s.lpstate"
    with _engine(tiny_path, *saved) as e:
        e.eval([3, 4, 5, 6, 7], 0)
        state.save_file(e, 0, path)
    with _engine(tiny_path, *loaded) as e:
        e.eval([9, 10], 1)
        before = e.kv_state(1, 2)
        with pytest.raises(StateError) as err:
            state.load_file(e, 1, path)
        msg = str(err.value)
        assert "\n" not in msg
        assert f"KV cache types {saved[0]}/{saved[1]}" in msg and f"{loaded[0]}/{loaded[1]}" in msg
        assert e.tokens(1) == [9, 10] and e.kv_state(1, 2) == before  # the sequence is left as it was
