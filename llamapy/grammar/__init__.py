"""Constrained decoding: GBNF grammars, JSON schemas and "any JSON object" as token masks.

(engine choice and figures: see below)
"""
from .constraint import (
    CompiledGrammar,
    GrammarMatcher,
    compile_gbnf,
    compile_json_object,
    compile_json_schema,
)
from .gbnf import GrammarError
from .vocab import Vocabulary

__all__ = [
    "CompiledGrammar",
    "GrammarError",
    "GrammarMatcher",
    "Vocabulary",
    "compile_gbnf",
    "compile_json_object",
    "compile_json_schema",
]
