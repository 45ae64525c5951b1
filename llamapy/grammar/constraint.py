"""Compiled grammars (cached by content, per vocabulary) and the per-generation matcher the sampler asks."""
from __future__ import annotations

import json
import threading
from collections import OrderedDict

import numpy as np

from ..tokenizer.core import Tokenizer
from . import gbnf, lark
from .gbnf import GrammarError
from .vocab import Vocabulary

CACHE_SIZE = 64  # compiled grammars kept per vocabulary
MAX_TEXT = 4 << 20  # grammar or schema text (bytes of UTF-8): past this it is refused before any parsing
COMPILE_STACK = 1 << 30  # bytes of stack for the grammar compiler's thread (reserved, touched as needed)
MAX_ERROR = 300  # characters of a matcher error kept in a message

# llama.cpp's json-schema-to-grammar whitespace (SPACE_RULE): nothing, one space, or newlines and an indent
JSON_WHITESPACE = r"(?: |\n{1,2}[ \t]{0,20})?"
ANY_OBJECT_SCHEMA = '{"type": "object"}'


def _one_line(msg: str) -> str:
    msg = " ".join(str(msg).split("<backtrace>")[0].split())
    return msg if len(msg) <= MAX_ERROR else msg[: MAX_ERROR - 3] + "..."


def _limits():
    import llguidance

    return llguidance.LLParserLimits(verbose_errors=False)


def _with_big_stack(fn):
    """Run fn in a thread with a large stack: the matcher's grammar compiler recurses as deep as the grammar
    nests, and a few thousand nested rules overflow the usual 8 MiB (a crash, not an error)."""
    box: list = []

    def run():
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the caller's thread
            box.append((False, e))

    with _stack_lock:
        try:
            old = threading.stack_size(COMPILE_STACK)
        except (ValueError, RuntimeError):  # a platform that refuses the size: the usual stack it is
            return fn()
        try:
            t = threading.Thread(target=run, name="grammar-compile")
            t.start()
        finally:
            threading.stack_size(old)
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


_stack_lock = threading.Lock()


class CompiledGrammar:
    """A grammar compiled for one vocabulary; `matcher()` gives a fresh matcher for each generation."""

    def __init__(self, vocab: Vocabulary, grammar: str, what: str):
        from llguidance import LLMatcher

        self.vocab = vocab
        self.what = what
        self._template = _with_big_stack(lambda: LLMatcher(vocab.ll, grammar, log_level=0, limits=_limits()))
        if self._template.is_error():
            raise GrammarError(f"{what}: {_one_line(self._template.get_error())}")

    def matcher(self) -> GrammarMatcher:
        """A matcher at the start of the grammar (a copy of the compiled one: microseconds)."""
        return GrammarMatcher(self._template.deep_copy(), self.vocab.n_vocab, self.what, self._template)


class GrammarMatcher:
    """The constraint of one generation: which tokens may come next, and the state after each token.

    Protocol (what the generation core calls, once per token):
      mask() -> bool array (n_vocab,)   tokens allowed next (all False: nothing can follow; the core ends)
      accept(token) -> None             advance with the sampled token
      is_done() -> bool                 the grammar is complete and allows nothing more, or no token can follow
      reset() -> None                   back to the start of the grammar (a new turn of a chat)
      allows(token) -> bool             one token checked without computing a mask (the core tries it first)
    Cheaper forms of mask(): bitmask() (int32 words, token i allowed iff words[i >> 5] >> (i & 31) & 1),
    allowed_ids() (sorted token ids), apply(logits) (disallowed logits set to -inf in place).
    """

    def __init__(self, m, n_vocab: int, what: str, template=None):
        self._m = m
        self._template = template
        self.n_vocab = n_vocab
        self.what = what
        self._words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._fresh = False  # _words holds the mask of the current state
        self._empty = False  # the last mask allowed no token
        self.error: str | None = None  # why the matcher stopped, when it stopped on an error

    def bitmask(self) -> np.ndarray:
        """The allowed tokens as packed bits, (n_vocab + 31) // 32 int32 words (owned by the matcher)."""
        if not self._fresh:
            if self._m.is_error():
                self._words[:] = 0
            else:
                self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
                if self._m.is_error():
                    self._words[:] = 0
            self._empty = not self._words.any()
            if self._empty and self.error is None and self._m.is_error():
                self.error = f"{self.what}: {_one_line(self._m.get_error())}"
            self._fresh = True
        return self._words

    def mask(self) -> np.ndarray:
        """Bool array (n_vocab,): the tokens allowed at the next step."""
        words = self.bitmask()
        return np.unpackbits(words.view(np.uint8), count=self.n_vocab, bitorder="little").view(bool)

    def allowed_ids(self) -> np.ndarray:
        """The token ids allowed at the next step (int64, ascending)."""
        return np.flatnonzero(self.mask())

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Set the logits of disallowed tokens to -inf, in place (logits past n_vocab too); returns logits."""
        words = self.bitmask()
        n = min(len(logits), self.n_vocab)
        banned = np.unpackbits((~words).view(np.uint8), count=n, bitorder="little").view(bool)
        np.copyto(logits[:n], -np.inf, where=banned)
        logits[n:] = -np.inf
        return logits

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (under a microsecond: no mask is computed)."""
        return not self._m.is_error() and self._m.validate_tokens([int(token)]) == 1

    def reset(self) -> None:
        """Back to the start of the grammar (llama-cli restarts it at each turn of an interactive session)."""
        self._m = self._template.deep_copy() if self._template is not None else self._m
        if self._template is None:
            self._m.reset()
        self._fresh = self._empty = False
        self.error = None

    def accept(self, token: int) -> None:
        """Advance with the sampled token. A token the grammar does not allow ends the matcher (is_done)."""
        self._fresh = False
        if not self._m.consume_token(int(token)) and self.error is None:
            self.error = f"{self.what}: {_one_line(self._m.get_error())}"

    def is_done(self) -> bool:
        """True once the grammar is complete and allows nothing more (only an end token could follow),
        after a token the grammar refused, or when no token at all can follow."""
        return self._m.is_stopped() or self._m.is_error() or (self._fresh and self._empty)

    def is_accepting(self) -> bool:
        """Whether the text so far is a complete match (an end token may follow)."""
        return self._m.is_accepting()


class GrammarCache:
    """An LRU of compiled grammars keyed by (kind, text); errors are remembered too, so a bad grammar sent
    again costs nothing."""

    def __init__(self, vocab: Vocabulary, size: int = CACHE_SIZE):
        self.vocab = vocab
        self.size = size
        self._items: OrderedDict[tuple[str, str], CompiledGrammar | GrammarError] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, text: str) -> CompiledGrammar:
        key = (kind, text)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:
            try:
                hit = _compile(self.vocab, kind, text)
            except GrammarError as e:
                hit = e
            with self._lock:
                self._items[key] = hit
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        if isinstance(hit, GrammarError):
            raise GrammarError(str(hit))
        return hit


def _compile(vocab: Vocabulary, kind: str, text: str) -> CompiledGrammar:
    from llguidance import LLMatcher

    if kind == "gbnf":
        if text.lstrip().startswith("%llguidance"):
            return CompiledGrammar(vocab, LLMatcher.grammar_from_lark(text), "grammar")
        text = lark.to_lark(gbnf.parse(text), token_id=vocab.token_id)
        return CompiledGrammar(vocab, LLMatcher.grammar_from_lark(text), "grammar")
    if kind == "json_schema":
        try:
            grammar = LLMatcher.grammar_from_json_schema(text, overrides={"whitespace_pattern": JSON_WHITESPACE})
        except ValueError as e:  # not JSON, or not an object
            raise GrammarError(f"JSON schema: {_one_line(e)}") from None
        return CompiledGrammar(vocab, grammar, "JSON schema")
    raise ValueError(f"unknown grammar kind {kind!r}")


def _vocab(tokenizer: Tokenizer | Vocabulary) -> Vocabulary:
    v = tokenizer if isinstance(tokenizer, Vocabulary) else Vocabulary.for_tokenizer(tokenizer)
    if v.cache is None:
        v.cache = GrammarCache(v)
    return v


def _check_size(text: str, what: str):
    if len(text) > MAX_TEXT or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise GrammarError(f"{what}: larger than {MAX_TEXT >> 20} MiB")


def compile_gbnf(text: str, tokenizer: Tokenizer | Vocabulary) -> CompiledGrammar:
    """A GBNF grammar (llama.cpp's syntax; text starting with `%llguidance` is read as Lark) for a vocabulary."""
    if not isinstance(text, str):
        raise GrammarError("grammar: the grammar must be text")
    _check_size(text, "grammar")
    return _vocab(tokenizer).cache.get("gbnf", text)


def schema_text(schema) -> str:
    """A JSON schema (dict/bool, or its JSON text) as JSON text; GrammarError when it is neither."""
    if isinstance(schema, str):
        return schema
    try:
        return json.dumps(schema, ensure_ascii=False)
    except RecursionError:
        raise GrammarError("JSON schema: nested too deep") from None
    except (TypeError, ValueError) as e:
        raise GrammarError(f"JSON schema: {_one_line(e)}") from None


def compile_json_schema(schema, tokenizer: Tokenizer | Vocabulary) -> CompiledGrammar:
    """A JSON schema (a dict, or its JSON text) for a vocabulary: the output is JSON that validates."""
    text = schema_text(schema)
    _check_size(text, "JSON schema")
    return _vocab(tokenizer).cache.get("json_schema", text)


def compile_json_object(tokenizer: Tokenizer | Vocabulary) -> CompiledGrammar:
    """Any JSON object (`response_format: {"type": "json_object"}`)."""
    return _vocab(tokenizer).cache.get("json_schema", ANY_OBJECT_SCHEMA)
