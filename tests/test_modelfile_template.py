"""Go text/template as Ollama renders it, and Ollama's prompt building with its own templates (byte-exact)."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamapy.store.gotemplate import Template, TemplateError, go_json, go_printf, identifiers
from llamapy.store.prompt import chat_messages, chat_prompt, collate, execute, generate_messages, uses_messages


def render(src: str, data=None, **kw) -> str:
    return Template(src).render(data if data is not None else {}, **kw)


# -- the language ---------------------------------------------------------------------------------------
def test_trim_markers_and_comments():
    assert render("a  {{- 1 -}}  b") == "a1b"
    assert render("a \n{{- 1 }} \nb") == "a1 \nb"
    assert render("a {{/* note */}} b") == "a  b"
    assert render("a {{- /* note */ -}} \n b") == "ab"
    assert render("x{{-3}}") == "x-3"  # no space after the dash: a negative number, not a trim marker


def test_if_else_if_with_range_else():
    t = "{{ if eq .N 1 }}one{{ else if eq .N 2 }}two{{ else }}many{{ end }}"
    assert [render(t, {"N": n}) for n in (1, 2, 3)] == ["one", "two", "many"]
    assert render("{{ with .A }}[{{ . }}]{{ else }}none{{ end }}", {"A": "x"}) == "[x]"
    assert render("{{ with .A }}[{{ . }}]{{ else with .B }}b={{ . }}{{ end }}", {"A": "", "B": 2}) == "b=2"
    assert render("{{ range .L }}<{{ . }}>{{ else }}empty{{ end }}", {"L": []}) == "empty"
    assert render("{{ range $i, $e := .L }}{{ $i }}={{ $e }};{{ end }}", {"L": ["a", "b"]}) == "0=a;1=b;"
    assert render("{{ range $e := .L }}{{ $e }}{{ end }}", {"L": ["a", "b"]}) == "ab"
    assert render("{{ range $k, $v := .M }}{{ $k }}:{{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}) == "a:1 b:2 "
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert render("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}"
                  "{{ end }}", {"L": [1, 2, 3, 4, 5]}) == "13"
    assert render("{{ range .Missing }}x{{ end }}|") == "|"


def test_variables_scope_and_assignment():
    assert render('{{ $x := "a" }}{{ if true }}{{ $x = "b" }}{{ $y := 1 }}{{ end }}{{ $x }}') == "b"
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        render("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")
    assert render("{{ range .L }}{{ $.Top }}{{ . }}{{ end }}", {"L": [1, 2], "Top": "t"}) == "t1t2"
    assert render("{{ $m := .M }}{{ $m.A.B }}", {"M": {"A": {"B": "deep"}}}) == "deep"
    assert render("{{ (index .L 1).Name }}", {"L": [{"Name": "a"}, {"Name": "b"}]}) == "b"


def test_functions():
    d = {"L": [1, 2, 3], "S": "你好", "E": "", "M": {"k": "v"}}
    assert render("{{ and 1 .E 3 }}|{{ and 1 2 }}|{{ or .E 0 }}|{{ or .E 7 }}|{{ not .E }}", d) == "|2|0|7|true"
    assert render('{{ eq 1 2 3 1 }} {{ ne "a" "b" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1 2 }}') == \
        "true true true true true false"
    assert render("{{ len .L }} {{ len .S }} {{ index .L 2 }} {{ index .M \"k\" }} {{ slice .L 1 }}", d) == \
        "3 6 3 v [2 3]"  # len of a string counts bytes, as Go
    assert render("{{ len (slice .L 0 2) }}{{ .L | len }}", d) == "23"
    assert render('{{ printf "%s-%d-%05.1f-%v-%q-%x" "a" 7 3.14159 .L "q" 255 }}', d) == '''a-7-003.1-[1 2 3]-"q"-ff'''
    assert render('{{ print "a" 1 2 "b" }}|{{ println 1 "x" }}') == "a1 2b|1 x\n"
    assert render('{{ json .M }} {{ json "<a&b>" }} {{ json .L }}', d) == '{"k":"v"} "\\u003ca\\u0026b\\u003e" [1,2,3]'
    assert render("{{ 0.2 }} {{ 1e6 }} {{ 24 }} {{ true }} {{ .Missing }} {{ 'a' }} {{ eq .Missing nil }}") == \
        "0.2 1e+06 24 true <no value> 97 true"
    assert render("{{ html \"<b>\" }} {{ urlquery \"a b\" }}") == "&lt;b&gt; a+b"
    assert go_json({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert go_printf("%d%%", 5) == "5%" and go_printf("%s") == "%!s(MISSING)"


def test_fields_find_json_named_struct_keys():
    # Ollama's messages and tools are Go structs: .Role, .ToolCalls, .Function.Name read their JSON names
    msg = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}
    t = "{{ .Role }}:{{ range .ToolCalls }}{{ .Function.Name }}({{ json .Function.Arguments }}){{ end }}"
    assert render(t, msg) == 'assistant:f({"x":1})'
    # a map prints as JSON (Ollama's tools and arguments have String methods that marshal them)
    assert render("{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}", msg) == '{"x":1}'


@pytest.mark.parametrize("src, where, what", [
    ("abc {{ if .X }}", "line 1, column 16", "has no {{end}}"),
    ("a\nb {{ .X ", "line 2, column 3", "unclosed action"),
    ("{{ end }}", "line 1, column 4", "unexpected {{end}}"),
    ("x\n\n  {{ nosuch 1 }}", "line 3, column 6", 'function "nosuch" not defined'),
    ('{{ "abc }}', "line 1, column 4", "unterminated quoted string"),
    ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", "line 1, column 24", "expected end; found {{else}}"),
    ("{{ break }}", "line 1, column 4", "outside {{range}}"),
    ("{{ define \"x\" }}{{ end }}", "line 1, column 4", "not supported"),
    ("{{ ( 1 }}", "line 1, column 8", "unexpected end of action in parenthesized pipeline"),
    ("{{ }}", "line 1, column 4", "missing value for command"),
    ("{{ nil }}", "line 1, column 4", "nil is not a command"),
    ("{{/* open }}", "line 1, column 1", "unclosed comment"),
])
def test_parse_errors_are_one_line_with_line_and_column(src, where, what):
    with pytest.raises(TemplateError) as e:
        Template(src)
    msg = str(e.value)
    assert msg.startswith(f"template: {where}: ") and what in msg and "\n" not in msg


def test_runtime_errors_say_where():
    with pytest.raises(TemplateError, match="line 2, column 4: error calling index: index out of range: 5"):
        render("\n{{ index .L 5 }}", {"L": [1]})
    with pytest.raises(TemplateError, match="incompatible types for comparison"):
        render('{{ eq 1 "1" }}')
    with pytest.raises(TemplateError, match="nil pointer evaluating .B"):
        render("{{ .A.B }}")


def test_budgets_stop_endless_loops_and_huge_output():
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match="stopped after"):
        render("{{ range 1000000000 }}{{ range 1000000000 }}x{{ end }}{{ end }}")
    with pytest.raises(TemplateError, match="output over 1000 characters"):
        render("{{ range 100 }}{{ $.S }}{{ end }}", {"S": "y" * 50}, max_output=1000)
    with pytest.raises(TemplateError, match="width or precision"):
        render('{{ printf "%999999999d" 1 }}')
    assert time.monotonic() - t0 < 10
    with pytest.raises(TemplateError, match="nested deeper"):
        Template("{{ " + "(" * 200 + "1" + ")" * 200 + " }}")


def test_no_way_to_python():
    for src in ("{{ .__class__ }}", "{{ call .F }}", "{{ .Upper }}"):
        try:
            out = render(src, {"S": "x"})
        except TemplateError:
            continue
        assert out == "<no value>"


# -- Ollama's templates and prompt building -------------------------------------------------------------
CHAT = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]

LLAMA3_LEGACY = (  # the llama3 library model's template (and the tutorial's, with {{ .Response }})
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")
LLAMA3_MESSAGES = (  # template/llama3-instruct.gotmpl
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA3_EXPECTED = ("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")

CHATML_LEGACY = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                 "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
                 "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
CHATML_MESSAGES = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                   "{{ end }}<|im_start|>assistant\n")
CHATML_EXPECTED = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")

MISTRAL = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.System }}[INST] {{ $.System }}

{{ .Content }}[/INST]
{{- else }}[INST] {{ .Content }}[/INST]
{{- end }}
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""

GEMMA = ("<start_of_turn>user\n{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>\n"
         "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n")

ALPACA = ("{{ if .System }}{{ .System }}\n\n{{ end }}{{ if .Prompt }}### Instruction:\n{{ .Prompt }}\n\n{{ end }}"
          "### Response:\n{{ .Response }}\n\n")


def test_llama3_legacy_and_messages_forms_give_the_same_prompt():
    assert not uses_messages(Template(LLAMA3_LEGACY)) and uses_messages(Template(LLAMA3_MESSAGES))
    assert execute(LLAMA3_LEGACY, CHAT) == LLAMA3_EXPECTED
    assert execute(LLAMA3_MESSAGES, CHAT) == LLAMA3_EXPECTED


def test_chatml_qwen():
    assert execute(CHATML_LEGACY, CHAT) == CHATML_EXPECTED
    assert execute(CHATML_MESSAGES, CHAT) == CHATML_EXPECTED


def test_mistral_system_goes_into_the_last_user_turn():
    assert execute(MISTRAL, CHAT) == "[INST] Hi[/INST] Hello</s>[INST] S\n\nBye[/INST] "
    # the legacy path of the same template: one render per turn, the last cut after .Response
    assert execute(MISTRAL, CHAT, force_legacy=True) == "[INST] S\n\nHi[/INST] Hello</s>[INST] Bye[/INST] "


def test_gemma_and_alpaca_legacy_turns():
    assert execute(GEMMA, CHAT) == ("<start_of_turn>user\nS Hi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
                                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert execute(ALPACA, CHAT) == ("S\n\n### Instruction:\nHi\n\n### Response:\nHello\n\n"
                                     "### Instruction:\nBye\n\n### Response:\n")


def test_legacy_turn_rules():
    # a system message after a turn starts a new render; consecutive user messages merge
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "system", "content": "S2"},
            {"role": "user", "content": "c"}]
    assert execute(CHATML_LEGACY, msgs) == ("<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
                                            "<|im_start|>system\nS2<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
                                            "<|im_start|>assistant\n")
    assert collate(msgs)[0] == "S2"
    # a conversation ending with the assistant's words: the prompt continues them
    part = CHAT[:3]
    assert execute(LLAMA3_LEGACY, part).endswith("<|start_header_id|>assistant<|end_header_id|>\n\nHello")


def test_suffix_and_generate():
    fim = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert execute(fim, [], prompt="def f(", suffix="return x") == "<PRE> def f( <SUF>return x <MID>"
    msgs = generate_messages("Why?", model_system="S", model_messages=[{"role": "user", "content": "q"},
                                                                      {"role": "assistant", "content": "a"}])
    assert execute(LLAMA3_LEGACY, msgs) == LLAMA3_EXPECTED.replace("Hi", "q").replace("Hello", "a").replace("Bye",
                                                                                                            "Why?")
    assert generate_messages("p", system="mine", model_system="S")[0]["content"] == "mine"


def test_chat_messages_put_the_modelfile_system_first():
    m = chat_messages([{"role": "user", "content": "Hi"}], model_system="S",
                      model_messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert [x["role"] for x in m] == ["system", "user", "assistant", "user"]
    own = chat_messages([{"role": "system", "content": "mine"}, {"role": "user", "content": "Hi"}], model_system="S")
    assert [x["content"] for x in own] == ["mine", "Hi"]


def test_chat_prompt_drops_the_oldest_messages_that_do_not_fit():
    long = [{"role": "system", "content": "S"}] + [{"role": r, "content": f"{r}{i} " * 20}
                                                  for i in range(4) for r in ("user", "assistant")]
    long.append({"role": "user", "content": "last"})
    full = chat_prompt(CHATML_MESSAGES, long)
    assert full == execute(CHATML_MESSAGES, long)
    words = len(full.split())
    cut = chat_prompt(CHATML_MESSAGES, long, num_ctx=words // 2, count_tokens=lambda s: len(s.split()))
    assert len(cut.split()) <= words // 2 and cut.endswith("<|im_start|>user\nlast<|im_end|>\n<|im_start|>assistant\n")
    assert cut.startswith("<|im_start|>system\nS<|im_end|>\n")  # earlier system messages are kept
    assert "user0" not in cut


def test_identifiers_as_ollama_collects_them():
    # variables count with their fields, as in Ollama (`$.Messages` gives "$" and "Messages")
    assert sorted(set(identifiers(Template(MISTRAL).root))) == ["$", "$index", "Content", "Messages", "Prompt",
                                                                "Response", "Role", "System"]
    assert identifiers(Template("{{ $.Messages }}").root) == ["$", "Messages"]
    # but not the variables a pipeline declares
    assert identifiers(Template("{{ range $i, $m := .L }}{{ end }}").root) == ["L"]


LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}

{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string", "description": "The city"}}}}}]
TOOL_JSON = ('{"type":"function","function":{"name":"get_weather","description":"Get the weather","parameters":'
             '{"type":"object","required":["city"],"properties":{"city":{"type":"string","description":"The city"}}}}}')
LLAMA31_SYSTEM = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\nWhen you receive "
                  "a tool call response, use the output to format an answer to the orginal user question.\n\nYou are a "
                  "helpful assistant with tool calling capabilities.<|eot_id|>")


def test_llama31_tools_and_tool_calls():
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    assert execute(LLAMA31, ask, tools=TOOLS) == (
        LLAMA31_SYSTEM + "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with "
        "a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the "
        'format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use '
        "variables.\n\n" + TOOL_JSON + "\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    chat = ask + [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "22C"}]
    assert execute(LLAMA31, chat, tools=TOOLS) == (
        LLAMA31_SYSTEM + "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        '<|start_header_id|>assistant<|end_header_id|>\n\n\n{"name": "get_weather", "parameters": {"city":"Paris"}}'
        "<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n22C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # without tools, a system message: once, from .System (the range skips the system role)
    assert execute(LLAMA31, [{"role": "system", "content": "S"}] + ask) == (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


PIECES = ["{{", "}}", "{{- ", " -}}", "if", "else", "end", "range", "with", "break", "continue", " ", ".", ".Messages",
          ".Role", "$", "$i", "$x", ":=", "=", ",", "(", ")", "|", '"s"', "`r`", "'c'", "1", "-2", "3.5", "0x1F", "eq",
          "len", "index", "slice", "printf", '"%d %s %v"', "json", "and", "or", "not", "nil", "true", "/*", "*/", "\n",
          "text", "999999999", "{{ range 999999999 }}", "{{ end }}"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_any_template_text_parses_or_fails_cleanly_and_renders_within_bounds(pieces):
    src = "".join(pieces)
    try:
        t = Template(src)
    except TemplateError as e:
        assert "\n" not in str(e) and str(e).startswith("template: ")
        return
    try:
        out = t.render({"Messages": [{"role": "user", "content": "hi"}], "System": "S"}, max_steps=5000,
                       max_output=10_000)
    except TemplateError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(out, str) and len(out) <= 10_000
