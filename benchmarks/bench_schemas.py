"""100 constrained generations over 10 JSON schemas on the default model: how many validate (jsonschema), and
decode speed with the constraint against the same generations without it.

    python benchmarks/bench_schemas.py [--per-schema 10] [--tokens 160] [--threads 2]

Each schema is generated with --per-schema seeds at temperatures from 0 to 1.4, through the generation core
(Sequence, Sampler, the grammar matcher) as `llamapy run -j` does. Each constrained run is followed by an
unconstrained run of the same prompt and seed for the same number of tokens (ignore_eos), so the machine's load
falls on both alike; the table gives decode t/s of each (prompt evaluation excluded). A run that reaches the
token limit before the JSON is complete counts as "cut", not as invalid. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jsonschema  # noqa: E402

from llamapy.generation.generate import eog_ids_of, steps  # noqa: E402
from llamapy.generation.params import SamplerParams  # noqa: E402
from llamapy.generation.sampling import Sampler  # noqa: E402
from llamapy.generation.sequence import Sequence  # noqa: E402
from llamapy.grammar import compile_json_schema  # noqa: E402
from llamapy.store.locate import resolve_model  # noqa: E402

OBJ = {"type": "object", "additionalProperties": False}
SCHEMAS = [
    {**OBJ, "properties": {"name": {"type": "string", "maxLength": 12},
                           "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]},
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", "blue", 7, None]},
    {**OBJ, "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "string", "pattern": "^[A-Z][a-z]{1,6}$"},
    {**OBJ, "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}},
     "required": ["tags"]},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "boolean"}]},
    {**OBJ, "properties": {"point": {**OBJ, "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                           "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                                     "required": ["x", "y"]}}, "required": ["point"]},
    {"$defs": {"c": {"type": "string", "enum": ["cat", "dog"]}}, "type": "array", "items": {"$ref": "#/$defs/c"},
     "maxItems": 3},
    {**OBJ, "properties": {"id": {"const": 42}, "when": {"type": "string", "format": "date"},
                           "note": {"type": "string", "maxLength": 10}}, "required": ["id", "when", "note"]},
]
PROMPT = "<|im_start|>user\nAnswer with JSON only.<|im_end|>\n<|im_start|>assistant\n"


def run(llm, prompt, temp, seed, n, constraint=None, ignore_eos=False):
    tok = llm.tokenizer
    eog = frozenset(eog_ids_of(llm))
    seq = Sequence(Sampler(SamplerParams(temp=temp, seed=seed, ignore_eos=ignore_eos), llm.n_vocab, eog_ids=eog),
                   llm.n_ctx, is_eog=eog.__contains__, piece=lambda t: tok.token_to_piece(t), n_predict=n,
                   constraint=constraint, ignore_eos=ignore_eos)
    t0 = None
    k = 0
    for _ in steps(llm, seq, prompt):
        if t0 is None:
            t0 = time.perf_counter()  # the first token comes with the prompt's evaluation
        k += 1
    dt = time.perf_counter() - t0 if t0 is not None else 0.0
    return seq.content + seq.flush(), seq.timings.stop_reason, k, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-schema", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    from llamapy.engine.engine import Engine

    llm = Engine(resolve_model(None), n_ctx=1024, n_threads=a.threads)
    prompt = llm.tokenizer.encode(PROMPT, parse_special=True)
    print(f"{a.per_schema} generations per schema, up to {a.tokens} tokens ({llm.desc})\n")
    print(f"{'schema':>6} {'runs':>5} {'valid':>6} {'cut':>4} {'invalid':>8} {'tokens':>7} {'t/s':>7} "
          f"{'free t/s':>9} {'ratio':>6}")
    total = {"runs": 0, "valid": 0, "cut": 0, "invalid": 0, "k": 0, "dt": 0.0, "k0": 0, "dt0": 0.0}
    for i, schema in enumerate(SCHEMAS):
        g = compile_json_schema(schema, llm.tokenizer)
        row = dict.fromkeys(total, 0)
        row["dt"] = row["dt0"] = 0.0
        for j in range(a.per_schema):
            temp, seed = round(1.4 * j / max(a.per_schema - 1, 1), 2), 1000 * i + j
            text, why, k, dt = run(llm, prompt, temp, seed, a.tokens, g.matcher())
            row["runs"] += 1
            try:
                jsonschema.validate(json.loads(text), schema)
                row["valid"] += 1
            except (json.JSONDecodeError, jsonschema.ValidationError):
                row["cut" if why == "limit" else "invalid"] += 1
                if why != "limit":
                    print(f"  invalid ({why}): {text!r}")
            if k > 1:
                _, _, k0, dt0 = run(llm, prompt, temp, seed, k, None, ignore_eos=True)
                row["k"] += k - 1
                row["dt"] += dt
                row["k0"] += k0 - 1
                row["dt0"] += dt0
        for key in total:
            total[key] += row[key]
        _print(str(i), row)
    _print("all", total)
    llm.close()


def _print(name, r):
    tps = r["k"] / r["dt"] if r["dt"] else 0.0
    tps0 = r["k0"] / r["dt0"] if r["dt0"] else 0.0
    print(f"{name:>6} {r['runs']:>5} {r['valid']:>6} {r['cut']:>4} {r['invalid']:>8} {r['k']:>7} {tps:>7.1f} "
          f"{tps0:>9.1f} {tps / tps0 if tps0 else 0:>6.2f}")


if __name__ == "__main__":
    main()
