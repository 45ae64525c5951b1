"""GGUF reader/writer: round trips of every value type, and crafted malformed files refused one by one."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from llamapy.errors import GGUFError, LlamapyError
from llamapy.ggufio.constants import TensorType, ValueType
from llamapy.ggufio.reader import GGUFReader, GGUFValue
from llamapy.ggufio.writer import GGUFWriter

SCALARS = [
    (ValueType.UINT8, 250),
    (ValueType.INT8, -120),
    (ValueType.UINT16, 65000),
    (ValueType.INT16, -32000),
    (ValueType.UINT32, 4_000_000_000),
    (ValueType.INT32, -2_000_000_000),
    (ValueType.FLOAT32, 1.5),
    (ValueType.BOOL, True),
    (ValueType.STRING, "héllo ▁ 世界 🙂"),
    (ValueType.UINT64, 2**64 - 1),
    (ValueType.INT64, -(2**63)),
    (ValueType.FLOAT64, 1e-300),
]


def test_round_trip_every_value_type(tmp_path):
    path = tmp_path / "kv.gguf"
    with GGUFWriter(path) as w:
        for vt, v in SCALARS:
            w.add(f"scalar.{vt.name.lower()}", v, vt)
        w.add("arr.u8", np.arange(5, dtype=np.uint8), ValueType.ARRAY, ValueType.UINT8)
        w.add("arr.i16", [-1, 2, -3], ValueType.ARRAY, ValueType.INT16)
        w.add("arr.f32", np.array([0.5, -2.25], dtype=np.float32))
        w.add("arr.f64", [1.0, 2.0], ValueType.ARRAY, ValueType.FLOAT64)
        w.add("arr.bool", [True, False, True], ValueType.ARRAY, ValueType.BOOL)
        w.add("arr.u64", [0, 2**64 - 1], ValueType.ARRAY, ValueType.UINT64)
        w.add("arr.i64", [-5, 5], ValueType.ARRAY, ValueType.INT64)
        w.add("arr.str", ["a", "", "▁b", "<0x0A>"], ValueType.ARRAY, ValueType.STRING)
        w.add("arr.empty", [], ValueType.ARRAY, ValueType.INT32)
        w.add("arr.nested", [GGUFValue([1, 2], ValueType.ARRAY, ValueType.INT32)], ValueType.ARRAY, ValueType.ARRAY)
    with GGUFReader(path) as r:
        assert r.version == 3
        for vt, v in SCALARS:
            got = r.kv[f"scalar.{vt.name.lower()}"]
            assert got.type == vt
            assert got.value == v
        assert r.kv["arr.u8"].subtype == ValueType.UINT8
        assert r.get("arr.u8").tolist() == [0, 1, 2, 3, 4]
        assert r.get("arr.i16").tolist() == [-1, 2, -3]
        assert r.kv["arr.f32"].subtype == ValueType.FLOAT32
        assert r.get("arr.f32").tolist() == [0.5, -2.25]
        assert r.get("arr.f64").tolist() == [1.0, 2.0]
        assert r.get("arr.bool").tolist() == [True, False, True]
        assert r.get("arr.u64").tolist() == [0, 2**64 - 1]
        assert r.get("arr.i64").tolist() == [-5, 5]
        assert r.get("arr.str") == ["a", "", "▁b", "<0x0A>"]
        assert r.get("arr.empty").tolist() == []
        inner = r.get("arr.nested")[0]
        assert inner.subtype == ValueType.INT32 and inner.value.tolist() == [1, 2]


@pytest.mark.parametrize("alignment", [1, 8, 32, 64, 4096])
def test_round_trip_tensors_any_alignment(tmp_path, alignment):
    path = tmp_path / f"t{alignment}.gguf"
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    b = (np.arange(7, dtype=np.float32) / 7).astype(np.float16)
    q = np.frombuffer(bytes(range(34)) * 2, dtype=np.uint8)  # two Q8_0 blocks: one row of 64
    with GGUFWriter(path, alignment=alignment) as w:
        w.add("general.architecture", "llama")
        w.add_tensor_info("a", (5, 3), TensorType.F32)
        w.add_tensor_info("b", (7,), TensorType.F16)
        w.add_tensor_info("q", (64,), TensorType.Q8_0)
        w.write_header()
        w.write_tensor_data("a", a)
        w.write_tensor_data("b", b)
        w.write_tensor_data("q", q)
    with GGUFReader(path) as r:
        assert r.alignment == alignment
        assert r.tensors["a"].shape == (5, 3)
        np.testing.assert_array_equal(r.tensors["a"].data, a)
        np.testing.assert_array_equal(r.tensors["b"].data, b)
        assert r.tensors["q"].raw.tobytes() == q.tobytes()
        for t in r.tensors.values():
            assert (t.offset - r.data_offset) % alignment == 0


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "x.gguf"
    with pytest.raises(RuntimeError):
        with GGUFWriter(path) as w:
            w.add_tensor_info("a", (4,), TensorType.F32)
            w.write_header()
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LlamapyError, match="no data written"):
        with GGUFWriter(path) as w:
            w.add_tensor_info("a", (4,), TensorType.F32)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LlamapyError, match="expected 16"):
        with GGUFWriter(path) as w:
            w.add_tensor_info("a", (4,), TensorType.F32)
            w.write_tensor_data("a", np.zeros(3, np.float32))
    assert list(tmp_path.iterdir()) == []


# -- crafted malformed files ------------------------------------------------------------------------
def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vt: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vt) + payload


def tinfo(name: str, dims, ttype: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ttype, offset)


def gguf(kvs=(), tensors=(), version=3, n_kv=None, n_tensors=None, data=b"", align=32, pad=True) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    if pad:
        body += b"\0" * ((-len(body)) % align)
    return body + data


F32 = int(TensorType.F32)
Q4_0 = int(TensorType.Q4_0)
GOOD_T = tinfo("t", (4,), F32, 0)

MALFORMED = {
    "empty": (b"", "empty file"),
    "bad_magic": (b"GGML" + b"\0" * 60, "not a GGUF file"),
    "short_magic": (b"GG", "not a GGUF file|needs 4 bytes"),
    "truncated_version": (b"GGUF\x03\0", "needs 4 bytes"),
    "version_1": (gguf(version=1), "version 1 is not supported"),
    "version_99": (gguf(version=99), "unsupported GGUF version 99"),
    "big_endian": (gguf(version=3 << 24), "big-endian"),
    "truncated_counts": (b"GGUF" + struct.pack("<I", 3) + b"\0" * 5, "needs 8 bytes"),
    "huge_kv_count": (gguf(n_kv=2**62), "metadata entries can't fit"),
    "huge_tensor_count": (gguf(n_tensors=2**40), "tensors can't fit"),
    "key_length_past_eof": (gguf(kvs=[struct.pack("<Q", 2**60) + b"abc" * 10], pad=False), "string length .* past end"),
    "empty_key": (gguf(kvs=[kv("", 4, struct.pack("<I", 1))]), "empty key"),
    "unknown_value_type": (gguf(kvs=[kv("a", 77, b"\0" * 8)]), "unknown value type 77"),
    "duplicate_key": (gguf(kvs=[kv("a", 4, b"\1\0\0\0"), kv("a", 4, b"\2\0\0\0")]), "duplicate metadata key 'a'"),
    "truncated_scalar": (gguf(kvs=[kv("a", 10, b"\1\0")], pad=False), "metadata 'a': needs 8 bytes"),
    "bad_bool": (gguf(kvs=[kv("a", 7, b"\x05")]), "bool value 5"),
    "array_count_past_eof": (gguf(kvs=[kv("a", 9, struct.pack("<IQ", 6, 2**61))]), "array of .* FLOAT32 runs past"),
    "string_array_past_eof": (gguf(kvs=[kv("a", 9, struct.pack("<IQ", 8, 2**50))]), "strings can't fit"),
    "array_of_unknown": (gguf(kvs=[kv("a", 9, struct.pack("<IQ", 99, 1))]), "unknown value type 99"),
    "deep_nesting": (gguf(kvs=[kv("a", 9, struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 0))]), "nested deeper"),
    "alignment_not_pow2": (gguf(kvs=[kv("general.alignment", 4, struct.pack("<I", 24))]), "alignment 24 is not a power of two"),
    "alignment_zero": (gguf(kvs=[kv("general.alignment", 4, struct.pack("<I", 0))]), "alignment 0 is not a power of two"),
    "alignment_wrong_type": (gguf(kvs=[kv("general.alignment", 6, struct.pack("<f", 32))]), "must be UINT32"),
    "zero_dims": (gguf(tensors=[tinfo("t", (), F32, 0)], data=b"\0" * 32), "0 dimensions"),
    "five_dims": (gguf(tensors=[tinfo("t", (1, 1, 1, 1, 1), F32, 0)], data=b"\0" * 32), "5 dimensions"),
    "zero_dim": (gguf(tensors=[tinfo("t", (4, 0), F32, 0)], data=b"\0" * 32), "dimension 0 in shape"),
    "element_overflow": (gguf(tensors=[tinfo("t", (2**32, 2**32), F32, 0)], data=b"\0" * 32), "overflows 64 bits"),
    "unknown_tensor_type": (gguf(tensors=[tinfo("t", (4,), 250, 0)], data=b"\0" * 32), "unknown tensor type 250"),
    "row_not_block_multiple": (gguf(tensors=[tinfo("t", (33,), Q4_0, 0)], data=b"\0" * 64), "not a multiple of Q4_0's block size 32"),
    "misaligned_offset": (gguf(tensors=[tinfo("t", (4,), F32, 8)], data=b"\0" * 64), "offset 8 is not aligned to 32"),
    "data_past_eof": (gguf(tensors=[tinfo("t", (1024,), F32, 0)], data=b"\0" * 32), r"data \[\d+, \d+\) ends past end of file"),
    "offset_wraps": (gguf(tensors=[tinfo("t", (4,), F32, 2**64 - 32)], data=b"\0" * 32), "ends past end of file"),
    "overlap": (gguf(tensors=[tinfo("a", (16,), F32, 0), tinfo("b", (16,), F32, 32)], data=b"\0" * 128), "overlaps tensor 'a'"),
    "duplicate_tensor": (gguf(tensors=[GOOD_T, tinfo("t", (4,), F32, 32)], data=b"\0" * 64), "duplicate tensor name 't'"),
    "tensor_info_truncated": (gguf(n_tensors=1, pad=False) + s("t") + struct.pack("<I3Q", 4, 1, 1, 1), "tensor 't': needs 8 bytes"),
    "data_start_past_eof": (gguf(tensors=[GOOD_T], pad=False), "past end of file"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_refused(tmp_path, name):
    blob, pattern = MALFORMED[name]
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(blob)
    with pytest.raises(GGUFError, match=pattern) as ei:
        GGUFReader(path).close()
    msg = str(ei.value)
    assert msg.startswith(str(path) + ": ")
    assert "\n" not in msg


def test_enough_distinct_messages():
    assert len(MALFORMED) >= 25


def test_good_crafted_file_reads(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf(kvs=[kv("a", 4, b"\1\0\0\0")], tensors=[GOOD_T], data=np.arange(4, dtype="<f4").tobytes()))
    with GGUFReader(path) as r:
        assert r.get("a") == 1
        assert r.tensors["t"].data.tolist() == [0, 1, 2, 3]


def test_small_file_never_allocates_much(tmp_path):
    import tracemalloc

    path = tmp_path / "x.gguf"
    path.write_bytes(gguf(kvs=[kv("a", 9, struct.pack("<IQ", 4, 2**40)) + b"\0" * 900]))
    tracemalloc.start()
    with pytest.raises(GGUFError):
        GGUFReader(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2**20


def test_names_with_control_characters_stay_on_one_line(tmp_path):
    path = tmp_path / "nl.gguf"
    path.write_bytes(gguf(kvs=[kv("evil\nkey", 77, b"\0" * 8)]))
    with pytest.raises(GGUFError, match=r"metadata 'evil\\x0akey': unknown value type 77") as ei:
        GGUFReader(path)
    assert "\n" not in str(ei.value)


STRINGS = ["", "a", "é中🦙", "\udcff\udce4\udcb8", "x" * 300, "tab\tnew\nline", "Ġhello"]


def _string_array(items: list[str]) -> bytes:
    raw = [s.encode("utf-8", "surrogateescape") for s in items]
    return b"".join(struct.pack("<Q", len(b)) + b for b in raw)


@pytest.mark.parametrize("items", [STRINGS, [], ["with\0nul", "b"], ["\udce4\udcb8", "\udcadx"]],
                         ids=["mixed", "empty", "nul", "split-utf8"])
def test_string_arrays_read_in_c_equal_the_python_loop(monkeypatch, items):
    """The C walker (a vocabulary at C speed) gives the Python loop's strings and end offset, or steps aside."""
    from llamapy.ggufio import reader as gguf_reader

    buf = b"junk" + _string_array(items) + b"tail"
    fast = gguf_reader._Cursor(buf, len(buf), "t")
    fast.pos = 4
    got = fast.strings(len(items))
    assert got == items and fast.pos == len(buf) - 4
    native = gguf_reader._native_strings(buf, len(buf), 4, len(items))
    assert native == (None if any("\0" in s for s in items) else (len(buf) - 4, items))
    monkeypatch.setattr(gguf_reader, "_native_strings", lambda *a: None)
    slow = gguf_reader._Cursor(buf, len(buf), "t")
    slow.pos = 4
    assert slow.strings(len(items)) == items and slow.pos == fast.pos


def test_string_array_running_past_the_end_is_refused_by_both_paths(monkeypatch):
    from llamapy.ggufio import reader as gguf_reader

    buf = _string_array(STRINGS)[:-3]
    assert gguf_reader._native_strings(buf, len(buf), 0, len(STRINGS)) is None
    with pytest.raises(GGUFError, match="runs past end of file"):
        gguf_reader._Cursor(buf, len(buf), "t").strings(len(STRINGS))
