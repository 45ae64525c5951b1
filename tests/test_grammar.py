"""Constrained decoding: llama.cpp's example grammars parse and constrain, accepted/rejected strings in the style of
llama.cpp's test-grammar-integration and test-json-schema-to-grammar, bad input as one-line errors in bounded time,
and the core property: a random walk over the default model's vocabulary that only takes allowed tokens ends in
text that the grammar (or schema) accepts."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from grammar_examples import ARITHMETIC, CHESS, ENGLISH, JAPANESE, JSON, JSON_ARR, LIST, C

from llamapy.errors import LlamapyError
from llamapy.grammar import GrammarError, Vocabulary, compile_gbnf, compile_json_object, compile_json_schema, gbnf

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def tok(default_model):
    from llamapy.tokenizer.core import Tokenizer

    return Tokenizer.from_gguf(default_model)


@pytest.fixture(scope="module")
def vocab(tok):
    return Vocabulary.for_tokenizer(tok)


def feed(compiled, text: str, tok) -> bool:
    """Whether the grammar accepts exactly `text`, fed as the model's tokens of it."""
    m = compiled.matcher()
    for t in tok.encode(text, add_special=False):
        if not m.mask()[t]:
            return False
        m.accept(t)
        assert m.error is None
    return m.is_accepting()


class ByteTokenizer:
    """A vocabulary of the 256 bytes and one end token: matching through it checks a grammar's language byte by
    byte, with no tokenization in the way (the matcher keeps a model's tokens canonical where bytes are forced)."""

    n_vocab = 257
    eos_id = 256
    bos_id = None
    eog_ids = {256}

    def __init__(self):
        from llamapy.tokenizer.core import ATTR_CONTROL, ATTR_NORMAL

        self.attrs = [ATTR_NORMAL] * 256 + [ATTR_CONTROL]

    def token_to_piece(self, i: int, special: bool = True) -> bytes:
        return bytes([i]) if i < 256 else b"<end>"

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return list(text.encode("utf-8", "surrogateescape"))


BYTES = ByteTokenizer()


def accepts(grammar: str, text: str) -> bool:
    """Whether a GBNF grammar accepts exactly `text`, fed one byte at a time."""
    return matches(compile_gbnf(grammar, BYTES), text)


def matches(compiled, text: str) -> bool:
    """Whether a grammar compiled over BYTES accepts exactly `text`, fed one byte at a time."""
    m = compiled.matcher()
    for b in text.encode("utf-8"):
        if not m.mask()[b]:
            return False
        m.accept(b)
    return m.is_accepting()


CLOSERS = ('"', "}", "]", "\n", ")", ";")


def random_walk(compiled, tok, seed: int, patience: int = 40, limit: int = 3000) -> str:
    """Take random allowed tokens until the matcher is done; after `patience` steps prefer an end token,
    then (mostly) one-character tokens that close something, else any one-character token, so the walk ends."""
    rng = np.random.default_rng(seed)
    closers = {i for i in range(tok.n_vocab) if tok.token_to_piece(i).decode("utf-8", "replace") in CLOSERS}
    short = np.array([len(tok.token_to_piece(i)) == 1 for i in range(tok.n_vocab)])
    m = compiled.matcher()
    out = []
    for step in range(limit):
        if m.is_done():
            break
        allowed = m.allowed_ids()
        assert len(allowed), f"no token allowed after {tok.decode(out)!r}"
        assert not any(tok.is_control(t) and t not in tok.eog_ids for t in allowed.tolist())
        pick = allowed
        if step >= patience:
            ends = [t for t in allowed if t in tok.eog_ids]
            close = [t for t in allowed if t in closers]
            one = allowed[short[allowed]]
            pick = np.array(ends or (close if close and rng.random() < 0.7 else None)
                            or (one.tolist() if len(one) else allowed.tolist()))
        t = int(rng.choice(pick))
        m.accept(t)
        assert m.error is None, m.error
        out.append(t)
    assert m.is_done(), f"the walk did not end: {tok.decode(out)[-200:]!r}"
    assert m.mask().sum() <= len(tok.eog_ids)
    text = tok.decode([t for t in out if t not in tok.eog_ids])
    assert not any(t in tok.eog_ids for t in out[:-1])
    return text


# -- GBNF: llama.cpp's example grammars ---------------------------------------------------------------------
EXAMPLES = {
    "json": (JSON, ['{"a": [1, 2.5, -3e4, true, null], "b": {"c": "d\\n\\u00e9"}}', "{}"],
             ['{"a": }', "[1]", '{"a": 01}', '{"a" 1}', "{", '{"a": "\x01"}']),
    "json_arr": (JSON_ARR, ['[\n{"a": 1},\n"x"]', "[\n]"], ["[1]", '[\n{"a": 1}]\n']),
    "list": (LIST, ["- one\n- two items\n"], ["- one", "-one\n", "- \n", "- a\u2028b\n"]),
    "arithmetic": (ARITHMETIC, ["1+2=3\n", "(a+b)*2 = x1\n10/5=2\n"], ["1+2\n", "=3\n", "1+2=3", "A=1\n"]),
    "c": (C, ["int main(){return 0;}", "int f(int a){while(a<3){a = a+1;}return a;}",
              "int g(){int x = 2;if(x==2){y = 3;}else{y = 4;}// done\n}"],
          ["int main(){return 0}", "main(){}", "int main(){x = ;}"]),
    "chess": (CHESS, ["1. e4 e5\n2. Nf3 Nc6\n", "1. d4 d5\n2. c4 dxc4\n3. O-O Qxd1+\n"],
              ["1. e4 e5\n", "1. e9 e5\n2. a1 a2\n", "2. e4 e5\n3. a3 a4\n"]),
    "english": (ENGLISH, ["Hello, world! 42", "a\tb\nc"], ["", "Hello  world", "héllo", " x"]),
    "japanese": (JAPANESE, ["こんにちは 世界", "カタカナ、ひらがな"], ["hello", "こんにちは  世界", ""]),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_grammars_accept_and_reject(name, tok):
    text, good, bad = EXAMPLES[name]
    g = compile_gbnf(text, tok)
    for s in good:
        assert feed(g, s, tok), f"{name} should accept {s!r}"
        assert accepts(text, s), f"{name} should accept {s!r} byte by byte"
    for s in bad:
        assert not accepts(text, s), f"{name} should reject {s!r}"


@pytest.mark.parametrize("name,seed", [("json", 0), ("json", 1), ("json_arr", 2), ("list", 3), ("arithmetic", 4),
                                       ("chess", 5), ("english", 6), ("japanese", 7), ("c", 8)])
def test_example_grammars_random_walk(name, seed, tok):
    g = compile_gbnf(EXAMPLES[name][0], tok)
    text = random_walk(g, tok, seed)
    assert accepts(EXAMPLES[name][0], text), f"{name}: the walk's text is not accepted: {text!r}"
    if name == "json":
        assert isinstance(json.loads(text), dict)


# -- GBNF: integration cases in the style of llama.cpp's test-grammar-integration --------------------------
INTEGRATION = [
    ('root ::= "a"', ["a"], ["", "b", "aa"]),
    ('root ::= [a-z]{2,4}', ["ab", "abcd"], ["a", "abcde", "AB"]),
    ('root ::= "a"{3}', ["aaa"], ["aa", "aaaa"]),
    ('root ::= [0-9]{1,}', ["1", "1234567"], ["", "12a"]),
    ('root ::= ("ab" | "cd")* "!"', ["!", "abcdab!"], ["ab", "ac!"]),
    ('root ::= [^x]+', ["abc", "\n\u00e9"], ["x", "axb"]),
    ('root ::= . "!"', ["a!", "\n!", "\u4e16!"], ["!", "ab!"]),
    ('root ::= "\\x41\\u00e9\\U0001F600"', ["A\u00e9\U0001F600"], ["A"]),
    ('root ::= [0-9]+ [0-9]', ["12", "123"], ["1"]),  # needs the parser to leave the last digit (see gbnf.py)
    ('root ::= a b\na ::= [0-9]+ " "?\nb ::= [0-9]', ["12", "1 2"], ["1"]),
    ('root ::= word (" " word)*\nword ::= [a-z]+', ["ab cd", "x"], ["ab  cd", " ab"]),
    ('root ::= x\nx ::= "(" x ")" | ""', ["", "(())"], ["(()"]),
    ('# comment\nroot ::= "a" | # trailing\n  "b"', ["a", "b"], ["c"]),
    ('root ::= "a"\nroot ::= "b"', ["b"], ["a"]),  # llama.cpp: a rule defined twice keeps the last body
]


@pytest.mark.parametrize("grammar,good,bad", INTEGRATION)
def test_gbnf_integration_cases(grammar, good, bad):
    for s in good:
        assert accepts(grammar, s), f"{grammar!r} should accept {s!r}"
    for s in bad:
        assert not accepts(grammar, s), f"{grammar!r} should reject {s!r}"


BAD_GRAMMARS = [
    ('root ::= "a', "line 1, column 12: unexpected end of input"),
    ('root ::= "a"\nfoo := "b"', "line 2, column 5: expecting ::="),
    ('root ::= [a-z', "line 1, column 14: unexpected end of input"),
    ('root ::= ("a"', "line 1, column 14: expecting ')'"),
    ('root ::= "\\q"', "line 1, column 11: unknown escape \\q"),
    ('root ::= "\\x4"', "line 1, column 11: expecting 2 hex digits after \\x"),
    ('root ::= *', "line 1, column 10: expecting an item before"),
    ('root ::= "a"{2', "line 1, column 15: expecting ','"),
    ('root ::= "a"{3,2}', "maximum below its minimum"),
    ('root ::= "a"{5000}', "more than 2000 repetitions"),
    ('root ::= "a" )', "line 1, column 14: expecting newline or end"),
    ('root ::= foo', "undefined rule identifier 'foo'"),
    ('main ::= "a"', 'does not contain a "root" rule'),
    ('root ::= root "a" | "a"', "left recursion in rule 'root'"),
    ('root ::= x\nx ::= y? x "a" | "b"\ny ::= "c"', "left recursion in rule 'x'"),
    ('root ::= "a" x\nx ::= "b" x', "rule 'x' can never match"),
    ('root ::= "a" <[12', "line 1, column 14: expecting '>'"),
    ('root ::= <[x]>', "line 1, column 10: expecting a token id in <[...]>"),
    ('root ::= "a" <no-such-token>', "<no-such-token> is not one token of this model"),
    ("", 'does not contain a "root" rule'),
]


@pytest.mark.parametrize("grammar,message", BAD_GRAMMARS)
def test_bad_grammars_are_one_line_errors(grammar, message, tok):
    with pytest.raises(LlamapyError) as e:
        compile_gbnf(grammar, tok)
    msg = str(e.value)
    assert message in msg, msg
    assert "\n" not in msg and msg.startswith("grammar: ")
    with pytest.raises(GrammarError):  # the cache remembers the error
        compile_gbnf(grammar, tok)


def test_llama_cpp_rewrites_repetitions_into_rules():
    g = gbnf.parse('root ::= "a"{1,3} [b]*')
    # "a" then two nested optional rules (S'(2) ::= "a" S'(1) |, S'(1) ::= "a" |) and one star rule
    assert len(g.rules) == 4 and g.names[0] == "root"
    assert [len(a) for a in g.rules[1]] == [1, 0] and [len(a) for a in g.rules[2]] == [2, 0]
    assert list(g.star) == [3]


def test_huge_and_deep_grammars_end_in_bounded_time(tok):
    """Each either compiles or is a one-line error, within seconds: never a hang or a crash."""
    n = 2500  # rules nested this deep overflow the compiler's stack on a usual 8 MiB thread stack
    cases = {
        "1 MiB of rules": ("root ::= r0\n" + "".join(f'r{i} ::= "x" r{i + 1}\n' for i in range(40000)),
                           "undefined rule identifier 'r40000'"),
        "nested parentheses": ("root ::= " + "(" * 5000 + '"a"' + ")" * 5000, "parentheses nested deeper"),
        "one long literal": ('root ::= "' + "ab" * 600_000 + '"', "too large"),
        "30,000 rules": ("root ::= r0\n" + "".join(f'r{i} ::= "x" r{i + 1} | "y"\n' for i in range(30000))
                         + 'r30000 ::= "z"\n', "30002 rules"),
        "deeply nested rules": (f"root ::= r{n}\n" + "".join(f'r{i + 1} ::= r{i} "x" | "y"\n' for i in range(n))
                                + 'r0 ::= "z"\n', None),
        "nested repetitions": ('root ::= ((("a"{2000}){2000}){10})', None),
    }
    for what, (text, error) in cases.items():
        t0 = time.perf_counter()
        if error is None:
            m = compile_gbnf(text, tok).matcher()
            assert m.mask().any(), what
        else:
            with pytest.raises(LlamapyError) as e:
                compile_gbnf(text, tok)
            assert error in str(e.value) and "\n" not in str(e.value), what
        assert time.perf_counter() - t0 < 20, what


def test_token_references(tok):
    """llama.cpp's token elements: <[id]>, <text> (one token of the model), and !<...> (any token but that one)."""
    im_start, im_end = tok.find_token("<|im_start|>"), tok.find_token("<|im_end|>")
    m = compile_gbnf('root ::= <|im_start|> "x" <[' + str(im_end) + ']>', tok).matcher()
    assert m.allowed_ids().tolist() == [im_start]
    m.accept(im_start)
    x = tok.encode("x", add_special=False)[0]
    assert m.mask()[x] and not m.mask()[im_start]
    m.accept(x)
    assert m.allowed_ids().tolist() == [im_end]
    m = compile_gbnf("root ::= !<[5]> !<[5]>", tok).matcher()
    mask = m.mask()
    assert not mask[5] and mask.sum() >= tok.n_vocab - 3
    m.accept(7)
    assert not m.mask()[5] and m.mask()[6]


def test_lark_text_passes_through(tok):
    g = compile_gbnf('%llguidance {}\nstart: "yes" | "no"', tok)
    assert feed(g, "yes", tok) and not feed(g, "maybe", tok)


# -- JSON schemas: cases in the style of test-json-schema-to-grammar ----------------------------------------
SCHEMAS = [
    ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
      "required": ["name"], "additionalProperties": False},
     ['{"name": "Bob"}', '{"name": "Bob", "age": 42}'],
     ['{"age": 42}', '{"name": "Bob", "age": -1}', '{"name": "Bob", "x": 1}', '{"name": 1}']),
    ({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3},
     ["[1, 2.5]", "[1,2,3]"], ["[1]", "[1,2,3,4]", '["a", 1]']),
    ({"enum": ["red", "green", 3]}, ['"red"', "3"], ['"blue"', "4"]),
    ({"const": {"a": 1}}, ['{"a": 1}'], ['{"a": 2}']),
    ({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "boolean"}]}, ['"abc"', "true"], ['"abcd"', "1"]),
    ({"oneOf": [{"type": "integer"}, {"type": "null"}]}, ["5", "null"], ['"5"', "5.5"]),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "string"}}}]}, ['{"a": 1}', '{"a": 1, "b": "x"}'], ['{"b": "x"}']),
    ({"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"],
                       "additionalProperties": False}},
      "type": "array", "items": {"$ref": "#/$defs/pt"}}, ['[{"x": 1}, {"x": 2}]', "[]"], ['[{"y": 1}]']),
    ({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, ['"AB-123"'], ['"ab-123"', '"AB-12"']),
    ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"2024-2-29"', '"yesterday"']),
    ({"type": "integer", "minimum": 10, "maximum": 20}, ["10", "15", "20"], ["9", "21", "-15"]),
    ({"type": "number", "exclusiveMinimum": 0}, ["0.5", "3"], ["0", "-1"]),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, ['{"a": 1, "b": 2}', "{}"], ['{"a": "x"}']),
]


@pytest.mark.parametrize("schema,good,bad", SCHEMAS)
def test_json_schema_cases(schema, good, bad, tok):
    g = compile_json_schema(schema, tok)
    for s in good:
        jsonschema.validate(json.loads(s), schema)  # the case itself is right
        assert feed(g, s, tok), f"{schema} should accept {s!r}"
    for s in bad:
        assert not feed(g, s, tok), f"{schema} should reject {s!r}"


WALK_SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                               "maxItems": 3},
                                      "ok": {"type": "boolean"}},
     "required": ["name", "age", "ok"], "additionalProperties": False},
    {"type": "array", "items": {"anyOf": [{"type": "number"}, {"enum": ["x", "y"]}, {"type": "null"}]},
     "minItems": 1, "maxItems": 5},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                         "kids": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                                                  "maxItems": 2}},
                        "required": ["v"], "additionalProperties": False}},
     "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "code": {"type": "string", "pattern": "^[a-z]{3}[0-9]$"},
                                      "score": {"type": "number", "minimum": -1, "maximum": 1}},
     "required": ["when", "code", "score"]},
]


@pytest.mark.parametrize("i,seed", [(i, s) for i in range(len(WALK_SCHEMAS)) for s in range(3)])
def test_json_schema_random_walk_validates(i, seed, tok):
    schema = WALK_SCHEMAS[i]
    text = random_walk(compile_json_schema(schema, tok), tok, seed)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("seed", range(3))
def test_any_json_object(seed, tok):
    g = compile_json_object(tok)
    assert isinstance(json.loads(random_walk(g, tok, seed)), dict)
    assert not feed(g, "[1]", tok) and feed(g, '{"a": [1, {"b": null}]}', tok)


BAD_SCHEMAS = [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, '"not"'),
    ({"type": "strin"}, "strin"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"$ref": "https://example.com/s.json"}, "example.com"),
    ({"type": "string", "pattern": "(a"}, "regex"),
    ({"type": "integer", "minimum": 3, "maximum": 2}, "minimum"),
    ("{not json", "JSON schema"),
    ('{"type": "array", "items": ' * 10000 + '{"type": "string"}' + "}" * 10000, "recursion"),
]


@pytest.mark.parametrize("schema,word", BAD_SCHEMAS)
def test_bad_schemas_are_one_line_errors(schema, word, tok):
    t0 = time.perf_counter()
    with pytest.raises(LlamapyError) as e:
        compile_json_schema(schema, tok)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert msg.startswith("JSON schema: ") and "\n" not in msg and word in msg, msg


def test_deep_schema_object_is_an_error(tok):
    d: dict = {"type": "string"}
    for _ in range(10000):
        d = {"type": "array", "items": d}
    with pytest.raises(LlamapyError, match="nested too deep"):
        compile_json_schema(d, tok)


# -- the matcher ---------------------------------------------------------------------------------------------
def test_compiled_once_and_cached(tok):
    schema = {"type": "object", "properties": {"k": {"type": "integer"}}}
    a = compile_json_schema(schema, tok)
    assert compile_json_schema(json.dumps(schema, ensure_ascii=False), tok) is a
    assert compile_json_schema(schema, tok) is a
    m1, m2 = a.matcher(), a.matcher()
    t = tok.encode("{", add_special=False)[0]
    m1.accept(t)
    assert m2.mask()[t] and not m1.mask()[t]  # matchers are independent


def test_masks_agree_and_special_tokens_only_at_the_end(tok, vocab):
    g = compile_gbnf('root ::= "ab"', tok)
    m = g.matcher()
    mask = m.mask()
    assert mask.dtype == bool and mask.shape == (tok.n_vocab,)
    words = m.bitmask()
    assert np.array_equal(np.flatnonzero(mask), m.allowed_ids())
    assert all(bool(words[i >> 5] >> (i & 31) & 1) == mask[i] for i in range(0, tok.n_vocab, 97))
    logits = np.zeros(tok.n_vocab, dtype=np.float32)
    m.apply(logits)
    assert np.array_equal(np.isfinite(logits), mask)
    control = [i for i in range(tok.n_vocab) if tok.is_control(i)]
    assert control and not mask[control].any()
    for t in tok.encode("ab", add_special=False):
        assert not m.is_done()
        m.accept(t)
    assert m.is_accepting()
    end = m.mask()
    assert set(np.flatnonzero(end).tolist()) == set(vocab.end_ids)  # only the end tokens remain
    m.accept(int(np.flatnonzero(end)[0]))
    assert m.is_done() and m.error is None


def test_refused_token_ends_the_matcher(tok):
    m = compile_gbnf('root ::= "a"', tok).matcher()
    bad = tok.encode("b", add_special=False)[0]
    assert not m.mask()[bad]
    m.accept(bad)
    assert m.is_done() and m.error and "\n" not in m.error
    assert not m.mask().any()


# -- the lexeme analysis keeps llama.cpp's language ----------------------------------------------------------
TRICKY = [
    'root ::= [0-9]+ [0-9]',
    'root ::= ("a" | "ab") "b"',
    'root ::= x "b"\nx ::= "a"+ | "ab"',
    'root ::= w (" " w)* " "?\nw ::= [a-z]+',
    'root ::= (num "x"?)+\nnum ::= [0-9]+',
    'root ::= kw | id\nkw ::= "if" | "in"\nid ::= [a-z] [a-z0-9]*',
    'root ::= s ws "," ws s\ns ::= "\\"" [^"]* "\\""\nws ::= [ ]*',
    'root ::= a a\na ::= "x" | "xx"',
    'root ::= ("ab"? "a")*',
    'root ::= t "\\n"\nt ::= [a-z]+ ws\nws ::= [ \\t\\n]*',
]


def random_grammar(rng) -> str:
    """A small random GBNF grammar over "a" and "b" (it may be refused: left recursion, no end)."""
    names = ["root", "x", "y"]

    def item(depth: int) -> str:
        r = rng.random()
        if r < 0.3:
            s = str(rng.choice(['"a"', '"b"', '"ab"', '"ba"', "[ab]", "[^b]", '"aa"']))
        elif r < 0.5:
            s = str(rng.choice(names[1:]))
        elif r < 0.6 and depth < 2:
            s = "(" + alts(depth + 1) + ")"
        else:
            s = str(rng.choice(['"a"', '"b"', "[ab]"]))
        return s + str(rng.choice(["", "", "", "*", "+", "?", "{1,2}", "{0,2}"]))

    def alts(depth: int) -> str:
        return " | ".join(" ".join(item(depth) for _ in range(rng.integers(1, 4))) for _ in range(rng.integers(1, 3)))

    return "\n".join(f"{n} ::= {alts(0)}" for n in names)


def sample_strings(lark_text: str, rng, n: int) -> list[str]:
    """Random strings of a grammar, drawn byte by byte from its matcher (stopping at random where it may)."""
    out = []
    c = compile_gbnf(lark_text, BYTES)
    for _ in range(n):
        m, s = c.matcher(), []
        for _ in range(12):
            if m.is_accepting() and rng.random() < 0.3:
                break
            allowed = [b for b in m.allowed_ids().tolist() if b < 256]
            if not allowed:
                break
            b = int(rng.choice(allowed))
            m.accept(b)
            s.append(b)
        if m.is_accepting():
            out.append(bytes(s).decode("utf-8"))
    return out


def test_lexemes_keep_llama_cpp_language():
    """Every string the character-by-character grammar (llama.cpp's language) produces, the grammar with lexemes
    accepts, and the other way round: on tricky grammars and on random ones."""
    from llamapy.grammar import lark

    rng = np.random.default_rng(0)
    grammars = list(TRICKY)
    while len(grammars) < 60:
        grammars.append(random_grammar(rng))
    checked = 0
    for text in grammars:
        try:
            g = gbnf.parse(text)
        except GrammarError:
            continue
        exact, fast = lark.to_lark(g, lexemes=False), lark.to_lark(g)
        for s in sample_strings(exact, rng, 12):
            assert accepts(fast, s), f"{text!r} with lexemes rejects {s!r}"
            checked += 1
        for s in sample_strings(fast, rng, 6):
            assert accepts(exact, s), f"{text!r} with lexemes accepts {s!r}"
    assert checked > 300
