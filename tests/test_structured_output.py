"""Structured output end to end: the generation core with a constraint, `llamapy run -j/--grammar`, and the
server's `grammar`, `json_schema`, `response_format` and Ollama `format` on the default model."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from serverutil import free_port, stop, wait_for_health

from llamapy.generation.params import SamplerParams
from llamapy.generation.sampling import Sampler
from llamapy.generation.sequence import Sequence


# -- the core, with stand-in constraints -----------------------------------------------------------------------
class Allow:
    """A constraint allowing a fixed set of tokens, done after `n` tokens; counts what the core calls."""

    def __init__(self, allowed, n=99, with_apply=True):
        self.allowed, self.n, self.seen, self.calls = set(allowed), n, [], []
        if not with_apply:
            self.apply = None

    def _mask(self, n_vocab=8):
        m = np.zeros(n_vocab, dtype=bool)
        m[list(self.allowed)] = True
        return m

    def mask(self):
        self.calls.append("mask")
        return self._mask()

    def apply(self, logits):
        self.calls.append("apply")
        logits[~self._mask(len(logits))] = -np.inf
        return logits

    def accept(self, tok):
        assert tok in self.allowed
        self.seen.append(tok)

    def is_done(self):
        return len(self.seen) >= self.n

    def reset(self):
        self.seen = []


def _seq(constraint, **kw):
    return Sequence(Sampler(SamplerParams(temp=0.0, **kw), 8, eog_ids=[7]), 64, is_eog=lambda t: t == 7,
                    constraint=constraint, ignore_eos=kw.get("ignore_eos", False))


LOGITS = np.array([5, 4, 3, 2, 1, 0, -1, 9], dtype=np.float32)  # the model's favourite is the end token 7


@pytest.mark.parametrize("with_apply", [True, False])
def test_core_masks_with_apply_or_mask_and_leaves_the_logits(with_apply):
    c = Allow({2, 3}, with_apply=with_apply)
    seq = _seq(c)
    seq.start([1])
    raw = LOGITS.copy()
    step = seq.feed(raw)
    assert step.token == 2 and not step.stop and c.seen == [2]
    assert np.array_equal(raw, LOGITS)  # the caller's logits (n_probs reads them) are untouched
    assert c.calls == (["apply"] if with_apply else ["mask"])


def test_core_end_token_only_when_the_constraint_allows_it_and_done_stops():
    c = Allow({3, 7}, n=2)
    seq = _seq(c)
    seq.start([1])
    assert seq.feed(LOGITS).stop == "eog"  # allowed: the model's favourite wins
    c = Allow({3}, n=1)
    seq = _seq(c)
    seq.start([1])
    step = seq.feed(LOGITS)
    assert (step.token, step.stop, seq.timings.stop_reason) == (3, "grammar", "grammar")


def test_core_no_token_possible_stops_clearly():
    seq = _seq(Allow(set()))  # nothing allowed at all
    seq.start([1])
    step = seq.feed(LOGITS)
    assert (step.token, step.stop, seq.generated) == (-1, "no_token", [])
    c = Allow({7})  # only the end token, which ignore_eos bans
    seq = _seq(c, ignore_eos=True)
    seq.start([1])
    step = seq.feed(LOGITS)
    assert (step.token, step.stop, c.seen, seq.history) == (-1, "no_token", [], [1])
    c = Allow({4})  # only a token a -inf bias bans
    seq = _seq(c, logit_bias={4: float("-inf")})
    seq.start([1])
    assert seq.feed(LOGITS).stop == "no_token"


class Checks(Allow):
    """An Allow that can check one token (the core then samples first, as llama.cpp)."""

    def allows(self, tok):
        self.calls.append(("allows", tok))
        return tok in self.allowed


def test_core_samples_first_and_masks_only_a_refused_token():
    c = Checks({7, 3})
    seq = _seq(c)
    seq.start([1])
    assert seq.feed(LOGITS).token == 7 and c.calls == [("allows", 7)]  # allowed: no mask computed
    c = Checks({2, 3})
    seq = _seq(c)
    seq.start([1])
    assert seq.feed(LOGITS).token == 2 and c.calls == [("allows", 7), "apply"]
    c = Checks({7})
    seq = _seq(c, ignore_eos=True)  # the sampler never picks 7 first; the mask leaves only 7: no token
    seq.start([1])
    assert seq.feed(LOGITS).stop == "no_token"


def test_core_new_turn_restarts_the_constraint():
    c = Allow({3}, n=5)
    seq = _seq(c)
    seq.start([1])
    seq.feed(LOGITS)
    assert c.seen == [3]
    seq.new_turn()
    assert c.seen == []


# -- the default model ----------------------------------------------------------------------------------------
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", "blue", 7, None]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {"type": "string", "pattern": "^[A-Z][a-z]{1,6}$"},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                               "maxItems": 3}},
     "required": ["tags"], "additionalProperties": False},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "boolean"}]},
    {"type": "object", "properties": {"point": {"type": "object",
                                                "properties": {"x": {"type": "integer", "maximum": 99, "minimum": 0},
                                                               "y": {"type": "integer", "maximum": 99, "minimum": 0}},
                                                "required": ["x", "y"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"$defs": {"c": {"type": "string", "enum": ["cat", "dog"]}}, "type": "array", "items": {"$ref": "#/$defs/c"},
     "maxItems": 3},
    {"type": "object", "properties": {"id": {"const": 42}, "note": {"type": "string", "maxLength": 10}},
     "required": ["id", "note"], "additionalProperties": False},
]


@pytest.fixture(scope="module")
def llm(default_model):
    from llamapy.engine.engine import Engine

    e = Engine(default_model, n_ctx=512, n_threads=2)
    yield e
    e.close()


def constrained(llm, grammar, prompt: str, temp: float, seed: int, n_predict: int = 200):
    from llamapy.generation.generate import eog_ids_of, steps

    tok = llm.tokenizer
    eog = frozenset(eog_ids_of(llm))
    seq = Sequence(Sampler(SamplerParams(temp=temp, seed=seed), llm.n_vocab, eog_ids=eog), llm.n_ctx,
                   is_eog=eog.__contains__, piece=lambda t: tok.token_to_piece(t), n_predict=n_predict,
                   constraint=grammar.matcher())
    list(steps(llm, seq, tok.encode(prompt, add_special=True)))
    return seq.content + seq.flush(), seq.timings.stop_reason


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_every_constrained_output_validates(i, llm):
    jsonschema = pytest.importorskip("jsonschema")
    from llamapy.grammar import compile_json_schema

    g = compile_json_schema(SCHEMAS[i], llm.tokenizer)
    for temp, seed in ((0.0, 0), (1.2, 100 + i)) if i % 2 else ((0.7, i), (1.5, 100 + i)):
        text, why = constrained(llm, g, "Here is some JSON data:\n", temp, seed)
        assert why in ("grammar", "eog"), (why, text)
        jsonschema.validate(json.loads(text), SCHEMAS[i])


class MaskOnly:
    """A matcher without `allows`: every token goes through the mask."""

    def __init__(self, m):
        self.m = m
        self.mask, self.accept, self.is_done = m.mask, m.accept, m.is_done


def test_greedy_is_the_same_whether_the_token_is_checked_or_masked(llm):
    from llamapy.generation.generate import eog_ids_of, steps
    from llamapy.grammar import compile_json_schema

    g = compile_json_schema(SCHEMAS[0], llm.tokenizer)
    eog = frozenset(eog_ids_of(llm))
    outs = []
    for c in (g.matcher(), MaskOnly(g.matcher())):
        seq = Sequence(Sampler(SamplerParams(temp=0.0), llm.n_vocab, eog_ids=eog), llm.n_ctx, is_eog=eog.__contains__,
                       n_predict=100, constraint=c)
        list(steps(llm, seq, llm.tokenizer.encode("Some JSON:", add_special=True)))
        outs.append(seq.generated)
    assert outs[0] == outs[1] and len(outs[0]) > 5


def test_gbnf_output_is_one_of_the_alternatives(llm):
    from llamapy.grammar import compile_gbnf

    g = compile_gbnf('root ::= "yes" | "no" | "maybe so"', llm.tokenizer)
    for seed in range(4):
        text, why = constrained(llm, g, "Question: is water wet? Answer:", 1.0, seed)
        assert text in ("yes", "no", "maybe so") and why in ("grammar", "eog")


def test_chat_answers_each_follow_the_grammar_restarted_at_each_turn(llm):
    import io
    import re

    from llamapy.chat.interactive import InteractiveOptions, run_interactive
    from llamapy.chat.templates import ChatTemplate
    from llamapy.grammar import compile_gbnf

    g = compile_gbnf('root ::= "yes" | "no"', llm.tokenizer)
    opts = InteractiveOptions(conversation=True, chat_template=ChatTemplate.for_model(llm.metadata), grammar=g)
    out = io.StringIO()
    llm.kv_clear(0)
    sampler = Sampler(SamplerParams(temp=0.9, seed=3), llm.n_vocab, eog_ids=sorted(llm.tokenizer.eog_ids))
    status = run_interactive(llm, sampler, opts, stdin=io.StringIO("Is fire hot?\nIs ice hot?\nIs the sea wet?\n"),
                             stdout=out, stderr=io.StringIO())
    answers = re.findall(r"> (.*)\n", out.getvalue())
    assert status == 0 and len(answers) == 4 and answers[3] == "", out.getvalue()  # the last: end of input
    assert all(a in ("yes", "no") for a in answers[:3]), answers


def _run(*args):
    return subprocess.run([sys.executable, "-m", "llamapy", "run", *args], capture_output=True, text=True,
                          timeout=120)


def test_run_json_schema_and_grammar(default_model):
    jsonschema = pytest.importorskip("jsonschema")
    schema = SCHEMAS[0]
    r = _run("-m", default_model, "-p", "A person:", "-n", "100", "--temp", "0", "--no-display-prompt",
             "-j", json.dumps(schema))
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(" [end of text]\n\n\n"), r.stdout  # as llama-cli: the grammar ends it with EOS
    jsonschema.validate(json.loads(r.stdout.removesuffix(" [end of text]\n\n\n")), schema)
    r = _run("-m", default_model, "-p", "Answer:", "-n", "10", "--no-display-prompt", "--grammar",
             'root ::= " yes" | " no"')
    assert r.returncode == 0 and r.stdout in (" yes [end of text]\n\n\n", " no [end of text]\n\n\n"), r


def test_run_json_schema_file(default_model, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = SCHEMAS[3]
    (tmp_path / "s.json").write_text(json.dumps(schema))
    r = _run("-m", default_model, "-p", "Is it ok?", "-n", "40", "--no-display-prompt", "-jf", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout.removesuffix(" [end of text]\n\n\n")), schema)
    (tmp_path / "bad.json").write_text("{bad")
    r = _run("-m", default_model, "-p", "x", "-jf", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "not JSON: line 1, column 2" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--grammar", 'root ::= "a" )'], "error: grammar: line 1, column 14: expecting newline or end"),
    (["-j", '{"type": "object",'], "error: JSON schema: not JSON: line 1, column 19"),
    (["-j", '{"type": "array", "uniqueItems": true}'], "uniqueItems"),
    (["--grammar-file", "/no/such/file.gbnf"], "--grammar-file '/no/such/file.gbnf': No such file"),
    (["--grammar", 'root ::= "a"', "-j", "{}"], "give one of --grammar, --grammar-file and -j"),
    (["-jf", "/no/such/schema.json"], "--json-schema-file '/no/such/schema.json': No such file"),
    (["-jf", "/no/such/schema.json", "-j", "{}"], "give -j/--json-schema or -jf/--json-schema-file, not both"),
])
def test_run_bad_grammar_is_one_line_and_exit_1(args, message, default_model):
    r = _run("-m", default_model, "-p", "x", "-n", "4", *args)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert message in r.stderr.strip().splitlines()[-1], r.stderr


# -- the server -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(default_model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "-m", default_model, "--port", str(port),
                             "-np", "3", "-c", "1536"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 120, "llamapy serve")
    yield url
    stop(proc)


def _post(url, path, body):
    import httpx

    return httpx.post(url + path, json=body, timeout=60)


def test_completion_grammar_gives_one_allowed_string(server):
    for seed in range(3):
        r = _post(server, "/completion", {"prompt": "Is the sky green? Answer:", "grammar": 'root ::= "yes" | "no"',
                                          "temperature": 1.0, "seed": seed, "n_predict": 20})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["content"] in ("yes", "no") and d["stop_type"] == "eos", d


def test_completion_and_v1_completions_json_schema(server):
    jsonschema = pytest.importorskip("jsonschema")
    schema = SCHEMAS[7]
    d = _post(server, "/completion", {"prompt": "A point:", "json_schema": schema, "n_predict": 100}).json()
    jsonschema.validate(json.loads(d["content"]), schema)
    d = _post(server, "/v1/completions", {"prompt": "A point:", "json_schema": schema, "max_tokens": 100,
                                          "temperature": 0.9, "seed": 5}).json()
    assert d["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(d["choices"][0]["text"]), schema)


def test_concurrent_requests_each_follow_their_own_schema(server):
    jsonschema = pytest.importorskip("jsonschema")
    picks = [SCHEMAS[0], SCHEMAS[1], SCHEMAS[3]]
    out: dict[int, str] = {}

    def go(k):
        out[k] = _post(server, "/completion", {"prompt": "JSON:", "json_schema": picks[k], "n_predict": 120,
                                               "temperature": 0.7, "seed": k}).json()["content"]

    threads = [threading.Thread(target=go, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, schema in enumerate(picks):
        jsonschema.validate(json.loads(out[k]), schema)


def test_openai_client_response_format_and_parse(server):
    jsonschema = pytest.importorskip("jsonschema")
    openai = pytest.importorskip("openai")
    from pydantic import BaseModel, Field

    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    schema = SCHEMAS[5]
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Give three tags for a photo of a beach."}],
        response_format={"type": "json_schema", "json_schema": {"name": "tags", "schema": schema, "strict": True}},
        max_tokens=120)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)

    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Some JSON please."}],
                                       response_format={"type": "json_object"}, max_tokens=20, temperature=0.0)
    text = r.choices[0].message.content  # greedy, this model nests objects past any budget: a start, then
    assert text.startswith("{") and (r.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))

    class City(BaseModel):
        name: str = Field(max_length=16)
        population: int = Field(ge=0, le=50_000_000)

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model="any", messages=[{"role": "user", "content": "Describe Paris."}], response_format=City,
              max_tokens=120)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and len(city.name) <= 16 and 0 <= city.population <= 50_000_000


def test_ollama_chat_and_generate_format(server, llm):
    jsonschema = pytest.importorskip("jsonschema")
    schema = SCHEMAS[0]
    d = _post(server, "/api/chat", {"messages": [{"role": "user", "content": "A person, as JSON."}],
                                    "format": schema, "stream": False, "options": {"num_predict": 120}}).json()
    assert d["done_reason"] == "stop"
    jsonschema.validate(json.loads(d["message"]["content"]), schema)
    from llamapy.grammar import compile_json_object

    for seed in range(2):
        d = _post(server, "/api/generate", {"prompt": "Anything, as JSON.", "format": "json", "stream": False,
                                            "options": {"num_predict": 40, "temperature": 1.0, "seed": seed}}).json()
        m = compile_json_object(llm.tokenizer).matcher()  # every token the answer took is one the grammar allows
        assert d["eval_count"] > 0
        for t in d["context"][-d["eval_count"]:]:
            assert not m.is_done() and m.mask()[t], d
            m.accept(t)
        if d["done_reason"] == "stop":
            assert isinstance(json.loads(d["response"]), dict) and m.is_accepting()


@pytest.mark.parametrize("path,body,status,words", [
    ("/completion", {"prompt": "x", "grammar": 'root ::= "a" )'}, 400, ["grammar: line 1, column 14"]),
    ("/completion", {"prompt": "x", "json_schema": {"type": "array", "uniqueItems": True}}, 400, ["uniqueItems"]),
    ("/completion", {"prompt": "x", "json_schema": "nope"}, 400, ["json_schema", "object"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "n", "schema": {"type": "object", "not": {}}}}}, 400, ['"not"']),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     400, ["response_format type", "xml"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "grammar": 'root ::= "a"',
                              "response_format": {"type": "json_object"}}, 400, ["not both"]),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "format": "yaml", "stream": False}, 400,
     ["format"]),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "format": {"type": "strin"}, "stream": False},
     400, ["strin"]),
])
def test_bad_grammars_and_schemas_are_400s(server, path, body, status, words):
    r = _post(server, path, body)
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert "\n" not in msg and all(w in msg for w in words), msg
