"""Tokenizers built from GGUF metadata alone, giving exactly the reference's (llama.cpp's) token ids.

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello world", add_special=True, parse_special=False)
    text = tok.decode(ids)

Two vocabulary types are supported, as `tokenizer.ggml.model` names them:
  * `llama`: SentencePiece-style BPE over scores with byte fallback (LLaMA 1/2, Chinese-LLaMA/Alpaca);
    see spm.py.
  * `gpt2`: byte-level BPE over merges, pre-split by the regex stages `tokenizer.ggml.pre` names;
    see bpe.py.

What is shared follows the reference's vocabulary loader: its default special ids and add-BOS/EOS
flags per type, the metadata that overrides them, EOT/EOM/FIM tokens found by their text, the
end-of-generation set, special tokens cut out of the text before tokenizing (control and unknown
tokens only when `parse_special` is on, user-defined ones always, longest first), the space prefix of
SPM fragments, and token_to_piece.

Libraries and own code: merges run in C++/Rust libraries (`sentencepiece`, `tokenizers`) whenever
they are guaranteed to give the reference's ids for the vocabulary at hand (the conditions, and the
vocabularies where they would not, are in the two modules and their tests). Around them llamapy keeps
its own pre-tokenizer and a word cache instead of the libraries' whole pipelines, for reasons
benchmarks/bench_tokenize.py measures on 1 MB of mixed English/Chinese (CPU time, one core, SmolLM2 /
LLaMA vocabularies): `tokenizers`' own pipeline, given the same split expressions, runs at ~1 MB/s
against ~3 MB/s here, and sentencepiece on whole texts at ~2 MB/s against ~4-6 MB/s here; and no
library pre-tokenizer has the reference's Unicode 15.1 classes or its collapsed-regex quirks. The
Python merge loops are the fallback where a library would differ, and the oracle in tests.

One reference behaviour depends on its C++ standard library: when several tokens could be the EOT
token (SmolLM2 has `<|im_end|>` and `<|endoftext|>`), the reference takes the first one met while
walking its std::unordered_map. tokenizer_cxx.py replays that walk for GCC's libstdc++, which
the reference is built with on Linux; it runs only when the choice is ambiguous, and lazily when the
choice changes nothing but `eot_id` itself.
"""
from __future__ import annotations

import codecs
import itertools
import os
import warnings
from collections.abc import Iterable

import numpy as np

from ..errors import LlamapyError
from ..util.gcpause import without_gc
from . import bpe, bpe_merges, spm
from .bpe import TokenizerWarning
from .cxx_order import unordered_map_order

# GGUF token types (tokenizer.ggml.token_type)
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# token attributes (the reference's llama_token_attr bits)
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

_TYPE_ATTR = {
    TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_UNUSED: ATTR_UNUSED, TYPE_NORMAL: ATTR_NORMAL,
    TYPE_CONTROL: ATTR_CONTROL, TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_BYTE: ATTR_BYTE,
}
_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
_C_SPACE = " \t\n\v\f\r"
ESCAPED_SPACE = "\u2581"

# special ids read from metadata, in the reference's order (the deprecated FIM keys come last and win)
_SPECIAL_KEYS = [
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
    ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id"),
    ("mask", "mask_token_id"), ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
    ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"),
    ("fim_sep", "fim_sep_token_id"), ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"),
    ("fim_mid", "middle_token_id"),
]
# tokens found by their text when the metadata names none
_BY_TEXT = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
            "<\uff5cend\u2581of\u2581sentence\uff5c>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<PAD>"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>")


def _slot_property(slot: str, doc: str | None = None) -> property:
    """A special token id (int | None) that the reference picks among candidates, chosen when first asked
    (Tokenizer._slot)."""
    return property(lambda self: self._slot(slot), doc=doc)


class Tokenizer:
    """A GGUF vocabulary with the reference's tokenize / token_to_piece (build with `from_gguf`)."""

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, reader_or_path, native: bool = True) -> Tokenizer:
        """Build from a GGUFReader or a GGUF file path (only the metadata is read).

        native=False keeps every merge in Python (the libraries are used by default where they agree).
        """
        if isinstance(reader_or_path, (str, os.PathLike)):
            from ..ggufio.reader import GGUFReader

            with GGUFReader(reader_or_path) as r:
                return cls(r.get, getattr(r, "path", str(reader_or_path)), native)
        return cls(reader_or_path.get, getattr(reader_or_path, "path", "GGUF"), native)

    @without_gc
    def __init__(self, get, where: str = "GGUF", native: bool = True):
        """`get(key, default)` reads GGUF metadata (GGUFReader.get); prefer `from_gguf`."""
        self._native = native
        model = get("tokenizer.ggml.model")
        if model is None:
            raise LlamapyError(f"{where}: no tokenizer in this file (tokenizer.ggml.model is missing)")
        if model not in ("llama", "gpt2"):
            raise LlamapyError(f"{where}: tokenizer model '{model}' is not supported (supported: llama, gpt2)")
        tokens = get("tokenizer.ggml.tokens")
        if not tokens:
            raise LlamapyError(f"{where}: tokenizer.ggml.tokens is missing or empty")
        self.model: str = model
        self.where = where
        n = len(tokens)
        self.n_vocab: int = n
        self.tokens: list[str] = list(tokens)
        if "" in self.tokens:
            self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        scores = get("tokenizer.ggml.scores")
        scores = [] if scores is None else np.asarray(scores, dtype=np.float32)[:n].tolist()
        self.scores: list[float] = scores + [0.0] * (n - len(scores))
        types = get("tokenizer.ggml.token_type")
        types = [] if types is None else np.asarray(types, dtype=np.int64)[:n].tolist()
        self.types: list[int] = types + [TYPE_NORMAL] * (n - len(types))
        self.attrs: list[int] = list(map(_TYPE_ATTR.get, self.types, itertools.repeat(0)))
        self.token_to_id: dict[str, int] = dict(zip(self.tokens, range(n)))

        sp = self.model == "llama"
        ids = dict.fromkeys(["bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask", "fim_pre", "fim_suf",
                             "fim_mid", "fim_pad", "fim_rep", "fim_sep"])
        if sp:
            ids.update(bos=1, eos=2, unk=0)
            self.pre = get("tokenizer.ggml.pre") or "default"
            self.add_space_prefix, self.add_bos, self.add_eos = True, True, False
        else:
            ids.update(bos=11, eos=11)
            self.pre, pt = bpe.resolve_pre(get("tokenizer.ggml.pre"))
            self.add_space_prefix, self.add_bos, self.add_eos = False, pt.add_bos, False
            if pt.no_bos_token:
                ids["bos"] = None
            self._stages = pt.stages
            self._ignore_merges = pt.ignore_merges
        v = get("tokenizer.ggml.add_space_prefix")
        if v is not None:
            self.add_space_prefix = bool(v)
        if sp:
            self._tok_bytes = [t.encode("utf-8", "surrogateescape") for t in self.tokens]
            self._bytes_to_id = {b: i for i, b in enumerate(self._tok_bytes)}
            self._spm_byte_ids = spm.byte_token_ids(self._bytes_to_id)
            self.merges = None
        else:
            self.merges = get("tokenizer.ggml.merges")
            if self.merges is None:
                raise LlamapyError(f"{where}: tokenizer.ggml.merges is missing (a gpt2 tokenizer needs merges)")
        self._merger_ready = False  # the merge machinery is built on first use (see _merger)

        # newline token, from the defaults above (the reference looks it up before reading special ids)
        self._nl_default = ids["pad"]
        self._nl_id: int | None = None
        if sp:
            nl = self._spm_byte_ids[0x0A]
            self._nl_id = nl if nl is not None else ids["pad"]

        for name, key in _SPECIAL_KEYS:
            v = get("tokenizer.ggml." + key)
            if v is None:
                continue
            if not 0 <= int(v) < n:
                warnings.warn(f"{where}: bad special token 'tokenizer.ggml.{key}' = {v}, using the default",
                              TokenizerWarning, stacklevel=3)
                continue
            ids[name] = int(v)
        v = get("tokenizer.ggml.add_bos_token")
        if v is not None:
            self.add_bos = bool(v)
        v = get("tokenizer.ggml.add_eos_token")
        if v is not None:
            self.add_eos = bool(v)

        self._pending: dict[str, list[int]] = {}  # slots whose choice waits for the hash-map order
        self._cxx_rank: dict[int, int] | None = None
        for slot, texts in _BY_TEXT.items():
            if ids[slot] is not None:
                continue
            found = sorted({self.token_to_id[t] for t in texts if t in self.token_to_id})
            if not found:
                continue
            if len(found) > 1:
                # the choice changes nothing but the id when every candidate is a control token already
                # in the end-of-generation set (EOT) or outside it (FIM prefix/suffix/middle): decide lazily
                lazy = all(self.attrs[i] & ATTR_CONTROL for i in found) and (
                    slot in ("fim_pre", "fim_suf", "fim_mid")
                    or (slot == "eot" and all(self.tokens[i] in _EOG_TEXTS for i in found))
                )
                if lazy:
                    self._pending[slot] = found
                    continue
                ids[slot] = min(found, key=self._hash_rank)
            else:
                ids[slot] = found[0]
            self._force_control(ids[slot])

        eog: set[int] = {ids[s] for s in ("fim_pad", "fim_rep", "fim_sep") if ids[s] is not None}
        for t in _EOG_TEXTS:
            i = self.token_to_id.get(t)
            if i is not None:
                eog.add(i)
                self._force_control(i)
        for s in ("eos", "eot", "eom"):
            if ids[s] is not None:
                eog.add(ids[s])
        self.eog_ids: set[int] = eog

        self._ids = ids
        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.eom_id: int | None = ids["eom"]
        self.unk_id: int | None = ids["unk"]
        self.sep_id: int | None = ids["sep"]
        self.pad_id: int | None = ids["pad"]
        self.mask_id: int | None = ids["mask"]

        # special tokens, longest text first (ties: lower id first)
        special = np.flatnonzero(np.asarray(self.attrs) & _SPECIAL_ATTRS).tolist()
        self.special_ids: list[int] = sorted(special, key=lambda i: -len(self.tokens[i]))
        self._pieces: list[bytes | None] = [None] * n
        self._piece_attrs = list(self.attrs)  # token_to_piece uses the attributes as they are now
        self._model_attr_fixes(get)

    def _force_control(self, i: int):
        if not self.attrs[i] & ATTR_CONTROL:
            self.attrs[i] = ATTR_CONTROL

    def _merger(self):
        """Build the merge machinery (native library and Python fallback) on first use."""
        if not self._merger_ready:
            self._build_merger()

    @without_gc
    def _build_merger(self):
        if self.model == "llama":
            merger = spm.SPMMerger(self._bytes_to_id, self.scores, self._spm_byte_ids, self.unk_id)
            unk = [i for i, t in enumerate(self.types) if t == TYPE_UNKNOWN]
            self._fast = spm.build_fast(self._tok_bytes, self.scores, unk, self._bytes_to_id) \
                if self._native else None
            self._spm = spm.SPMEncoder(merger, self._fast, spm.word_splitter(self.tokens))
        else:
            self._bpe = bpe_merges.BPEMerger(self.token_to_id, self.merges, self._ignore_merges, self._native)
        self._merger_ready = True

    def _model_attr_fixes(self, get):
        """The reference's per-model attribute fixes (applied after the piece cache was built)."""
        name = (get("general.name") or "").lower()
        pre = get("tokenizer.ggml.pre") or ""

        def setattr_(text, bit, on):
            i = self.token_to_id.get(text)
            if i is not None:
                self.attrs[i] = self.attrs[i] | bit if on else self.attrs[i] & ~bit

        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
            setattr_("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for i in self.special_ids:
                self.attrs[i] |= ATTR_RSTRIP
            setattr_("</s>", ATTR_RSTRIP, True)
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                setattr_(t, ATTR_RSTRIP, False)

    # -- the EOT choice ---------------------------------------------------------------------------
    def _hash_rank(self, i: int) -> int:
        if self._cxx_rank is None:
            order = unordered_map_order([t.encode("utf-8", "surrogateescape") for t in self.tokens])
            self._cxx_rank = {tid: r for r, tid in enumerate(order)}
        return self._cxx_rank[i]

    def _slot(self, slot: str) -> int | None:
        found = self._pending.pop(slot, None)
        if found is not None:
            self._ids[slot] = min(found, key=self._hash_rank)
        return self._ids[slot]

    eot_id = _slot_property("eot", "End-of-turn token (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, ...), as the "
                                   "reference picks it.")
    fim_pre_id = _slot_property("fim_pre")
    fim_suf_id = _slot_property("fim_suf")
    fim_mid_id = _slot_property("fim_mid")
    fim_pad_id = _slot_property("fim_pad")
    fim_rep_id = _slot_property("fim_rep")
    fim_sep_id = _slot_property("fim_sep")

    # -- queries ------------------------------------------------------------------------------------
    def is_eog(self, token_id: int) -> bool:
        """Whether a token ends generation (EOS, EOT, EOM and the other end tokens the reference knows)."""
        return token_id in self.eog_ids

    def is_control(self, token_id: int) -> bool:
        return bool(self.attrs[token_id] & ATTR_CONTROL)

    def token_text(self, token_id: int) -> str:
        """The raw vocabulary string of a token."""
        return self.tokens[self._check(token_id)]

    def token_type(self, token_id: int) -> int:
        """The GGUF token type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
        return self.types[self._check(token_id)]

    def token_attr(self, token_id: int) -> int:
        """The reference's attribute bits of a token (ATTR_*), after its fixes."""
        return self.attrs[self._check(token_id)]

    def find_token(self, text: str) -> int | None:
        """The id of the vocabulary entry that is exactly `text` (e.g. "<|eot_id|>"), or None."""
        return self.token_to_id.get(text)

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < self.n_vocab:
            raise LlamapyError(f"token id {token_id} is out of range (the vocabulary has {self.n_vocab} tokens)")
        return token_id

    @property
    def fast(self) -> bool:
        """Whether merges run in the native library (sentencepiece / tokenizers) for this vocabulary."""
        self._merger()
        return (self._bpe.native if self.model == "gpt2" else self._fast) is not None

    @property
    def nl_id(self) -> int | None:
        """The newline token (SPM: <0x0A>; BPE: the first token of "\\n")."""
        if self._nl_id is None:
            nl_ids = self._bpe_fragment("\n")
            self._nl_id = nl_ids[0] if nl_ids else self._nl_default
        return self._nl_id

    # -- encode -------------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`, as the reference's llama_tokenize gives them.

        add_special: add BOS / EOS when the model asks for them (tokenizer.ggml.add_bos_token / add_eos_token).
        parse_special: recognise control tokens written in the text (user-defined ones always are).
        """
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise LlamapyError("the model asks for a BOS token but has none")
            out.append(self.bos_id)
        slow = not bpe_merges.is_plain(text)
        if self.model == "llama":
            prev_special = True
            for frag in self._partition(text, parse_special):
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                out += self._spm_fragment(frag, slow)
                prev_special = False
        else:
            for frag in self._partition(text, parse_special):
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    out += self._bpe_fragment(frag, slow)
        if add_special and self.add_bos and len(out) >= 2 and out[1] == self.bos_id:
            warnings.warn("the prompt starts with a BOS token and the model adds one: it now starts with two",
                          TokenizerWarning, stacklevel=2)
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise LlamapyError("the model asks for an EOS token but has none")
            out.append(self.eos_id)
        return out

    def _spm_fragment(self, frag: str, slow: bool = False) -> list[int]:
        self._merger()
        if slow:  # text that was not valid UTF-8: the reference works on its bytes
            return self._spm.encode_bytes(to_bytes(frag))
        return self._spm.encode(frag)

    def _bpe_fragment(self, frag: str, slow: bool = False) -> list[int]:
        self._merger()
        if slow:  # text that was not valid UTF-8: read it as the reference does, merge in Python
            words = bpe.pre_split(bpe.cpts_from_utf8(to_bytes(frag)), self._stages)
            out: list[int] = []
            for w in words:
                out += self._bpe._word(bpe.to_byte_chars(w.encode("utf-8", "surrogatepass")))
            return out
        return self._bpe.encode_words(bpe.pre_split(frag, self._stages))

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the text: each special token in turn (longest first) is found in
        every remaining text fragment; LSTRIP/RSTRIP tokens also take the whitespace beside them."""
        if not text:
            return []
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        for tid in self.special_ids:
            attr = self.attrs[tid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            tt = self.tokens[tid]
            if tt not in text:
                continue
            k = len(tt)
            new: list[tuple[int, int] | int] = []
            for f in frags:
                if isinstance(f, int):
                    new.append(f)
                    continue
                s, e = f
                while True:
                    m = text.find(tt, s, e)
                    if m < 0:
                        new.append((s, e))
                        break
                    left = m
                    if attr & ATTR_LSTRIP:
                        while left > s and text[left - 1] in _C_SPACE:
                            left -= 1
                    if left > s:
                        new.append((s, left))
                    new.append(tid)
                    s = m + k
                    if attr & ATTR_RSTRIP:
                        while s < e and text[s] in _C_SPACE:
                            s += 1
                    if s >= e:
                        break
            frags = new
        return [f if isinstance(f, int) else text[f[0] : f[1]] for f in frags]

    # -- decode -------------------------------------------------------------------------------------
    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """A token's bytes, as the reference's llama_token_to_piece (lstrip 0): control and unknown
        tokens give b"" unless `special`; byte tokens give their byte."""
        attr = self.attrs[self._check(token_id)]
        if not special and attr & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        p = self._pieces[token_id]
        if p is None:
            p = self._pieces[token_id] = self._make_piece(token_id)
        return p

    def _make_piece(self, i: int) -> bytes:
        attr = self._piece_attrs[i]
        text = self.tokens[i]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if self.model == "llama":
            if attr & ATTR_NORMAL:
                return text.replace(ESCAPED_SPACE, " ").encode("utf-8", "surrogateescape")
            if attr & ATTR_BYTE:
                return bytes([_hex_byte(text[3:5])])
            return b""
        if attr & ATTR_NORMAL:
            return bpe.decode_byte_chars(text)
        return b""

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """The text of a token sequence: its pieces joined, as UTF-8 (invalid bytes become U+FFFD)."""
        return b"".join(self.token_to_piece(i, special) for i in ids).decode("utf-8", "replace")

    def detokenize(self, ids: list[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        """The reference's llama_detokenize: drops the SPM leading space, optionally BOS/EOS, and for
        most gpt2 pre-tokenizers tidies spaces before punctuation and contractions."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for i in ids:
            p = self.token_to_piece(i, unparse_special)
            if remove_space and p.startswith(b" "):
                p = p[1:]
            remove_space = False
            parts.append(p)
        out = b"".join(parts)
        if self.model == "gpt2" and self.pre not in bpe.NO_CLEAN_SPACES:
            out = bpe.clean_spaces(out)
        return out.decode("utf-8", "replace")


def _hex_byte(s: str) -> int:
    try:
        return int(s, 16) & 0xFF
    except ValueError:
        return 0


def _surrogates(err: UnicodeEncodeError):
    """U+DC80..U+DCFF back to the byte they stand for (surrogateescape); other surrogates as UTF-8."""
    out = bytearray()
    for ch in err.object[err.start : err.end]:
        c = ord(ch)
        out += bytes([c - 0xDC00]) if 0xDC80 <= c <= 0xDCFF else ch.encode("utf-8", "surrogatepass")
    return bytes(out), err.end


codecs.register_error("llamapy-surrogates", _surrogates)


def to_bytes(text: str) -> bytes:
    """Text as the bytes it came from: surrogateescape'd bytes come back as themselves."""
    return text.encode("utf-8", "llamapy-surrogates")


class StreamDecoder:
    """Text of a token stream, piece by piece, never splitting a UTF-8 sequence.

        dec = StreamDecoder(tok)
        for t in tokens: print(dec.add_token(t), end="")
        print(dec.finalize())

    The pieces joined are exactly `tok.decode(tokens)`.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = True):
        self.tokenizer = tokenizer
        self.special = special
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def add_token(self, token_id: int) -> str:
        """The new complete text after this token (may be "" while a character is incomplete)."""
        return self._dec.decode(self.tokenizer.token_to_piece(token_id, self.special))

    def finalize(self) -> str:
        """Whatever is left; an unfinished character comes out as U+FFFD."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out
