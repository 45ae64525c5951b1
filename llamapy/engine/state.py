"""Saved states: one sequence's tokens and KV cache in llamapy's own file format.

Used by `run --prompt-cache`, the server's slot save/restore and the Python API's save_state/load_state.

The layout (little-endian), version 1:

    magic      8 bytes   b"LPYSTATE"
    version    u32       1
    header     u32       bytes of the whole header (HEADER.size), so a reader can check it
    model      32 bytes  SHA-256 of the model's hyperparameters, RoPE settings and tensor layout
    type_k     i32       the KV cache's K type (GGML type id; f16 = 1)
    type_v     i32       its V type
    n_layer    i32       layers, and
    kv_dim     i32       K/V values per position (n_head_kv * head_dim): what the KV bytes are made of
    n_tokens   u32       positions saved
    kv_bytes   u64       bytes of the KV state
    crc32      u32       of everything after the header (tokens and KV state)
    tokens     n_tokens x i32
    kv         kv_bytes: the engine's per-layer K rows then V (lp_engine_kv_state_get)

A file is checked before anything of it is used, as a GGUF is: magic, version, header size, the model, the KV
types and shape, the counts against the context, the sizes against the file, the checksum, every token against
the vocabulary. Any failure is a StateError with one line saying what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib

from ..errors import LlamapyError

MAGIC = b"LPYSTATE"
VERSION = 1
HEADER = struct.Struct("<8sII32siiiiIQI")
TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 20: "iq4_nl", 30: "bf16"}


class StateError(LlamapyError):
    """A saved state that can't be used here (corrupt, cut short, of another model or KV layout)."""


def type_name(t: int) -> str:
    return TYPE_NAMES.get(t, f"type {t}")


def model_hash(engine) -> bytes:
    """32 bytes naming the model as the KV cache sees it: hyperparameters, RoPE settings and tensor layout."""
    cached = getattr(engine, "_state_model_hash", None)
    if cached is not None:
        return cached
    a = engine.args
    hyper = {k: v for k, v in sorted(vars(a).items()) if isinstance(v, (int, float, str, bool)) or v is None}
    rope = {k: getattr(engine.rope, k) for k in type(engine.rope).__slots__}
    layout = [[name, int(t.type), [int(x) for x in t.shape], int(t.offset)]
              for name, t in sorted(engine._reader.tensors.items())]
    blob = json.dumps({"hyper": hyper, "rope": rope, "tensors": layout}, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).digest()
    engine._state_model_hash = digest
    return digest


def encode(engine, seq_id: int, n: int | None = None) -> bytes:
    """The state of the first n positions (all by default) of a sequence, as the bytes of a state file."""
    tokens = engine.tokens(seq_id)
    n = len(tokens) if n is None else n
    if not 0 <= n <= len(tokens):
        raise StateError(f"can't save {n} positions: sequence {seq_id} holds {len(tokens)}")
    kv = engine.kv_state(seq_id, n)
    body = struct.pack(f"<{n}i", *tokens[:n]) + kv
    type_k, type_v = engine.kv_types
    head = HEADER.pack(MAGIC, VERSION, HEADER.size, model_hash(engine), type_k, type_v, engine.args.n_layer,
                       engine.args.kv_dim, n, len(kv), zlib.crc32(body))
    return head + body


def _check_header(engine, head: bytes, size: int, where: str) -> tuple[int, int, int]:
    """The header's (n_tokens, kv_bytes, crc) once it fits this engine and a file of `size` bytes."""
    if size < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        raise StateError(f"{where}: not a llamapy state file (bad magic)")
    if size < HEADER.size:
        raise StateError(f"{where}: cut short ({size} bytes, the header alone takes {HEADER.size})")
    _, version, hsize, mhash, type_k, type_v, n_layer, kv_dim, n_tok, kv_bytes, crc = HEADER.unpack(head)
    if version != VERSION:
        raise StateError(f"{where}: state format version {version}, this llamapy reads version {VERSION}")
    if hsize != HEADER.size:
        raise StateError(f"{where}: header of {hsize} bytes, expected {HEADER.size}")
    if mhash != model_hash(engine) or n_layer != engine.args.n_layer or kv_dim != engine.args.kv_dim:
        raise StateError(f"{where}: saved from another model (or other RoPE settings) than {engine.desc}")
    want_k, want_v = engine.kv_types
    if (type_k, type_v) != (want_k, want_v):
        raise StateError(f"{where}: KV cache types {type_name(type_k)}/{type_name(type_v)}, this context uses "
                         f"{type_name(want_k)}/{type_name(want_v)}")
    if n_tok > engine.n_ctx:
        raise StateError(f"{where}: {n_tok} tokens do not fit the context size {engine.n_ctx}")
    want_kv = engine.kv_state_size(n_tok)
    if kv_bytes != want_kv:
        raise StateError(f"{where}: KV state of {kv_bytes} bytes, {n_tok} positions take {want_kv}")
    want = HEADER.size + 4 * n_tok + kv_bytes
    if size != want:
        what = "cut short" if size < want else "has trailing bytes"
        raise StateError(f"{where}: {what} ({size} bytes, the header says {want})")
    return n_tok, kv_bytes, crc


def decode(engine, data: bytes | bytearray | memoryview, where: str = "state") -> tuple[list[int], memoryview]:
    """The tokens and KV bytes of a state, checked against the engine (StateError if anything is off)."""
    mv = memoryview(data).cast("B")
    n_tok, _, crc = _check_header(engine, bytes(mv[:HEADER.size]), len(mv), where)
    body = mv[HEADER.size:]
    if zlib.crc32(body) != crc:
        raise StateError(f"{where}: corrupt (checksum mismatch)")
    tokens = list(struct.unpack_from(f"<{n_tok}i", body))
    for t in tokens:
        if not 0 <= t < engine.n_vocab:
            raise StateError(f"{where}: token id {t} is outside the vocabulary (0..{engine.n_vocab - 1})")
    return tokens, body[4 * n_tok:]


def restore(engine, seq_id: int, data: bytes | bytearray | memoryview, where: str = "state") -> list[int]:
    """Check a state and load it into a sequence (whatever it held is replaced); returns its tokens."""
    tokens, kv = decode(engine, data, where)
    engine.kv_state_load(seq_id, tokens, kv)
    return tokens


def save_file(engine, seq_id: int, path: str | os.PathLike, n: int | None = None) -> int:
    """Write a sequence's state to a file atomically; returns the bytes written."""
    from ..util.fileio import atomic_write

    data = encode(engine, seq_id, n)
    try:
        with atomic_write(path) as f:
            f.write(data)
    except OSError as e:
        raise StateError(f"{os.fspath(path)}: can't write the state: {e.strerror or e}") from None
    return len(data)


def read_file(engine, path: str | os.PathLike) -> bytes:
    """A state file's bytes, once its header fits this engine and the file's size (so a huge or foreign
    file is not read whole)."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER.size)
            _check_header(engine, head, size, where)
            return head + f.read()
    except OSError as e:
        raise StateError(f"{where}: can't read the state: {e.strerror or e}") from None


def load_file(engine, seq_id: int, path: str | os.PathLike) -> list[int]:
    """Check a state file and load it into a sequence; returns its tokens."""
    return restore(engine, seq_id, read_file(engine, path), os.fspath(path))

