"""`LlamaGrammar`: llama-cpp-python's grammar object, on llamapy's grammar engine (llamapy.grammar)."""
from __future__ import annotations

import json
from typing import Any

from ..grammar import GrammarError
from ..grammar.options import read_grammar_file


class LlamaGrammar:
    """A GBNF grammar or a JSON schema for `grammar=` of create_completion, create_chat_completion, generate
    and sample. Build it with from_string (GBNF), from_json_schema or from_file; it is checked when built
    and compiled (once, cached by content) for the vocabulary of the Llama that uses it."""

    def __init__(self, *args: Any, _kind: str = "gbnf", _text: str = "", **kwargs: Any) -> None:
        self._kind = _kind
        self._text = _text
        self._matchers: dict[int, Any] = {}  # sample(): the running matcher per vocabulary

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> LlamaGrammar:
        """A GBNF grammar (llama.cpp's syntax); a grammar that does not parse raises ValueError."""
        if not isinstance(grammar, str):
            raise TypeError("grammar must be a string of GBNF")
        from ..grammar import gbnf

        if not grammar.lstrip().startswith("%llguidance"):
            try:
                gbnf.parse(grammar)
            except GrammarError as e:
                raise ValueError(str(e)) from None
        return cls(_kind="gbnf", _text=grammar)

    @classmethod
    def from_file(cls, file: str, verbose: bool = True) -> LlamaGrammar:
        """A GBNF grammar read from a file."""
        try:
            text = read_grammar_file(str(file))
        except Exception as e:  # noqa: BLE001 - a one-line error naming the file
            raise ValueError(str(e).replace("--grammar-file", "grammar file")) from None
        return cls.from_string(text, verbose)

    @classmethod
    def from_json_schema(cls, json_schema: str | dict[str, Any], verbose: bool = True) -> LlamaGrammar:
        """Output that is JSON valid for this schema (its JSON text, or a dict)."""
        text = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"JSON schema: not JSON: {e}") from None
        return cls(_kind="json_schema", _text=text)

    @classmethod
    def json_object(cls) -> LlamaGrammar:
        """Any JSON object (response_format {"type": "json_object"})."""
        return cls(_kind="json_schema", _text='{"type": "object"}')

    def compiled(self, tokenizer: Any, n_vocab: int) -> Any:
        """This grammar compiled for a vocabulary (ValueError when the engine refuses it)."""
        from ..grammar import Vocabulary, compile_gbnf, compile_json_schema

        vocab = Vocabulary.for_tokenizer(tokenizer, n_vocab)
        try:
            if self._kind == "json_schema":
                return compile_json_schema(self._text, vocab)
            return compile_gbnf(self._text, vocab)
        except GrammarError as e:
            raise ValueError(str(e)) from None

    def reset(self) -> None:
        """Back to the start (for sample())."""
        self._matchers.clear()

    def _matcher(self, tokenizer: Any, n_vocab: int) -> Any:
        key = id(tokenizer)
        if key not in self._matchers:
            self._matchers[key] = self.compiled(tokenizer, n_vocab).matcher()
        return self._matchers[key]

    def __repr__(self) -> str:
        return f"LlamaGrammar({self._kind}, {len(self._text)} characters)"


def constraint_of(grammar: Any, tokenizer: Any, n_vocab: int) -> Any:
    """A fresh matcher for one generation from grammar= (a LlamaGrammar, GBNF text, or a compiled grammar)."""
    if grammar is None:
        return None
    if isinstance(grammar, str):
        grammar = LlamaGrammar.from_string(grammar)
    if isinstance(grammar, LlamaGrammar):
        return grammar.compiled(tokenizer, n_vocab).matcher()
    if hasattr(grammar, "matcher"):
        return grammar.matcher()
    raise TypeError("grammar must be a LlamaGrammar (LlamaGrammar.from_string / from_json_schema / from_file)")
