"""Byte-level BPE merges: the ranks from `tokenizer.ggml.merges` and the merge loop of each word.

A word's merges run in the `tokenizers` library's BPE model (Rust) when it gives the reference's ids
(`build_native` says when: then both pick the lowest-rank pair, leftmost first, and skip stale pairs the
same way). Otherwise, and for text carrying invalid UTF-8, `BPEMerger` does it in Python exactly as the
reference does. Building the library's model takes longer than merging a short prompt in Python, so it
is built once more than NATIVE_AFTER distinct words have been merged (or when asked for): the first
token of a chat comes sooner, and long texts still run in the library.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from itertools import repeat

from .bpe import BYTE_CHARS, _cls, to_byte_chars
from .merging import merge_symbols, symbol_ids, uncached


def parse_merges(merges) -> dict[tuple[str, str], int]:
    """Merge ranks from `tokenizer.ggml.merges` ("left right", split at the first space after the first
    character); a pair listed twice keeps its first rank, as in the reference."""
    pairs = [m.split(" ", 1) for m in merges]
    if any(len(p) != 2 or not p[0] for p in pairs):  # a left part starting with a space, or no space
        pairs = []
        for m in merges:
            pos = m.find(" ", 1)
            pairs.append((m[:pos], m[pos + 1 :]) if pos >= 0 else ("", ""))
    n = len(pairs)
    return dict(zip(map(tuple, reversed(pairs)), range(n - 1, -1, -1)))


def joined_ranks(merges: list[str]) -> tuple[dict[str, int], str]:
    """parse_merges keyed by `left + sep + right`. When every merge holds exactly one space, sep is that space
    and the keys are the merge strings themselves: no splitting (most of the cost of loading the ranks; a
    merge starting with its space has an empty left part either way, which no pair of symbols matches).
    Otherwise sep is a character no merge holds."""
    n = len(merges)
    if all(map(str.__contains__, merges, repeat(" "))) and " ".join(merges).count(" ") == 2 * n - 1:
        return dict(zip(reversed(merges), range(n - 1, -1, -1))), " "
    text = "".join(merges)
    sep = next(chr(c) for c in itertools.count(1) if chr(c) not in text)
    return {a + sep + b: r for (a, b), r in parse_merges(merges).items()}, sep


class BPEMerger:
    """Byte-level BPE over pre-tokenized words, with a cache of the words seen.

    A word's merges run in the `tokenizers` library's BPE model once it is built (and when the word has
    no character the guard singles out), else in `_word`: the reference's merge loop in Python (lowest
    rank first, then leftmost; a final symbol that is not a token is written as the tokens of its single
    bytes, when they exist).
    """

    CACHE_MAX = 200_000
    NATIVE_AFTER = 256  # distinct words merged in Python before the library's model is built

    def __init__(self, token_to_id: dict[str, int], merges: list[str], ignore_merges: bool, native: bool = True):
        self.token_to_id = token_to_id
        self.merges = merges
        self.ranks, self.sep = joined_ranks(merges)
        self.ignore_merges = ignore_merges
        self._want_native = native
        self._native = self.guard = None
        self._python_words = 0
        self.cache: dict[str, tuple[int, ...]] = {}

    @property
    def native(self):
        """The library's BPE model (built on first use), or None when it can't give the reference's ids."""
        if self._want_native:
            ranks = parse_merges(self.merges)
            self._native, self.guard = build_native(self.token_to_id, sorted(ranks, key=ranks.__getitem__),
                                                    self.ignore_merges)
            self._want_native = False
        return self._native

    def encode_words(self, words: list[str]) -> list[int]:
        """Token ids of pre-tokenized words (plain text, valid UTF-8)."""
        cache, missing = uncached(self, words, self.CACHE_MAX)
        if missing:
            self._python_words += len(missing)
            native = self.native if self._python_words > self.NATIVE_AFTER else self._native
            guard = self.guard
            for w in missing:
                bc = to_byte_chars(w.encode("utf-8"))
                if native is not None and (guard is None or not guard.search(w)):
                    cache[w] = tuple(t.id for t in native.tokenize(bc))
                else:
                    cache[w] = self._word(bc)
        return list(itertools.chain.from_iterable(map(cache.__getitem__, words)))

    def _word(self, w: str) -> tuple[int, ...]:
        vocab = self.token_to_id
        if self.ignore_merges and w in vocab:
            return (vocab[w],)
        ranks, sep = self.ranks, self.sep
        sym = merge_symbols(list(w), lambda a, b: ranks.get(a + sep + b))  # "" once merged into its left

        def byte_ids(s: str) -> Iterator[int]:
            for byte in s.encode("utf-8", "surrogatepass"):
                t = vocab.get(bytes([byte]).decode("utf-8", "surrogateescape"))
                if t is not None:
                    yield t

        return tuple(symbol_ids(sym, vocab, byte_ids))


# bytes that never occur in UTF-8 text: a vocabulary may leave their characters out
_NOT_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])


def build_native(token_to_id: dict[str, int], merges: list[tuple[str, str]], ignore_merges: bool):
    """A `tokenizers` BPE model that gives the reference's ids for this vocabulary, or None when it
    can't; with it, a pattern matching the words that must still go through the Python merge loop.

    The library skips a character that has no token, letting its neighbours merge; the reference
    keeps it in place (it blocks merges, then writes nothing). So every byte character must be a
    token, except bytes that UTF-8 text never holds and ASCII or lead bytes (text holding characters
    made with those goes the Python way); and every merge's parts and result must be tokens (the
    library refuses others).
    """
    missing = [b for b in range(256) if BYTE_CHARS[b] not in token_to_id and b not in _NOT_IN_UTF8]
    guard_ranges = []  # the characters whose UTF-8 holds a missing byte
    for b in missing:
        if b < 0x80:
            guard_ranges.append((b, b))
        elif b < 0xC0:
            return None, None  # a continuation byte: too many characters to single out
        else:
            bits, shift = (0x1F, 6) if b < 0xE0 else (0x0F, 12) if b < 0xF0 else (0x07, 18)
            lo = (b & bits) << shift
            guard_ranges.append((lo, lo + (1 << shift) - 1))
    # (the library itself refuses merges whose parts or result are not tokens)
    vocab = token_to_id
    if not is_plain("".join(vocab)):
        vocab = {t: i for t, i in token_to_id.items() if is_plain(t)}
    try:
        from tokenizers import models

        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False)
    except Exception:  # noqa: BLE001 - any refusal by the library means: use the Python merger
        return None, None
    guard = re.compile("[" + _cls(guard_ranges) + "]") if guard_ranges else None
    return model, guard


def is_plain(t: str) -> bool:
    """Whether the text encodes as UTF-8: no lone surrogates (which stand for undecodable bytes)."""
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
