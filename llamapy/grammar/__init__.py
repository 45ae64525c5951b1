"""Constrained decoding: GBNF grammars, JSON schemas and "any JSON object" as token masks.

    g = compile_json_schema(schema, tokenizer)   # compiled once per vocabulary, cached by content (LRU)
    m = g.matcher()                              # one per generation
    while not m.is_done():
        logits = ...; m.apply(logits)            # or m.mask() (bool, n_vocab) / m.bitmask() / m.allowed_ids()
        t = sample(logits); m.accept(t)

The engine is llguidance (Rust; the grammar engine llama.cpp offers as an option and vLLM/SGLang use), chosen
over xgrammar on these figures, measured on the default model's 49,152-token vocabulary (2 shared cores):

    llguidance 1.9  import 70 ms, no dependencies; 20-property JSON schema compiled in 1-7 ms; mask per token
                    9-18 us median, 20-100 us mean, under 1 ms at p99 (the first mask of a new grammar
                    builds lexer tables: ~50 ms); accept 1.6 us
    xgrammar 0.2    import 3 s and needs torch, transformers and triton; the same schema in 7 ms; mask 7-8 us,
                    accept 2 us

Both are fast enough (mask + accept well under the 0.7 ms that is 10% of a ~7 ms decode step), and only
llguidance can be a core dependency. In a greedy decode of the default model (benchmarks/bench_grammar.py)
masking and accepting cost 0.3 ms per token in all, first-mask warm-up included.

GBNF text is parsed here exactly as llama.cpp parses it (gbnf.py); the vocabulary bridge is vocab.py.
"""
# the submodules load on first use (PEP 562): a command that takes no grammar never pays for them
_WHERE = {"CompiledGrammar": "constraint", "GrammarMatcher": "constraint", "compile_gbnf": "constraint",
          "compile_json_object": "constraint", "compile_json_schema": "constraint", "GrammarError": "gbnf",
          "Vocabulary": "vocab"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CompiledGrammar",
    "GrammarError",
    "GrammarMatcher",
    "Vocabulary",
    "compile_gbnf",
    "compile_json_object",
    "compile_json_schema",
]
