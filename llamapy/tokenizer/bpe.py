"""Byte-level BPE (`tokenizer.ggml.model = gpt2`): the reference's pre-tokenizers, byte mapping and merges.

Pre-tokenizing follows the reference's `unicode_regex_split`: every pre-tokenizer type is a list of
regex stages; each stage splits every piece from the stage before, and the text between matches is kept
as a piece of its own. The reference runs each stage one of three ways (a hand-written splitter for the
GPT-2 and Llama 3 expressions, `std::regex` over a "collapsed" text with one byte per code point when the
expression names Unicode categories, `std::wregex` otherwise). The patterns below are written for `re`
(the fastest engine measured here for these classes) so that they give the same splits as those three,
with every class spelled out from one code-point table instead of `\\p{..}` and `\\s`:
  * letters / numbers / punctuation / symbols / marks come from the Unicode 15.1 character database
    (`unicodedata2` 15.1, the version the reference's tables were generated from; Python's own
    `unicodedata` is older and is the fallback);
  * whitespace is the reference's fixed list of 25 code points (`\\s` in every mode, because the
    reference maps other whitespace to U+000B before matching);
  * in collapsed mode the reference's ASCII tables leave `~` out of \\p{S}, so the collapsed symbol class
    does too.

The merges of the pre-tokenized words are in tokenizer_bpe_merges.
"""
from __future__ import annotations

import bisect
import functools
import re
import warnings

# -- code-point classes -------------------------------------------------------------------------

WHITESPACE = tuple(range(0x09, 0x0E)) + (0x20, 0x85, 0xA0, 0x1680) + tuple(range(0x2000, 0x200B)) + (
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
)

# Beyond these code points Unicode 15.1 assigns only format characters, variation selectors (marks,
# E0100..E01EF) and private use; tests/test_tokenizer_unicode.py checks this against a full scan.
_SCAN_LIMITS = ((0, 0x323B0), (0xE0000, 0xE0200))


def _unicodedata():
    try:
        import unicodedata2 as ud  # the reference's Unicode version

        return ud
    except ImportError:  # pragma: no cover - depends on the install
        import unicodedata as ud

        return ud


def unicode_version() -> str:
    """The Unicode version of the character database the pre-tokenizer classes come from."""
    return _unicodedata().unidata_version


def scan_category_ranges(ud) -> dict[str, tuple[tuple[int, int], ...]]:
    """Inclusive code-point ranges of each major category (L, N, P, S, M, Z, C) in database `ud`."""
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in "LNPSMZC"}
    for lo, hi in _SCAN_LIMITS:
        cats = list(map(ud.category, map(chr, range(lo, hi))))
        start = lo
        prev = cats[0][0]
        for i, c in enumerate(cats, lo):
            k = c[0]
            if k != prev:
                out[prev].append((start, i - 1))
                start, prev = i, k
        out[prev].append((start, hi - 1))
    return {k: tuple(v) for k, v in out.items()}


@functools.cache
def category_ranges() -> dict[str, tuple[tuple[int, int], ...]]:
    """scan_category_ranges of the database in use: from the table of llamapy/tokenizer/unicode_categories.py when it
    was made from the same Unicode version, else by scanning."""
    from . import unicode_categories

    ud = _unicodedata()
    if ud.unidata_version != unicode_categories.VERSION:
        return scan_category_ranges(ud)
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in "LNPSMZC"}
    for (_, end), runs in zip(_SCAN_LIMITS, unicode_categories.RUNS):
        items = runs.split()  # "<category><first code point, hex>"
        starts = [int(item[1:], 16) for item in items] + [end]
        for item, lo, nxt in zip(items, starts, starts[1:]):
            out[item[0]].append((lo, nxt - 1))
    return {k: tuple(v) for k, v in out.items()}


def _esc(c: int) -> str:
    ch = chr(c)
    if c < 0x20 or c == 0x7F or ch in "\\]^-[":
        return f"\\x{c:02x}" if c < 0x100 else "\\" + ch
    return ch


def _cls(ranges) -> str:
    """Regex class body for inclusive code-point ranges (literal characters: they compile fastest)."""
    return "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in ranges)


def _ranges(body: str) -> list[tuple[int, int]]:
    """Inclusive ranges of a plain class body like "A-Za-zµÀ-Ö" (no escapes)."""
    out, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            out.append((ord(body[i]), ord(body[i + 2])))
            i += 3
        else:
            out.append((ord(body[i]), ord(body[i])))
            i += 1
    return out


def _minus(ranges, cps) -> list[tuple[int, int]]:
    """Ranges with some code points taken out."""
    out = []
    for lo, hi in ranges:
        for c in sorted(c for c in cps if lo <= c <= hi):
            if lo < c:
                out.append((lo, c - 1))
            lo = c + 1
        if lo <= hi:
            out.append((lo, hi))
    return out


@functools.cache
def _classes(bmp_only: bool) -> dict[str, str]:
    cr = category_ranges()

    def non_ascii(cat):
        # in the collapsed text every non-ASCII whitespace is U+000B, whatever its category
        rs = [(max(lo, 0x80), hi) for lo, hi in cr[cat] if hi >= 0x80]
        if bmp_only:
            rs = [(lo, min(hi, 0xFFFF)) for lo, hi in rs if lo <= 0xFFFF]
        return _minus(rs, WHITESPACE)

    ascii_p = _ranges("!-#%-*,-/:;?@[-]_{}")
    ascii_s_collapsed = _ranges("$+<=>^`|")  # the reference's collapsed tables have no '~'
    return {
        "W": _cls((c, c) for c in WHITESPACE),
        "L": _cls(_ranges("A-Za-z") + non_ascii("L")),
        "N": _cls(_ranges("0-9") + non_ascii("N")),
        "Pc": _cls(ascii_p + non_ascii("P")),
        "Sc": _cls(ascii_s_collapsed + non_ascii("S")),
        "Mc": _cls(non_ascii("M")),
    }


# `re` tests a character against a class's ranges above U+FFFF one by one, which makes every class
# with such ranges slow for all text. So the classes keep their BMP part only, and before splitting,
# each character above U+FFFF is replaced by a BMP stand-in of the same category (one that no
# pattern names literally); the pieces are then cut from the original text at the same offsets.
_STAND_INS = {"L": "\u00aa", "N": "\u00b2", "P": "\u00a1", "S": "\u00a6", "M": "\u0300", "Z": "\u0378",
              "C": "\u0378"}
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


@functools.cache
def _range_table() -> tuple[list[int], list[tuple[int, str]]]:
    """All category ranges sorted: their starts, and (end, category) of each."""
    rows = sorted((lo, hi, cat) for cat, rs in category_ranges().items() for lo, hi in rs)
    return [r[0] for r in rows], [(r[1], r[2]) for r in rows]


@functools.lru_cache(maxsize=4096)
def _stand_in(ch: str) -> str:
    starts, rows = _range_table()
    cp = ord(ch)
    i = bisect.bisect_right(starts, cp) - 1
    end, cat = rows[i]
    return _STAND_INS[cat if cp <= end else "C"]  # past the scanned ranges: unassigned or private use


def _literal(body: str) -> str:
    """A plain class body with the whitespace code points taken out: the reference turns non-ASCII
    whitespace into U+000B before matching, so a range that spans one never matches it."""
    return _cls(_minus(_ranges(body), WHITESPACE))


def _pat(template: str, bmp_only: bool) -> re.Pattern:
    c = _classes(bmp_only)
    text = template
    for k in ("Pc", "Sc", "Mc", "W", "L", "N"):
        text = text.replace("{" + k + "}", c[k])
    return re.compile(text)


# -- the reference's pre-tokenizer expressions, as `re` templates ------------------------------------
# {L} {N} {W}: letters, numbers, whitespace; {Pc} {Sc} {Mc}: punctuation, symbols, marks as seen by a
# collapsed std::regex. Comments give the reference expression each one stands for.

# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)  (hand-written splitter); text
# between its matches is always one whitespace character, so "|[{W}]" yields the same pieces
_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]"
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
# (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
_LLAMA3 = (
    _CONTRACTIONS
    + "|[^\\r\\n{L}{N}]?[{L}]+|[{N}]{1,3}| ?[^{W}{L}{N}]+[\\r\\n]*|[{W}]*[\\r\\n]+|[{W}]+(?![^{W}])|[{W}]+"
)
_QWEN2 = _LLAMA3.replace("[{N}]{1,3}", "[{N}]")
_DEEPSEEK_LLM_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐ"
    "ῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃"
)
# literal classes lose the whitespace inside their ranges (see _literal)
_CJK = "[" + _literal("一-龥ࠀ-一가-퟿") + "]+"
_BLOOM = " ?[^()|.,!?…。，、।۔،{W}]+"  # " ?[^(\s|.,!?…。，、।۔،)]+"

_STAGES: dict[str, tuple[str, ...]] = {
    "default": ("[{Pc}$+<=>^~|]+", _GPT2, "[{N}]+", "[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "starcoder": ("[{N}]", _GPT2),
    "falcon": ("[{Pc}$+<=>^~|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "deepseek-llm": (
        "[\\r\\n]",
        "[{W}]?[" + _literal(_DEEPSEEK_LLM_LETTERS) + "]+",
        "[{W}]?[" + _literal("!-/:-~！-／：-～‘-‟　-。") + "]+",
        "[{W}]+\\Z",
        _CJK,
        "[{N}]+",
    ),
    "deepseek-coder": ("[\\r\\n]", "[{W}]?[{L}]+", "[{W}]?[{Pc}]+", _CJK, "[{N}]"),
    "deepseek-v3": (
        "[{N}]{1,3}",
        "[" + _literal("一-龥぀-ゟ゠-ヿ") + "]+",
        ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n{L}{Pc}{Sc}]?[{L}{Mc}]+"
        "| ?[{Pc}{Sc}]+[\\r\\n]*|[{W}]*[\\r\\n]+|[{W}]+(?![^{W}])|[{W}]+"),
    ),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, "[{N}]"),
    "tekken": (
        ("[^\\r\\n{L}{N}]?(?:(?=[{L}])[^a-z])*(?:(?=[{L}])[^A-Z])+"
        "|[^\\r\\n{L}{N}]?(?:(?=[{L}])[^a-z])+(?:(?=[{L}])[^A-Z])*"
        "|[{N}]| ?[^{W}{L}{N}]+[\\r\\n/]*|[{W}]*[\\r\\n]+|[{W}]+(?![^{W}])|[{W}]+"),
    ),
    "chameleon": (
        "<sentinel:[0-9]+>",
        "(?:IMGIMG)(?:(?:A|B|C|D|E|F|G|H|I){1,4})Z",
        "(?:[\\t\\n]|    |  )",
        "[{N}]",
        "[{Pc}!-/:-@\\[-`{-~]",
        _GPT2,
    ),
}
# patterns whose matches cover every character, so a stage is one findall
_COVERING = {_GPT2, _LLAMA3, _QWEN2}


class PreType:
    """What a `tokenizer.ggml.pre` name selects: the split stages and the reference's per-name defaults."""

    def __init__(self, stages: str, ignore_merges=False, add_bos=False, no_bos_token=False):
        self.stages = stages
        self.ignore_merges = ignore_merges
        self.add_bos = add_bos
        self.no_bos_token = no_bos_token


_LLAMA3_PRE = PreType("llama3", ignore_merges=True, add_bos=True)
PRE_TYPES: dict[str, PreType] = {
    "default": PreType("default"),
    **{n: _LLAMA3_PRE for n in ("llama3", "llama-v3", "llama-bpe", "falcon3")},
    "dbrx": PreType("llama3"),
    "smaug-bpe": PreType("llama3"),
    "deepseek-llm": PreType("deepseek-llm"),
    "deepseek-coder": PreType("deepseek-coder"),
    "deepseek-v3": PreType("deepseek-v3"),
    "falcon": PreType("falcon"),
    **{n: PreType("gpt2") for n in (
        "mpt", "olmo", "jais", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en",
        "jina-v2-es", "jina-v2-de", "jina-v2-code", "roberta-bpe",
    )},
    **{n: PreType("starcoder") for n in (
        "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
    )},
    **{n: PreType("qwen2") for n in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")},
    **{n: PreType("bloom") for n in ("poro-chat", "bloom", "gpt3-finnish")},
    "chatglm-bpe": PreType("llama3", no_bos_token=True),
    "viking": PreType("viking"),
    "tekken": PreType("tekken", ignore_merges=True, add_bos=True),
    "chameleon": PreType("chameleon", add_bos=True),
}


class TokenizerWarning(UserWarning):
    """A tokenizer setting that llamapy replaced with a default (the ids may differ from the model's own)."""


def resolve_pre(name: str | None) -> tuple[str, PreType]:
    """The pre-tokenizer for a `tokenizer.ggml.pre` value; missing or unknown ones warn and use 'default'."""
    if not name:
        warnings.warn(
            "tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer; generation quality may be "
            "degraded (re-convert the model)", TokenizerWarning, stacklevel=3,
        )
        return "default", PRE_TYPES["default"]
    pt = PRE_TYPES.get(name)
    if pt is None:
        warnings.warn(
            f"unknown pre-tokenizer '{name}': using the 'default' pre-tokenizer instead; token ids may differ "
            "from the model's own", TokenizerWarning, stacklevel=3,
        )
        return "default", PRE_TYPES["default"]
    return name, pt


# the one pre-tokenizer whose literal classes hold characters above U+FFFF
_FULL_CLASSES = {"deepseek-llm"}


@functools.cache
def compiled_stages(stages: str) -> tuple[tuple[re.Pattern, bool], ...]:
    """The compiled patterns of a stage list; each is either a findall pattern whose matches cover every
    character, or a split pattern (one capturing group) whose gaps are pieces too."""
    bmp = stages not in _FULL_CLASSES
    return tuple(
        (_pat(t, bmp), True) if t in _COVERING else (_pat("(" + t + ")", bmp), False) for t in _STAGES[stages]
    )


def pre_split(text: str, stages: str) -> list[str]:
    """Split text into the words that BPE merges never cross (the reference's unicode_regex_split)."""
    if not text:
        return []
    if stages not in _FULL_CLASSES and _ASTRAL.search(text):
        pieces = _split(_ASTRAL.sub(lambda m: _stand_in(m.group()), text), stages)
        out, pos = [], 0
        for p in pieces:
            out.append(text[pos : pos + len(p)])
            pos += len(p)
        return out
    return _split(text, stages)


def _split(text: str, stages: str) -> list[str]:
    pieces = [text]
    for pat, covering in compiled_stages(stages):
        out: list[str] = []
        if covering:
            for p in pieces:
                out += pat.findall(p)
        else:
            for p in pieces:
                out += [x for x in pat.split(p) if x]
        pieces = out
    return pieces


# -- bytes <-> byte-level characters ------------------------------------------------------------------

def _byte_chars() -> list[str]:
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


BYTE_CHARS = _byte_chars()  # byte -> its character in byte-level vocabularies
CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}
_TO_BYTE_CHARS = {b: c for b, c in enumerate(BYTE_CHARS)}  # str.translate table over latin-1 text
# byte-level text -> latin-1 text of its bytes; characters that are not byte characters become U+FFFF
_FROM_BYTE_CHARS = {ord(c): chr(b) for b, c in enumerate(BYTE_CHARS)}
_FROM_BYTE_CHARS.update({b: "\uffff" for b in range(256) if chr(b) not in CHAR_BYTES})


def to_byte_chars(b: bytes) -> str:
    """UTF-8 bytes as the byte-level characters BPE vocabularies are written in."""
    return b.decode("latin-1").translate(_TO_BYTE_CHARS)


def decode_byte_chars(text: str) -> bytes:
    """A byte-level token text back to bytes; characters outside the byte alphabet are written as the
    reference writes them: `[UNK_BYTE_0x<hex of the character's UTF-8><whole token text>]`."""
    t = text.translate(_FROM_BYTE_CHARS)
    try:
        if "\uffff" not in t:
            return t.encode("latin-1")
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for ch in text:
        b = CHAR_BYTES.get(ch)
        if b is not None:
            out.append(b)
        else:
            raw = ch.encode("utf-8", "surrogatepass")
            out += b"[UNK_BYTE_0x" + raw.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


def cpts_from_utf8(b: bytes) -> str:
    """Bytes as code points the way the reference reads them: a byte that does not start a sequence
    of the length its lead bits announce (continuation bits only are checked, so overlong forms and
    surrogates pass) becomes U+FFFD and reading goes on at the next byte."""
    out = []
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            out.append(c)
            i += 1
            continue
        k = 1 if 0xC0 <= c < 0xE0 else 2 if 0xE0 <= c < 0xF0 else 3 if 0xF0 <= c < 0xF8 else 0
        if k == 0 or i + k >= n or any(t & 0xC0 != 0x80 for t in b[i + 1 : i + 1 + k]):
            out.append(0xFFFD)
            i += 1
            continue
        cp = c & (0x1F, 0x0F, 0x07)[k - 1]
        for t in b[i + 1 : i + 1 + k]:
            cp = (cp << 6) | (t & 0x3F)
        out.append(cp if cp <= 0x10FFFF else 0xFFFD)
        i += k + 1
    return "".join(map(chr, out))


# pre-tokenizers whose vocabularies skip the reference's clean_up_tokenization_spaces in detokenize
NO_CLEAN_SPACES = {
    "deepseek-llm", "deepseek-coder", "deepseek-v3", "command-r", "qwen2", "deepseek-r1-qwen", "poro-chat",
    "viking", "tekken", "smollm", "chameleon",
}


def clean_spaces(b: bytes) -> bytes:
    """The reference's clean_up_tokenization_spaces passes over detokenized bytes."""
    t = bytearray(b)
    out = bytearray(t[:1])
    for i in range(1, len(t)):  # " ?" " !" " ." " ,"
        if t[i - 1] == 0x20 and t[i] in b"?!.,":
            out.pop()
        out.append(t[i])
    t, out = out, bytearray(out[:1])
    i = 1
    while i < len(t):  # " ' " -> "'"
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            out.append(x)
            t[i + 1] = 0  # the reference blanks the skipped space in place; the next check sees it
            i += 2
            continue
        out.append(x)
        i += 1
    t, out = out, bytearray(out[:1])
    for i in range(1, len(t)):  # " 's" " 'm" " 're" " 've"
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < len(t) and (x1, t[i + 2]) in ((0x72, 0x65), (0x76, 0x65))):
                out.pop()
        out.append(x)
    return bytes(out)
