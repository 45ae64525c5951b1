"""SentencePiece-style BPE (`tokenizer.ggml.model = llama`): score-based merges with byte fallback.

The reference tokenizes each text fragment on its own (no pre-splitting): spaces become U+2581, the
text is cut into UTF-8 characters, and the adjacent pair whose concatenation is a vocabulary entry
with the highest score is merged (ties: leftmost) until no pair is left; a character without a token
becomes the `<0xNN>` tokens of its bytes.

The `sentencepiece` library's BPE encoder does the same in C++, so it is used when it is guaranteed
to give the same ids: `build_fast` writes a ModelProto from the GGUF fields (identity normalizer, no
dummy prefix, whitespace escaping on) and declines when the vocabulary has something sentencepiece
treats differently: duplicate or empty entries, not exactly one unknown token, missing byte tokens, or
an unknown/byte token that merging could produce (sentencepiece never merges into those; the
reference does). Every other token is declared NORMAL there, because the reference merges into any
vocabulary entry whatever its type. `SPMMerger` is the Python version for everything else.

When no token has U+2581 after another character (LLaMA's have none), text is cut before each space
that follows a non-space: no merge can cross such a cut, so the pieces are tokenized on their own and
repeated ones come from a cache (`word_splitter`, `SPMEncoder`), exact and several times faster.
"""
from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterator

from .merging import merge_symbols, symbol_ids, uncached

BYTE_TOKEN = "<0x{:02X}>"


def utf8_len(lead: int) -> int:
    """Bytes in the UTF-8 character a lead byte starts, as the reference counts them (by its top bits)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


def split_chars(b: bytes) -> list[bytes]:
    """Bytes cut into characters by their lead bytes (a cut-off tail stays one piece)."""
    out = []
    i, n = 0, len(b)
    while i < n:
        k = utf8_len(b[i])
        out.append(b[i : i + k])
        i += k
    return out


class SPMMerger:
    """The reference's SPM merge loop in Python over UTF-8 bytes."""

    def __init__(self, token_to_id: dict[bytes, int], scores: list[float], byte_ids: list[int | None],
                 unk_id: int | None):
        self.token_to_id = token_to_id
        self.scores = scores
        self.byte_ids = byte_ids
        self.unk_id = unk_id

    def tokenize(self, text: bytes) -> list[int]:
        """Ids of one fragment whose spaces are already U+2581."""
        vocab = self.token_to_id
        scores = self.scores
        sym = split_chars(text)
        if not sym:
            return []

        def rank(a: bytes, b: bytes) -> float | None:  # highest score first, then leftmost
            t = vocab.get(a + b)
            return None if t is None else -scores[t]

        def byte_ids(s: bytes) -> Iterator[int]:
            for byte in s:
                bt = self.byte_ids[byte]
                if bt is None:
                    # the reference aborts here (no token for this byte); the unknown token is the
                    # closest thing to a value
                    bt = self.unk_id
                if bt is not None:
                    yield bt

        return symbol_ids(merge_symbols(sym, rank), vocab, byte_ids)


ESCAPED_SPACE = "\u2581"


def word_splitter(texts: list[str]) -> re.Pattern | None:
    """A pattern cutting text into pieces that merging never joins, or None when the vocabulary has a
    token that could: one with U+2581 after another character. Without such tokens no symbol pair
    across "x|▁" (x not a space) is ever a token, so each piece can be tokenized on its own, and
    repeated pieces come from a cache."""
    inner = re.compile("[^\u2581]\u2581")
    if any(inner.search(t) for t in texts):
        return None
    return re.compile("[ \u2581]*[^ \u2581]+|[ \u2581]+")


class SPMEncoder:
    """SPM fragments to ids: the sentencepiece processor when `build_fast` gave one, else `SPMMerger`;
    text cut by `word_splitter` when the vocabulary allows it, with a cache of the pieces seen."""

    CACHE_MAX = 200_000

    def __init__(self, merger: SPMMerger, native=None, splitter: re.Pattern | None = None):
        self.merger = merger
        self.native = native
        self.splitter = splitter
        self.cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        """Ids of one fragment (valid UTF-8; its spaces are escaped here)."""
        if self.splitter is None:
            return list(self._encode([text])[0])
        words = self.splitter.findall(text)
        cache, missing = uncached(self, words, self.CACHE_MAX)
        if missing:
            for w, ids in zip(missing, self._encode(missing)):
                cache[w] = tuple(ids)
        return list(itertools.chain.from_iterable(map(cache.__getitem__, words)))

    def _encode(self, texts: list[str]) -> list:
        if self.native is not None:
            return self.native.encode(texts)
        esc = ESCAPED_SPACE.encode()
        return [self.merger.tokenize(t.encode("utf-8").replace(b" ", esc)) for t in texts]

    def encode_bytes(self, b: bytes) -> list[int]:
        """Ids of a fragment given as bytes that may not be UTF-8 (Python merging, no cache)."""
        return self.merger.tokenize(b.replace(b" ", ESCAPED_SPACE.encode()))


def byte_token_ids(token_to_id: dict[bytes, int]) -> list[int | None]:
    """The token of each byte: `<0xNN>`, else the byte itself as a token (the reference's byte_to_token)."""
    out: list[int | None] = []
    for b in range(256):
        t = token_to_id.get(BYTE_TOKEN.format(b).encode())
        if t is None:
            t = token_to_id.get(bytes([b]))
        out.append(t)
    return out


def reachable(text: bytes, token_to_id: dict[bytes, int]) -> bool:
    """Whether merging can build `text` (of two or more characters) from its characters: some cut
    into two parts that can each be built, with the whole a vocabulary entry."""
    chars = split_chars(text)
    memo: dict[tuple[int, int], bool] = {}

    def can(i: int, j: int) -> bool:
        if j - i == 1:
            return True
        key = (i, j)
        if key not in memo:
            whole = b"".join(chars[i:j])
            memo[key] = whole in token_to_id and any(can(i, k) and can(k, j) for k in range(i + 1, j))
        return memo[key]

    return len(chars) > 1 and can(0, len(chars))


# -- a sentencepiece model from GGUF fields --------------------------------------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _len_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def _int_field(num: int, v: int) -> bytes:
    return _field(num, 0, _varint(v))


# ModelProto.SentencePiece.Type
SP_NORMAL, SP_UNKNOWN, SP_BYTE = 1, 2, 6


def model_proto(pieces: list[tuple[bytes, float, int]], unk_id: int) -> bytes:
    """A serialized sentencepiece ModelProto: BPE, byte fallback, identity normalizer that only
    turns spaces into U+2581."""
    scores = struct.pack(f"<{len(pieces)}f", *(p[1] for p in pieces))
    small = [_varint(i) for i in range(128)]
    body = []
    for i, (text, _, typ) in enumerate(pieces):
        # SentencePiece{piece = 1; score = 2 (fixed32); type = 3}
        n = len(text)
        piece = b"\x0a" + (small[n] if n < 128 else _varint(n)) + text + b"\x15" + scores[4 * i : 4 * i + 4] + (
            b"\x18" + small[typ])
        body.append(b"\x0a" + (small[len(piece)] if len(piece) < 128 else _varint(len(piece))) + piece)
    trainer = (
        _int_field(3, 2)  # model_type = BPE
        + _int_field(4, len(pieces))  # vocab_size
        + _int_field(35, 1)  # byte_fallback
        + _int_field(40, unk_id)
        + _int_field(41, -1)  # bos_id
        + _int_field(42, -1)  # eos_id
        + _int_field(43, -1)  # pad_id
    )
    normalizer = (
        _len_field(1, b"identity")
        + _int_field(3, 0)  # add_dummy_prefix
        + _int_field(4, 0)  # remove_extra_whitespaces
        + _int_field(5, 1)  # escape_whitespaces
    )
    return b"".join(body) + _len_field(2, trainer) + _len_field(3, normalizer)


def build_fast(texts: list[bytes], scores: list[float], unk_ids: list[int], token_to_id: dict[bytes, int]):
    """A sentencepiece processor giving the reference's ids for this vocabulary, or None (see module)."""
    if len(token_to_id) != len(texts) or any(not t for t in texts) or len(unk_ids) != 1:
        return None
    byte_ids = {}
    for b in range(256):
        t = token_to_id.get(BYTE_TOKEN.format(b).encode())
        if t is None:
            return None
        byte_ids[t] = b
    unk = unk_ids[0]
    if unk in byte_ids:
        return None
    for t in [unk, *byte_ids]:
        if reachable(texts[t], token_to_id):
            return None
    pieces = []
    for i, text in enumerate(texts):
        typ = SP_UNKNOWN if i == unk else SP_BYTE if i in byte_ids else SP_NORMAL
        pieces.append((text, scores[i], typ))
    try:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model_proto(pieces, unk))
    except Exception:  # noqa: BLE001 - any refusal by the library means: use the Python merger
        return None
    return sp
