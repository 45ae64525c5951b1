"""llama-cli's grammar options (--grammar, --grammar-file, -j/--json-schema) as a compiled grammar."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..errors import LlamapyError

if TYPE_CHECKING:  # the grammar engine loads only when a grammar is given
    from .constraint import CompiledGrammar


def check_options(grammar: str | None = None, grammar_file: str | None = None,
                  json_schema: str | None = None) -> None:
    """At most one of the three (checked before a model is loaded)."""
    given = [f for f, v in (("--grammar", grammar), ("--grammar-file", grammar_file), ("-j", json_schema))
             if v is not None]
    if len(given) > 1:
        raise LlamapyError(f"give one of --grammar, --grammar-file and -j/--json-schema, not {' and '.join(given)}")


def read_grammar_file(path: str, option: str = "--grammar-file") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise LlamapyError(f"{option} '{path}': not UTF-8 text") from None
    except OSError as e:
        raise LlamapyError(f"{option} '{path}': {e.strerror}") from None


def schema_option(json_schema: str | None, json_schema_file: str | None) -> str | None:
    """-j's text, or -jf's file read (both given: a one-line error)."""
    if json_schema_file is None:
        return json_schema
    if json_schema is not None:
        raise LlamapyError("give -j/--json-schema or -jf/--json-schema-file, not both")
    text = read_grammar_file(json_schema_file, "--json-schema-file")
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise LlamapyError(f"--json-schema-file '{json_schema_file}': not JSON: line {e.lineno}, "
                           f"column {e.colno}: {e.msg}") from None
    return text


def grammar_from_options(tokenizer, n_vocab: int | None = None, *, grammar: str | None = None,
                         grammar_file: str | None = None, json_schema: str | None = None) -> CompiledGrammar | None:
    """The grammar the options ask for, compiled for the model's vocabulary (its first mask computed, which
    builds the lexer's tables: setup, not decoding); None when none is given. A grammar or schema that does
    not parse is a one-line LlamapyError (with its line and column)."""
    g = _compile(tokenizer, n_vocab, grammar, grammar_file, json_schema)
    if g is not None:
        g.matcher().bitmask()
    return g


def _compile(tokenizer, n_vocab, grammar, grammar_file, json_schema) -> CompiledGrammar | None:
    check_options(grammar, grammar_file, json_schema)
    if grammar is None and grammar_file is None and json_schema is None:
        return None
    from .constraint import compile_gbnf, compile_json_schema
    from .gbnf import GrammarError
    from .vocab import Vocabulary

    vocab = Vocabulary.for_tokenizer(tokenizer, n_vocab)
    if json_schema is not None:
        try:
            json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise LlamapyError(f"JSON schema: not JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
        return compile_json_schema(json_schema, vocab)
    if grammar_file is not None:
        text = read_grammar_file(grammar_file)
        try:
            return compile_gbnf(text, vocab)
        except GrammarError as e:
            raise GrammarError(f"--grammar-file '{grammar_file}': {e}") from None
    return compile_gbnf(grammar, vocab)
