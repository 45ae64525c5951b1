"""Saved states (engine/state.py): save -> restore -> continue equals never stopping, every bad file refused,
and `run --prompt-cache` evaluating only what the cache does not hold."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama

from llamapy.engine import state
from llamapy.engine.engine import Engine
from llamapy.engine.state import HEADER, StateError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_random_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", wtype=T.F32, n_vocab=128)
    with Engine(path, n_ctx=96, n_threads=1, n_seq_max=2) as e:
        yield e


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another tiny model: same shapes, other hyperparameters (RoPE base), so its states must be refused."""
    path = write_random_llama(tmp_path_factory.mktemp("m") / "other.gguf", wtype=T.F32, n_vocab=128,
                              rope_freq_base=5000.0)
    with Engine(path, n_ctx=96, n_threads=1, n_seq_max=2) as e:
        yield e


@pytest.fixture(scope="module")
def smol(default_model):
    with Engine(default_model, n_ctx=256, n_threads=2, n_seq_max=2) as e:
        yield e


def _continue(e, seq, tokens):
    """The logits after each token, evaluated one by one (as generation does)."""
    return [e.eval([t], seq).copy() for t in tokens]


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_save_restore_continue_equals_never_stopping(which, request, tmp_path):
    e = request.getfixturevalue(which)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(1, min(e.n_vocab, 5000), 40)]
    more = [int(t) for t in rng.integers(1, min(e.n_vocab, 5000), 6)]
    e.kv_clear()
    e.eval(prompt, 0)
    path = tmp_path / "s.lpstate"
    n_bytes = state.save_file(e, 0, path)
    assert n_bytes == path.stat().st_size == HEADER.size + 4 * len(prompt) + e.kv_state_size(len(prompt))
    straight = _continue(e, 0, more)
    # the other sequence holds something else first; the restore replaces it
    e.kv_clear(1)
    e.eval(more[:3], 1)
    assert state.load_file(e, 1, path) == prompt
    assert e.tokens(1) == prompt
    resumed = _continue(e, 1, more)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)  # the same bytes in the cache: the same logits, bit for bit
    # the bytes of the restored sequence are those saved
    assert state.encode(e, 1, len(prompt)) == path.read_bytes()


def test_a_partial_state_and_an_empty_one(tiny, tmp_path):
    tiny.kv_clear()
    tiny.eval([5, 6, 7, 8, 9], 0)
    data = state.encode(tiny, 0, 3)
    assert state.restore(tiny, 1, data) == [5, 6, 7]
    empty = state.encode(tiny, 0, 0)
    assert state.restore(tiny, 1, empty) == [] and tiny.n_past(1) == 0
    with pytest.raises(StateError):
        state.encode(tiny, 0, 6)


def _fields(data: bytes) -> list:
    return list(HEADER.unpack(data[:HEADER.size]))


def _with(data: bytes, i: int, value, fix_crc: bool = True) -> bytes:
    f = _fields(data)
    f[i] = value
    body = data[HEADER.size:]
    if fix_crc:
        f[-1] = zlib.crc32(body)
    return HEADER.pack(*f) + body


def _bad_files(e, good: bytes) -> dict[str, tuple[bytes, str]]:
    n = _fields(good)[8]
    body = bytearray(good[HEADER.size:])
    flipped = bytearray(good)
    flipped[-5] ^= 0x40
    beyond = bytearray(body)
    beyond[0:4] = struct.pack("<i", e.n_vocab + 7)
    negative = bytearray(body)
    negative[4:8] = struct.pack("<i", -3)

    def rebody(b: bytes) -> bytes:
        f = _fields(good)
        f[-1] = zlib.crc32(b)
        return HEADER.pack(*f) + b

    return {
        "empty": (b"", "bad magic"),
        "magic": (b"GGUF" + good[4:], "bad magic"),
        "short header": (good[:HEADER.size - 9], "cut short"),
        "truncated": (good[:-100], "cut short"),
        "trailing": (good + b"\0" * 8, "trailing"),
        "version": (_with(good, 1, 99), "version 99"),
        "header size": (_with(good, 2, HEADER.size + 4), "header of"),
        "model": (_with(good, 3, b"\x11" * 32), "another model"),
        "type_k": (_with(good, 4, 8), "KV cache types q8_0/f16"),
        "layers": (_with(good, 6, 3), "another model"),
        "too many tokens": (_with(good, 8, e.n_ctx + 1), "do not fit the context"),
        "kv bytes": (_with(good, 9, _fields(good)[9] + 2), "KV state of"),
        "count vs size": (_with(good, 8, n - 1), "KV state of"),
        "checksum": (bytes(flipped), "checksum"),
        "token beyond vocab": (rebody(bytes(beyond)), "outside the vocabulary"),
        "negative token": (rebody(bytes(negative)), "outside the vocabulary"),
    }


def test_every_bad_file_is_refused_and_leaves_the_sequence_as_it_was(tiny, tmp_path):
    tiny.kv_clear()
    tiny.eval([3, 4, 5, 6, 7, 8], 0)
    good = state.encode(tiny, 0)
    tiny.kv_clear(1)
    tiny.eval([9, 10], 1)
    before = tiny.kv_state(1, 2)
    for name, (data, words) in _bad_files(tiny, good).items():
        with pytest.raises(StateError, match=words):
            state.restore(tiny, 1, data, name)
        path = tmp_path / "bad.lpstate"
        path.write_bytes(data)
        with pytest.raises(StateError, match=words):
            state.load_file(tiny, 1, path)
        assert tiny.tokens(1) == [9, 10] and tiny.kv_state(1, 2) == before, name


def test_a_state_of_another_model_is_refused(tiny, other):
    tiny.kv_clear()
    tiny.eval([3, 4, 5], 0)
    data = state.encode(tiny, 0)
    with pytest.raises(StateError, match="another model"):
        state.restore(other, 0, data)
    assert state.model_hash(tiny) != state.model_hash(other)


def test_the_c_primitive_checks_its_arguments(tiny):
    from llamapy.errors import LlamapyError

    tiny.kv_clear()
    tiny.eval([3, 4, 5], 0)
    with pytest.raises(LlamapyError, match="buffer of"):
        tiny.kv_state_load(0, [1, 2, 3], b"\0" * 10)
    with pytest.raises(LlamapyError):
        tiny.kv_state(0, 4)
    assert tiny.kv_state_size(tiny.n_ctx + 1) == -1
    assert tiny.kv_types == (1, 1)


# -- run --prompt-cache --------------------------------------------------------------------------------------
def _run(model, cache, *extra, prompt="The history of the printing press begins in"):
    cmd = [sys.executable, "-m", "llamapy", "run", "-m", model, "-p", prompt, "-n", "12", "--temp", "0",
           "-c", "256", "-t", "2", "--prompt-cache", str(cache), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n_eval = int(r.stderr.split("prompt eval time =")[1].split("/")[1].split()[0])
    return r.stdout, r.stderr, n_eval


def test_prompt_cache_second_run_evaluates_only_the_rest(default_model, tmp_path):
    cache = tmp_path / "p.cache"
    out1, err1, n1 = _run(default_model, cache)
    assert "does not exist, will create" in err1 and cache.exists()
    saved = cache.read_bytes()
    out2, err2, n2 = _run(default_model, cache)
    assert "exact match" in err2 and n2 == 1 and n1 > 5  # one token kept to evaluate, for its logits
    assert out2 == out1
    assert cache.read_bytes() == saved  # an exact match is not saved again
    # a longer prompt starting with the cached one evaluates only what follows
    out3, err3, n3 = _run(default_model, cache, prompt="The history of the printing press begins in Mainz, where")
    fresh = tmp_path / "fresh.cache"
    out4, _, n4 = _run(default_model, fresh, prompt="The history of the printing press begins in Mainz, where")
    shared = int(err3.split("session file matches ")[1].split(" / ")[0])
    assert f"matches {shared} / {n4} tokens" in err3 and shared >= n1 - 1
    assert n3 == n4 - shared and out3 == out4


def test_prompt_cache_ro_and_all(default_model, tmp_path):
    cache = tmp_path / "p.cache"
    _run(default_model, cache, "--prompt-cache-ro")
    assert not cache.exists()  # read-only: never written
    _, _, n1 = _run(default_model, cache, "--prompt-cache-all")
    with Engine(default_model, n_ctx=256, n_threads=1) as e:
        toks = state.load_file(e, 0, cache)
    assert len(toks) == n1 + 11  # the prompt and the generated tokens evaluated (the last sampled one is not)


@pytest.mark.parametrize("case", ["truncated", "garbage", "other model"])
def test_prompt_cache_bad_file_is_one_line_and_a_fresh_start(default_model, tmp_path, case, tiny):
    cache = tmp_path / "p.cache"
    good = tmp_path / "good.cache"
    out0, _, n0 = _run(default_model, good)
    if case == "truncated":
        cache.write_bytes(good.read_bytes()[:5000])
    elif case == "garbage":
        cache.write_bytes(b"\x00junk" * 100)
    else:
        tiny.kv_clear()
        tiny.eval([3, 4, 5], 0)
        state.save_file(tiny, 0, cache)
    before = cache.read_bytes()
    out, err, n = _run(default_model, cache)
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: prompt cache")]
    assert len(warnings) == 1 and "Traceback" not in err
    assert n == n0 and out == out0  # a fresh start: the whole prompt evaluated, the same output
    assert cache.read_bytes() == before  # the file is left as it is
