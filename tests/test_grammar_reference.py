"""llama.cpp's own grammar and JSON-schema test cases, run against llamapy's grammar engine.

The cases (tests/data/grammar_reference_cases.json) are those of llama.cpp's test-grammar-parser,
test-grammar-integration and test-json-schema-to-grammar:
- parser: each grammar parses to the same rule ids and the same elements (llama.cpp's element list), or fails;
- integration: each grammar or schema accepts its passing strings and rejects its failing ones (fed byte by
  byte, so no tokenization is in the way);
- schema-to-grammar: llama.cpp checks the GBNF text it writes, which llamapy does not write (its engine
  compiles the schema itself). Here each case must compile (or fail, as there), and both languages must
  agree on strings: strings drawn from llamapy's compiled schema are accepted by llama.cpp's expected grammar
  (compiled by llamapy's GBNF parser) and validate with jsonschema, and strings drawn from that grammar are
  accepted by llamapy's compiled schema.
Where llamapy's engine (llguidance) knowingly differs, the case is listed in a KNOWN_* table with the reason,
and the test checks that the difference is still exactly that (so a change shows up)."""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
from test_grammar import BYTES, accepts, matches

from llamapy.grammar import GrammarError, compile_json_schema, gbnf

CASES = json.loads((pathlib.Path(__file__).parent / "data" / "grammar_reference_cases.json").read_text("utf-8"))


def schema_accepts(schema: str, text: str) -> bool:
    return matches(compile_json_schema(schema, BYTES), text)


# -- test-grammar-parser ----------------------------------------------------------------------------------------
def flatten(g: gbnf.Grammar) -> list[list]:
    """The rules as llama.cpp's element list: each alternative's elements, ALT between, END after a rule."""
    out: list[list] = []
    for alts in g.rules:
        for k, alt in enumerate(alts or []):
            if k:
                out.append(["ALT", 0])
            for e in alt:
                if e.kind == gbnf.REF:
                    out.append(["RULE_REF", e.rule])
                elif e.kind == gbnf.ANY:
                    out.append(["CHAR_ANY", 0])
                else:
                    for j, (lo, hi) in enumerate(e.ranges):
                        first = "CHAR_NOT" if e.kind == gbnf.CHAR_NOT else "CHAR"
                        out.append([first if j == 0 else "CHAR_ALT", chr(lo)])
                        if hi != lo:
                            out.append(["CHAR_RNG_UPPER", chr(hi)])
        out.append(["END", 0])
    return out


def _norm(elements: list[list]) -> list[list]:
    return [[k, chr(v) if isinstance(v, int) and k.startswith("CHAR") and k != "CHAR_ANY" else v]
            for k, v in elements]


@pytest.mark.parametrize("i", range(len(CASES["parser"])))
def test_parser_cases(i):
    case = CASES["parser"][i]
    if not case["ok"]:
        with pytest.raises(GrammarError):
            gbnf.parse(case["grammar"])
        return
    g = gbnf.parse(case["grammar"])
    assert dict(zip(g.names, range(len(g.names)))) == case["symbols"]
    assert flatten(g) == _norm(case["elements"])


# -- test-grammar-integration -------------------------------------------------------------------------------------
# (case name, string) -> why llamapy's answer differs from llama.cpp's
DIGITS = ("llama.cpp caps an integer with a minimum at 16 digits; llguidance takes any length, which JSON "
          "Schema allows")
SPEC = "JSON Schema (and llguidance) says so; llama.cpp's converter is stricter here"
KNOWN_INTEGRATION: dict[tuple[str, str], str] = {
    ("min 0", "100000000000000000000000000000000"): DIGITS,
    ("min 2", "12345678900000000"): DIGITS,
    # {} allows any value (llama.cpp reads it as "any object")
    ("empty schema (object)", "[]"): SPEC,
    ("empty schema (object)", "null"): SPEC,
    ("empty schema (object)", '""'): SPEC,
    ("empty schema (object)", "true"): SPEC,
    # without "type": "array", items/minItems/maxItems constrain arrays only: a number is valid
    ("min+max items", "1"): SPEC,
    # properties without additionalProperties: other properties are allowed (llama.cpp closes the object)
    ("object properties", '{ "number": 1600, "street_name": "Pennsylvania", "street_type":"Avenue", '
                          '"direction":"NW"}'): SPEC,
}
# case name -> the keyword llguidance refuses (a one-line error naming it, instead of llama.cpp ignoring it)
KNOWN_REFUSED = {"required props": "uniqueItems"}
# llama.cpp reads this invalid schema ("prefixItems" must be a list) as "items"; llguidance refuses it
KNOWN_REFUSED_SCHEMA: dict[str, str] = {"string array": "prefixItems must be an array",
                                        "nullable string array": "prefixItems must be an array"}


def _integration_ids():
    return [f"{c['kind']}:{c['name']}" for c in CASES["integration"]]


@pytest.mark.parametrize("i", range(len(CASES["integration"])), ids=_integration_ids())
def test_integration_cases(i):
    case = CASES["integration"][i]
    if case["name"] in KNOWN_REFUSED:
        with pytest.raises(GrammarError, match=KNOWN_REFUSED[case["name"]]):
            compile_json_schema(case["text"], BYTES)
        return
    check = (lambda s: accepts(case["text"], s)) if case["kind"] == "gbnf" else \
        (lambda s: schema_accepts(case["text"], s))
    wrong = []
    for s, want in [(s, True) for s in case["pass"]] + [(s, False) for s in case["fail"]]:
        got = check(s)
        known = KNOWN_INTEGRATION.get((case["name"], s))
        if known is not None:
            assert got != want, f"{case['name']}: {s!r} now agrees with llama.cpp; drop it from KNOWN_INTEGRATION"
        elif got != want:
            wrong.append(("rejects " if want else "accepts ") + repr(s))
    assert not wrong, f"{case['name']}: {'; '.join(wrong)}"


def test_integration_failures_to_build():
    """test-grammar-integration's grammars that must not build: a missing root, an undefined rule, left
    recursion (direct, through another rule, through a rule that can be empty)."""
    bad = ['rot ::= expr\nexpr ::= term ("+" term)*\nterm ::= number\nnumber ::= [0-9]+',
           'root ::= expr\nexpr ::= term ("+" term)*\nterm ::= numero\nnumber ::= [0-9]+',
           'root ::= "a" | root "a"',
           'root ::= asdf\nasdf ::= "a" | asdf "a"',
           'root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | asdf "d" | "e"',
           'root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | empty asdf "d" | "e"\nempty ::= "blah" | ']
    for text in bad:
        with pytest.raises(GrammarError):
            gbnf.parse(text)


# -- test-json-schema-to-grammar ------------------------------------------------------------------------------
CLOSE = b'"}]'


def walk(matcher, seed: int, limit: int = 400) -> str | None:
    """Random allowed bytes until the matcher ends (ASCII preferred; after a while, closing bytes and the end):
    a string of the language, or None when the walk did not end within `limit` bytes."""
    rng = np.random.default_rng(seed)
    out = bytearray()
    for step in range(limit):
        if matcher.is_done():
            break
        allowed = matcher.allowed_ids()
        if step > 40 and BYTES.eos_id in allowed:
            break
        pick = allowed[allowed < 128] if (allowed < 128).any() else allowed
        if step > 40:
            close = [b for b in pick if b in CLOSE or b == BYTES.eos_id]
            pick = np.array(close) if close else pick
        b = int(rng.choice(pick))
        if b == BYTES.eos_id:
            break
        matcher.accept(b)
        out.append(b)
    else:
        return None
    if not matcher.is_accepting():
        return None
    return out.decode("utf-8")


# case name -> why llama.cpp's grammar rejects some strings our schema makes (valid by jsonschema)
UNTYPED = ("no \"type\": llama.cpp infers one from the keywords (properties: an object, items: an array); JSON "
           "Schema, and llamapy, allow any other value, e.g. null")
KNOWN_SCHEMA: dict[str, str] = {
    **{name: UNTYPED for name in (
        "empty schema (object)", "tuple1", "tuple2", "minItems", "maxItems 1",
        "maxItems 2", "min + maxItems", "min + max items with min + max values across zero",
        "min + max items with min + max values", "1 optional prop", "N optional props",
        "required + optional props each in original order", "optional props with empty name",
        "optional props with nested names", "optional props with common prefix")},
    "regexp quote": "llama.cpp's grammar writes the quote unescaped (\"\"\"), not JSON; llamapy writes \"\\\"\"",
    "mix of allOf, anyOf and $ref (similar to https://json.schemastore.org/tsconfig.json)":
        "llama.cpp makes the properties of allOf's parts required; JSON Schema does not, so {} is valid",
    "exotic formats": "\"items\" as a list is draft 4's tuple form, not a 2020-12 schema (jsonschema refuses it); "
                      "llguidance reads it as 2020-12 and llama.cpp as a tuple",
}
LONG_NUMBER = re.compile(r"[0-9]{16}|[.eE][0-9]*[0-9]{16}")


def _schema_ids():
    return [c["name"] for c in CASES["schema"]]


@pytest.mark.parametrize("i", range(len(CASES["schema"])), ids=_schema_ids())
def test_schema_to_grammar_cases(i):
    """Each schema compiles (or is refused, as llama.cpp refuses it). Strings drawn from llamapy's compiled
    schema validate (jsonschema) and llama.cpp's expected grammar accepts them (but numbers past its 16-digit
    cap); strings drawn from that grammar that are valid JSON for the schema are accepted by llamapy."""
    jsonschema = pytest.importorskip("jsonschema")
    case = CASES["schema"][i]
    if not case["ok"]:
        with pytest.raises(GrammarError):
            compile_json_schema(case["schema"], BYTES)
        return
    if case["name"] in KNOWN_REFUSED_SCHEMA:
        with pytest.raises(GrammarError, match=KNOWN_REFUSED_SCHEMA[case["name"]]):
            compile_json_schema(case["schema"], BYTES)
        return
    ours = compile_json_schema(case["schema"], BYTES)
    theirs = case["grammar"]
    schema = json.loads(case["schema"])
    differ = []
    for seed in range(4):
        s = walk(ours.matcher(), seed)
        if s is not None:
            if case["name"] != "exotic formats":
                jsonschema.validate(json.loads(s), schema)
            if not accepts(theirs, s) and not LONG_NUMBER.search(s) \
                    and not accepts(theirs, one_newline(s)) and not accepts(theirs, canonical(s, case["schema"])):
                differ.append(s)
        t = walk(gbnf_matcher(theirs), 100 + seed)
        if t is None:
            continue
        try:
            value = json.loads(t)
        except json.JSONDecodeError:
            continue  # not JSON at all (llama.cpp's grammar lets it through): nothing to agree on
        if case["name"] != "exotic formats" and jsonschema.Draft202012Validator(schema).is_valid(value):
            assert schema_accepts(case["schema"], t.rstrip(" \t\n")), f"our schema rejects the valid {t!r}"
    if case["name"] in KNOWN_SCHEMA:
        assert differ, f"{case['name']}: llama.cpp's grammar now accepts all our strings; drop it from KNOWN_SCHEMA"
    else:
        assert not differ, f"llama.cpp's grammar rejects our valid {differ!r}"


def one_newline(s: str) -> str:
    """s with each run of newlines between tokens cut to one: llamapy's JSON whitespace also allows a blank
    line (llama.cpp's later SPACE_RULE, `"\\n"{1,2} [ \\t]{0,20}`), the grammars here one newline."""
    out, in_str, esc = [], False, False
    for k, c in enumerate(s):
        if in_str:
            esc = not esc and c == "\\"
            in_str = esc or c != '"'
        elif c == '"':
            in_str = True
        elif c == "\n" and k and s[k - 1] == "\n":
            continue
        out.append(c)
    return "".join(out)


def canonical(s: str, schema_text: str) -> str:
    """The value of s written compactly with each object's keys in the order the schema names them:
    llama.cpp's grammars fix the order of the properties, JSON Schema (and llamapy) does not."""
    def order(v):
        if isinstance(v, dict):
            return {k: order(v[k]) for k in sorted(v, key=lambda k: (schema_text.find(json.dumps(k)) % 10**9, k))}
        if isinstance(v, list):
            return [order(x) for x in v]
        return v
    return json.dumps(order(json.loads(s)), separators=(",", ":"), ensure_ascii=False)


def gbnf_matcher(text: str):
    from llamapy.grammar import compile_gbnf

    return compile_gbnf(text, BYTES).matcher()
