"""The tokenizer bridge: a model's vocabulary as the matcher sees it (each token's bytes, the end tokens).

Control and unknown tokens (and user-defined tokens that look like `<...>`) are marked as special with a
leading 0xFF byte, as llguidance's llama.cpp bridge does: no grammar text can match them. The end-of-generation
tokens (EOS, EOT, ...) are the matcher's end tokens: allowed exactly when the grammar is complete.
"""
from __future__ import annotations

import weakref

from ..tokenizer.core import ATTR_CONTROL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Tokenizer

_SPECIAL = b"\xff"
_bridges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Wrapper:
    """What llguidance.LLTokenizer reads: token bytes, EOS/BOS ids, and a tokenize function."""

    def __init__(self, tok: Tokenizer, tokens: list[bytes], eos: int):
        self.tokens = tokens
        self.eos_token_id = eos
        self.bos_token_id = tok.bos_id
        self.special_token_ids = [i for i, t in enumerate(tokens) if t.startswith(_SPECIAL)]
        self.is_tokenizer_wrapper = True
        self._tok = tok

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        return self._tok.encode(text, add_special=False)


def token_bytes(tok: Tokenizer) -> list[bytes]:
    """Each token's bytes (llama_token_to_piece with special tokens rendered), special ones marked 0xFF."""
    out = []
    for i in range(tok.n_vocab):
        p = tok.token_to_piece(i, special=True)
        attr = tok.attrs[i]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN) or (
            attr & ATTR_USER_DEFINED and p.startswith(b"<") and p.endswith(b">")
        ) or not p:
            p = _SPECIAL + p
        out.append(p)
    return out


class Vocabulary:
    """A tokenizer's vocabulary built once for the matcher (~0.2 s for 49k tokens); `for_tokenizer` caches it."""

    def __init__(self, tok: Tokenizer, n_vocab: int | None = None):
        import llguidance

        self.tokenizer = tok
        self.n_vocab = max(n_vocab or 0, tok.n_vocab)
        eog = sorted(tok.eog_ids) or ([tok.eos_id] if tok.eos_id is not None else [])
        self.end_ids = eog
        tokens = token_bytes(tok)
        eos = tok.eos_id if tok.eos_id is not None else (eog[0] if eog else 0)
        self.ll = llguidance.LLTokenizer(_Wrapper(tok, tokens, eos), n_vocab=self.n_vocab, eos_token=eog or None)
        self.cache = None  # the compiled grammars of this vocabulary (constraint.GrammarCache), made on first use

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is `text` (a GBNF <text> reference), or None."""
        return self.tokenizer.find_token(text)

    @classmethod
    def for_tokenizer(cls, tok: Tokenizer, n_vocab: int | None = None) -> Vocabulary:
        """The vocabulary of `tok`, built on first use and kept while the tokenizer lives."""
        v = _bridges.get(tok)
        if v is None or (n_vocab is not None and v.n_vocab != max(n_vocab, tok.n_vocab)):
            v = _bridges[tok] = cls(tok, n_vocab)
        return v
