"""Tool calls: each format's parser on fixed model outputs (whole and streamed a character or a few at a
time), the prompt and constraint a request gets, and the round trip through the `openai` client against a
real `llamapy serve`, the Ollama /api/chat route and the Python API on the default model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llamapy.chat.tool_calls import ToolError, check_choice, check_tools, detect_format, prepare
from llamapy.chat.tool_parse import StreamParser, parse

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string", "maxLength": 10}}, "required": ["tz"],
    "additionalProperties": False}}}

# (format, model output, content, [(name, arguments as a value)])
OUTPUTS = [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
               '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>',
     "Let me check.", [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"tz": "CET"})]),
    ("hermes", "No call here, just <tool talk.", "No call here, just <tool talk.", []),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"x": </tool_call>',  # broken: the text is the answer
     '<tool_call>{"name": "f", "arguments": {"x": </tool_call>', []),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "f"}}', "",
     [("get_weather", {"city": "Rome", "unit": "f"})]),
    ("llama3", '{"type": "function", "name": "f", "parameters": {"a": [1, "x}"]}}', "", [("f", {"a": [1, "x}"]})]),
    ("llama3", "The weather is fine.", "The weather is fine.", []),
    ("llama3_builtin", "<|python_tag|>brave_search.call(query=\"today's news\")", "",
     [("brave_search", {"query": "today's news"})]),
    ("llama3_builtin", '<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}', "",
     [("get_time", {"tz": "UTC"})]),
    ("mistral", 'Sure. [TOOL_CALLS][{"name": "f", "arguments": {"a": "\\u00e9\\n"}, "id": "abc123XYZ"}, '
                '{"name": "g", "arguments": "{\\"b\\": 2}"}]',
     "Sure.", [("f", {"a": "\u00e9\n"}), ("g", {"b": 2})]),
    ("mistral", "Plain [TOOL answer", "Plain [TOOL answer", []),
    ("generic", '{"tool_call": {"name": "get_time", "arguments": {"tz": "PST"}}}', "", [("get_time", {"tz": "PST"})]),
    ("generic", '{\n  "tool_calls": [{"name": "f", "arguments": {"x": 1}, "id": "aaaa"},\n  {"name": "g", '
                '"arguments": {}}]}', "", [("f", {"x": 1}), ("g", {})]),
    ("generic", '{"response": "Hello \\"you\\" \\u00e9!"}', 'Hello "you" \u00e9!', []),
]


@pytest.mark.parametrize("fmt,text,content,calls", OUTPUTS)
def test_parse_whole(fmt, text, content, calls):
    msg = parse(text, fmt)
    assert msg.content == content
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == calls
    assert all(c.id and len({c.id for c in msg.tool_calls}) == len(calls) for c in msg.tool_calls)
    if fmt == "mistral" and calls:
        assert msg.tool_calls[0].id == "abc123XYZ"  # the model's own id is kept


@pytest.mark.parametrize("step", [1, 3, 7])
@pytest.mark.parametrize("fmt,text,content,calls", OUTPUTS)
def test_parse_streamed(fmt, text, content, calls, step):
    """Fed in fragments, the deltas add up to the whole message: content, then each call announced once (id,
    name) and its argument fragments concatenating to exactly its final arguments."""
    sp = StreamParser(fmt)
    deltas = []
    for i in range(0, len(text), step):
        deltas += sp.feed(text[i:i + step])
    last, msg = sp.finish()
    deltas += last
    assert msg.content == content and [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == calls
    streamed_content = "".join(d.get("content", "") for d in deltas)
    assert streamed_content == content or (not calls and streamed_content.endswith(content[-10:]))
    if not calls:
        return
    heads, args = {}, {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            k = tc["index"]
            if "id" in tc:
                assert k not in heads, "a call is announced once"
                heads[k] = (tc["id"], tc["function"]["name"])
            else:
                assert k in heads, "arguments come after the call's first delta"
            args[k] = args.get(k, "") + tc["function"]["arguments"]
    assert [heads[k] for k in sorted(heads)] == [(c.id, c.name) for c in msg.tool_calls]
    assert [args[k] for k in sorted(args)] == [c.arguments for c in msg.tool_calls]


def test_detect_format_from_the_template():
    assert detect_format(None) == "generic"
    assert detect_format("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}") == "generic"
    assert detect_format("{{- '<tool_call>\\n' }}") == "hermes"
    assert detect_format("<|start_header_id|>ipython<|end_header_id|>") == "llama3"
    assert detect_format("<|start_header_id|>ipython<|end_header_id|> <|python_tag|>") == "llama3_builtin"
    assert detect_format("{{ '[TOOL_CALLS]' }}") == "mistral"


@pytest.mark.parametrize("tools,choice,message", [
    ("x", None, "tools must be a list"),
    ([{"type": "retrieval"}], None, "tools[0] must be"),
    ([{"type": "function", "function": {"name": "bad name!"}}], None, "function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "parameters must be"),
    ([WEATHER, WEATHER], None, "a second function named"),
    ([WEATHER], "sometimes", "tool_choice must be"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not in tools"),
    ([], "required", "tools lists no function"),
])
def test_bad_tools_and_choices(tools, choice, message):
    with pytest.raises(ToolError) as e:
        check_choice(choice, check_tools(tools))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_generic_prompt_describes_tools_and_history():
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "c"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"}]
    s = prepare(None, msgs, [WEATHER, TIME], "auto")
    assert s.format == "generic" and s.messages[0]["role"] == "system" and "get_time" in s.messages[0]["content"]
    assert json.loads(s.messages[2]["content"]) == {"tool_call": {"name": "get_weather",
                                                                  "arguments": {"city": "Oslo", "unit": "c"}}}
    assert s.messages[3]["role"] == "user" and "-3 C" in s.messages[3]["content"]
    assert "anyOf" in s.schema  # a call or a response
    assert prepare(None, msgs, [WEATHER], "required").schema["required"] == ["tool_call"]
    assert prepare(None, msgs, [WEATHER], "required", True).schema["required"] == ["tool_calls"]
    assert prepare(None, msgs, [WEATHER], "none").active is False
    native = prepare("<tool_call>", msgs, [WEATHER], "auto")
    assert native.render_kwargs["tools"][0]["function"]["name"] == "get_weather" and native.lark is None
    assert native.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo", "unit": "c"}


@pytest.fixture(scope="module")
def tok(default_model):
    from llamapy.tokenizer.core import Tokenizer

    return Tokenizer.from_gguf(default_model)


def feed(compiled, text, tok):
    m = compiled.matcher()
    for t in tok.encode(text, add_special=False):
        if not m.mask()[t]:
            return False
        m.accept(t)
    return m.is_accepting()


@pytest.mark.parametrize("fmt,src,good,bad", [
    ("hermes", "<tool_call>", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n'
                              '</tool_call>',
     ['<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
      '<tool_call>{"name": "get_time", "arguments": {"tz": "x"}}</tool_call>', "Hello"]),
    ("llama3", "<|start_header_id|>ipython<|end_header_id|>",
     '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "f"}}',
     ['{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "k"}}']),
    ("mistral", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}, '
                                '"id": "abcDEF123"}]',
     ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}, "id": "x"}]']),
    ("generic", None, '{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}}',
     ['{"response": "hi"}', '{"tool_call": {"name": "get_weather", "arguments": {}}}']),
])
def test_required_call_grammar_accepts_valid_calls_only(fmt, src, good, bad, tok):
    s = prepare(src, [{"role": "user", "content": "?"}], [WEATHER], {"function": {"name": "get_weather"}})
    assert s.format == fmt
    g = s.grammar(tok)
    assert feed(g, good, tok), good
    assert parse(good, fmt).tool_calls[0].name == "get_weather"
    for b in bad:
        assert not feed(g, b, tok), b


# -- on the default model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(default_model):
    pytest.importorskip("fastapi")
    from serverutil import free_port, stop, wait_for_health

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "-m", default_model, "--port", str(port),
                             "-c", "2048"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 120, "llamapy serve")
    yield url
    stop(proc)


def _check_weather_call(tc):
    import jsonschema

    assert tc.type == "function" and tc.id.startswith("call_") and tc.function.name == "get_weather"
    jsonschema.validate(json.loads(tc.function.arguments), WEATHER["function"]["parameters"])


def test_openai_client_tools_round_trip(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="any", messages=msgs, tools=[WEATHER, TIME], tool_choice="required",
                                       max_tokens=120)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1
    tc = ch.message.tool_calls[0]
    if tc.function.name == "get_weather":
        _check_weather_call(tc)
    # the call and its result in the history, then a named call, streamed
    msgs += [ch.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": tc.id, "content": "18 degrees, sunny"}]
    stream = client.chat.completions.create(model="any", messages=msgs, tools=[WEATHER, TIME], stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            max_tokens=120)
    calls, finish = {}, None
    for c in stream:
        d = c.choices[0].delta
        for t in d.tool_calls or []:
            cur = calls.setdefault(t.index, {"id": None, "name": None, "arguments": ""})
            if t.id:
                cur["id"], cur["name"] = t.id, t.function.name
            cur["arguments"] += t.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    import jsonschema

    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])
    # auto: a call or an answer, either way well formed; none: plain text
    r = client.chat.completions.create(model="any", messages=msgs, tools=[WEATHER], max_tokens=80)
    m = r.choices[0].message
    assert (r.choices[0].finish_reason == "tool_calls" and m.tool_calls) or \
        (r.choices[0].finish_reason in ("stop", "length") and not m.tool_calls and isinstance(m.content, str))
    r = client.chat.completions.create(model="any", messages=msgs, tools=[WEATHER], tool_choice="none",
                                       max_tokens=20)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length")


def test_parallel_calls_and_bad_tools_are_400s(server):
    import httpx

    body = {"messages": [{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}],
            "tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": True, "max_tokens": 200}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    calls = r.json()["choices"][0]["message"].get("tool_calls") or []
    fin = r.json()["choices"][0]["finish_reason"]
    assert (fin == "tool_calls" and len(calls) >= 1) or fin == "length"
    for bad, word in ((dict(body, tools=[{"type": "function"}]), "tools[0] must be"),
                      (dict(body, tool_choice={"type": "function", "function": {"name": "nope"}}), "not in tools"),
                      (dict(body, grammar='root ::= "a"'), "not both")):
        r = httpx.post(server + "/v1/chat/completions", json=bad, timeout=30)
        assert r.status_code == 400 and word in r.text, r.text


def test_ollama_chat_tools(server):
    import httpx

    body = {"messages": [{"role": "user", "content": "What is the weather in Paris? Call the tool."}],
            "tools": [WEATHER], "stream": False, "options": {"temperature": 0, "num_predict": 120}}
    r = httpx.post(server + "/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    msg = r.json()["message"]
    for tc in msg.get("tool_calls", []):
        assert tc["function"]["name"] == "get_weather" and isinstance(tc["function"]["arguments"], dict)
    assert msg.get("tool_calls") or isinstance(msg["content"], str)
    lines = []
    with httpx.stream("POST", server + "/api/chat", json=dict(body, stream=True), timeout=120) as s:
        lines = [json.loads(x) for x in s.iter_lines() if x]
    assert lines[-1]["done"] is True
    streamed = [tc for x in lines for tc in x.get("message", {}).get("tool_calls", [])]
    assert streamed == msg.get("tool_calls", [])  # greedy: the same answer, its calls once whole


def test_python_api_grammar_response_format_and_tools(default_model):
    import jsonschema

    from llamapy import Llama, LlamaGrammar

    with Llama(default_model, n_ctx=1024, verbose=False) as llm:
        out = llm("Is the sky blue? Answer:", grammar=LlamaGrammar.from_string('root ::= "yes" | "no"'),
                  max_tokens=5)
        assert out["choices"][0]["text"] in ("yes", "no")
        schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                  "required": ["n"], "additionalProperties": False}
        r = llm.create_chat_completion([{"role": "user", "content": "A digit as JSON"}], max_tokens=40,
                                       response_format={"type": "json_schema", "json_schema": {"schema": schema}})
        jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), schema)
        r = llm.create_chat_completion([{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER],
                                       tool_choice="required", max_tokens=120)
        ch = r["choices"][0]
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None
        jsonschema.validate(json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"]),
                            WEATHER["function"]["parameters"])
        chunks = list(llm.create_chat_completion([{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER],
                                                 tool_choice="required", max_tokens=120, stream=True))
        args = "".join(t["function"]["arguments"] for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", []))
        jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        with pytest.raises(ValueError, match="line 1"):
            LlamaGrammar.from_string('root ::= "a')
        with pytest.raises(ValueError, match="not in tools"):
            llm.create_chat_completion([{"role": "user", "content": "x"}], tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
        g = LlamaGrammar.from_json_schema('{"type": "integer", "minimum": 1, "maximum": 9}')
        llm.eval(llm.tokenize(b"A number:"))
        t = llm.sample(grammar=g)
        assert llm.detokenize([t]).decode() in [str(i) for i in range(1, 10)]


def test_ollama_client_format_and_tools(server):
    """The `ollama` package's client (when installed) against llamapy serve: format and tools."""
    ollama = pytest.importorskip("ollama")
    import jsonschema

    client = ollama.Client(host=server)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"],
              "additionalProperties": False}
    r = client.chat(model="any", messages=[{"role": "user", "content": "A city, as JSON"}], format=schema,
                    options={"num_predict": 60})
    jsonschema.validate(json.loads(r["message"]["content"]), schema)
    r = client.chat(model="any", messages=[{"role": "user", "content": "Weather in Paris? Use the tool."}],
                    tools=[WEATHER], options={"num_predict": 120, "temperature": 0})
    for tc in r.message.tool_calls or []:
        assert tc.function.name == "get_weather"
        jsonschema.validate(dict(tc.function.arguments), WEATHER["function"]["parameters"])
    assert r.message.tool_calls or isinstance(r.message.content, str)
