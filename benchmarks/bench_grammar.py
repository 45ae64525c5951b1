"""Constrained decoding cost on the default model's vocabulary: compile time, mask and accept time per token,
and greedy decoding with and without the constraint (the issue's target: constrained >= 0.9x unconstrained).

    python benchmarks/bench_grammar.py [--tokens 96] [--threads 2] [-r 3] [--no-decode]

Mask and accept times come from random walks (random allowed tokens until the grammar is complete); the decode
rows drive Engine.eval with greedy argmax over the masked logits. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llamapy.grammar import Vocabulary, compile_gbnf, compile_json_object, compile_json_schema
from llamapy.grammar.constraint import GrammarCache
from llamapy.store.locate import resolve_model
from llamapy.tokenizer.core import Tokenizer

JSON_GBNF = r'''root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
'''

KINDS = [{"type": "string", "maxLength": 24}, {"type": "integer", "minimum": 0}, {"type": "number"},
         {"type": "boolean"}, {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
         {"enum": ["red", "green", "blue"]}, {"type": "string", "format": "date"}]


def schema_20() -> dict:
    props = {f"field_{i}": KINDS[i % len(KINDS)] for i in range(20)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def walk(compiled, seed: int, limit: int = 400) -> tuple[list[float], list[float]]:
    """Mask and accept times (seconds) of one random walk over allowed tokens."""
    rng = np.random.default_rng(seed)
    m = compiled.matcher()
    mt, at = [], []
    for _ in range(limit):
        if m.is_done():
            break
        t0 = time.perf_counter()
        mask = m.mask()
        t1 = time.perf_counter()
        ids = np.flatnonzero(mask)
        tok = int(rng.choice(ids))
        t2 = time.perf_counter()
        m.accept(tok)
        t3 = time.perf_counter()
        mt.append(t1 - t0)
        at.append(t3 - t2)
    return mt, at


def decode(engine, tok, prompt: list[int], n: int, compiled=None) -> tuple[float, int, str]:
    """Greedy decoding of up to n tokens: seconds per token, tokens made, text."""
    engine.kv_clear()
    logits = engine.eval(prompt)
    m = compiled.matcher() if compiled else None
    out = []
    t_constraint = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        if m is not None:
            t1 = time.perf_counter()
            if m.is_done():
                break
            m.apply(logits)
            t_constraint += time.perf_counter() - t1
        t = int(np.argmax(logits))
        if t in tok.eog_ids:
            break
        if m is not None:
            t1 = time.perf_counter()
            m.accept(t)
            t_constraint += time.perf_counter() - t1
        out.append(t)
        logits = engine.eval([t])
    dt = time.perf_counter() - t0
    k = max(len(out), 1)
    return dt / k, t_constraint / k, len(out), tok.decode(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("-r", "--reps", type=int, default=3)
    a = ap.parse_args()

    model = resolve_model(None)
    tok = Tokenizer.from_gguf(model)
    t0 = time.perf_counter()
    vocab = Vocabulary.for_tokenizer(tok)
    t_vocab = time.perf_counter() - t0
    print(f"vocabulary: {tok.n_vocab} tokens, bridge built in {t_vocab * 1e3:.0f} ms (once per model)\n")

    cases = [("JSON schema, 20 properties", "schema", schema_20()), ("any JSON object", "object", None),
             ("GBNF json.gbnf", "gbnf", JSON_GBNF)]
    print(f"{'constraint':<28} {'compile ms':>10} {'cached us':>10} {'mask us p50':>12} {'mask us mean':>13} "
          f"{'mask us p99':>12} {'accept us':>10} {'tokens':>7}")
    compiled_by = {}
    for name, kind, arg in cases:
        vocab.cache = GrammarCache(vocab)  # a cold cache: the first compile is the real one
        t0 = time.perf_counter()
        c = (compile_json_schema(arg, vocab) if kind == "schema" else compile_json_object(vocab) if kind == "object"
             else compile_gbnf(arg, vocab))
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(100):
            (compile_json_schema(arg, vocab) if kind == "schema" else compile_json_object(vocab)
             if kind == "object" else compile_gbnf(arg, vocab)).matcher()
        t_cached = (time.perf_counter() - t0) / 100
        mts, ats = [], []
        for seed in range(5):
            mt, at = walk(c, seed)
            mts += mt[1:]  # the first mask of a fresh grammar builds the lexer's tables
            ats += at
        mts_a, ats_a = np.array(mts) * 1e6, np.array(ats) * 1e6
        print(f"{name:<28} {t_compile * 1e3:>10.2f} {t_cached * 1e6:>10.1f} {np.median(mts_a):>12.1f} "
              f"{mts_a.mean():>13.1f} {np.percentile(mts_a, 99):>12.1f} {np.median(ats_a):>10.1f} {len(mts):>7}")
        compiled_by[kind] = c

    if a.no_decode:
        return
    from llamapy.engine.engine import Engine

    engine = Engine(model, n_ctx=1024, n_threads=a.threads)
    prompt = tok.encode("<|im_start|>user\nDescribe a person as JSON with name, age and city.<|im_end|>\n"
                        "<|im_start|>assistant\n", parse_special=True)
    print(f"\ngreedy decode, up to {a.tokens} tokens, best of {a.reps} runs ({engine.desc})")
    print(f"{'run':<28} {'ms/token':>9} {'mask+accept ms':>15} {'tokens':>7} {'t/s':>7} {'ratio':>6}")
    decode(engine, tok, prompt, 8)  # warm up
    runs = [("unconstrained", None), ("any JSON object", compiled_by["object"]),
            ("JSON schema, 20 properties", compiled_by["schema"])]
    best: dict[str, tuple] = {}
    for _ in range(a.reps):  # interleaved, so that the machine's load falls on every run alike
        for name, c in runs:
            r = decode(engine, tok, prompt, a.tokens, c)
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    base = best["unconstrained"][0]
    for name, _ in runs:
        per, cons, n, text = best[name]
        print(f"{name:<28} {per * 1e3:>9.2f} {cons * 1e3:>15.3f} {n:>7} {1 / per:>7.1f} {base / per:>6.2f}")
        if name != "unconstrained" and n < a.tokens:
            json.loads(text)  # a finished constrained output is JSON
    engine.close()


if __name__ == "__main__":
    main()
