"""Fuzzing the GGUF reader: mutated valid files either read or fail with GGUFError, never anything else."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamapy.errors import GGUFError
from llamapy.ggufio.constants import TensorType, ValueType
from llamapy.ggufio.reader import GGUFReader
from llamapy.ggufio.writer import GGUFWriter


def _seed_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("seed") / "seed.gguf"
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("llama.block_count", 2, ValueType.UINT32)
        w.add("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
        w.add("tokenizer.ggml.scores", np.zeros(4, np.float32))
        w.add("x.bool", True)
        w.add_tensor_info("a", (8, 2), TensorType.F32)
        w.add_tensor_info("q", (32,), TensorType.Q8_0)
        w.write_header()
        w.write_tensor_data("a", np.ones((2, 8), np.float32))
        w.write_tensor_data("q", np.zeros(34, np.uint8))
    return path.read_bytes()


SEED: bytes = b""


def _read(blob: bytes, path):
    path.write_bytes(blob)
    try:
        with GGUFReader(path) as r:
            for t in r.tensors.values():
                t.raw.sum()  # touch every byte the reader claims is there
    except GGUFError as e:
        assert "\n" not in str(e)


def test_seed_reads(tmp_path_factory):
    global SEED
    SEED = _seed_file(tmp_path_factory)
    with GGUFReader(_write(tmp_path_factory, SEED)) as r:
        assert len(r.tensors) == 2


def _write(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("w") / "x.gguf"
    p.write_bytes(blob)
    return p


mutation = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "u64"]), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation)
def test_mutated_files_fail_cleanly(tmp_path_factory, muts):
    blob = bytearray(SEED or _seed_file(tmp_path_factory))
    for kind, pos, val in muts:
        if not blob:
            break
        pos %= len(blob)
        if kind == "flip":
            blob[pos] ^= 1 << (val % 8)
        elif kind == "set":
            blob[pos] = val
        elif kind == "cut":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = bytes([val]) * (val % 7 + 1)
        else:  # overwrite 8 bytes with a large 64-bit value: lengths, counts, offsets
            blob[pos : pos + 8] = (2**64 - 1 - val).to_bytes(8, "little")
    path = tmp_path_factory.mktemp("m") / "m.gguf"
    _read(bytes(blob), path)
