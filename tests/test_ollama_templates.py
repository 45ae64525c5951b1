"""Ollama's own template test data, rendered by the store's prompt builder: every built-in template over the
chats of its template tests, compared byte for byte with the expected renders Ollama ships."""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from llamapy.store.gotemplate import TemplateError
from llamapy.store.prompt import chat_prompt, collate, execute, parse_template, vars_of

DATA = Path(__file__).parent / "data" / "ollama_templates"
CHATS = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"}],
}
CHATS["system-user-assistant-user"] = [{"role": "system", "content": "You are a helpful assistant."}
                                       ] + CHATS["user-assistant-user"]
# Ollama's test drops one trailing space from these templates' renders before comparing
TRAILING_SPACE = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}
CASES = [(d.name, chat) for d in sorted(DATA.iterdir()) for chat in CHATS]


def test_the_data_is_there():
    assert len(CASES) == 60


@pytest.mark.parametrize("name, chat", CASES)
def test_builtin_template_renders_as_ollama(name, chat):
    folder = DATA / name
    out = execute((folder / "template.gotmpl").read_text(encoding="utf-8"), CHATS[chat])
    if name in TRAILING_SPACE and out.endswith(" "):
        out = out[:-1]
    assert out == (folder / chat).read_text(encoding="utf-8")


# -- Ollama's template tests: the names a template uses ------------------------------------------------
VARS = [
    ("{{ .Prompt }}", ["prompt", "response"]),
    ("{{ .System }} {{ .Prompt }}", ["prompt", "response", "system"]),
    ("{{ .System }} {{ .Prompt }} {{ .Response }}", ["prompt", "response", "system"]),
    ("{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}", ["prompt", "response", "system", "tools"]),
    ("{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}", ["content", "messages", "role"]),
    ('{{ range .Messages }}{{ if eq .Role "tool" }}Tool Result: {{ .ToolName }} {{ .Content }}{{ end }}{{ end }}',
     ["content", "messages", "role", "toolname"]),
    ('{{- range .Messages }}\n{{- if eq .Role "system" }}SYSTEM:\n{{- else if eq .Role "user" }}USER:\n'
     '{{- else if eq .Role "assistant" }}ASSISTANT:\n{{- else if eq .Role "tool" }}TOOL:\n{{- end }} {{ .Content }}\n'
     "{{- end }}", ["content", "messages", "role"]),
    ("{{- if .Messages }}\n{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
     "<|im_start|>assistant\n{{ else -}}\n{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
     "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
     "{{ .Response }}<|im_end|>\n{{- end -}}", ["content", "messages", "prompt", "response", "role", "system"]),
]


@pytest.mark.parametrize("text, names", VARS)
def test_vars_as_ollama_lists_them(text, names):
    # a template with neither .Messages nor .Response gets a .Response at its end, which counts
    assert vars_of(parse_template(text)) == names


@pytest.mark.parametrize("text, what", [("{{ .Prompt ", "unclosed action"),
                                        ('{{define "x"}}{{template "x"}}{{end}}{{template "x"}}', "not supported")])
def test_bad_templates_fail_to_parse(text, what):
    with pytest.raises(TemplateError, match=what):
        parse_template(text)


# -- Ollama's template tests: several template forms, one prompt --------------------------------------
MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_MESSAGES = ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
                    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}'
                    "[INST] {{ end }}\n{{- end }}")
CHATML_LEGACY = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}"
                 "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
CHATML_MESSAGES = ("\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                   "{{ end }}<|im_start|>assistant\n")
HELLO = [{"role": "user", "content": "Hello friend!"}, {"role": "assistant", "content": "Hello human!"},
         {"role": "user", "content": "What is your name?"}]
SYS = [{"role": "system", "content": "You are a helpful assistant!"}]
EXECUTE = [
    ("mistral", [MISTRAL_LEGACY, MISTRAL_LEGACY + "{{ .Response }}", MISTRAL_MESSAGES], HELLO,
     "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "),
    ("mistral system", [MISTRAL_LEGACY, MISTRAL_LEGACY + "{{ .Response }}", MISTRAL_MESSAGES], SYS + HELLO,
     "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "),
    ("mistral assistant", ["[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
                           '\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
                           '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}'],
     HELLO + [{"role": "assistant", "content": "My name is Ollama and I"}],
     "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"),
    ("chatml", [CHATML_LEGACY, CHATML_MESSAGES], SYS + HELLO,
     "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
     "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
     "<|im_start|>assistant\n"),
]
EXECUTE_CASES = [(name, i, text, msgs, want) for name, texts, msgs, want in EXECUTE for i, text in enumerate(texts)]


@pytest.mark.parametrize("name, i, text, msgs, want", EXECUTE_CASES)
def test_legacy_and_messages_templates_build_one_prompt(name, i, text, msgs, want):
    assert execute(text, msgs) == want


FIM = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"


def test_suffix():
    assert execute(FIM, [{"role": "user", "content": "hello"}]) == "hello"
    assert execute(FIM, prompt="def add(", suffix="return x") == "<PRE> def add( <SUF>return x <MID>"


def test_date_functions():
    today = datetime.date.today()
    hello = [{"role": "user", "content": "Hello"}]
    got = execute("{{- range .Messages }}{{ .Content }}{{ end }} Today is {{ currentDate }}", hello)
    assert got in {f"Hello Today is {d.isoformat()}" for d in (today, datetime.date.today())}
    got = execute('{{- range .Messages }}{{ end }}{{ yesterdayDate "2006-01-02" }}', hello)
    assert got in ((today - datetime.timedelta(days=1)).isoformat(), today.isoformat())  # midnight may pass


COLLATE = [
    ([("user", "Hello"), ("user", "How are you?")], "", [("user", "Hello\n\nHow are you?")]),
    ([("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature")], "",
     [("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature")]),
    ([("user", "What's the weather?"), ("tool", "sunny", "get_conditions"), ("tool", "72F", "get_temperature")], "",
     [("user", "What's the weather?"), ("tool", "sunny", "get_conditions"), ("tool", "72F", "get_temperature")]),
    ([("system", "You are helpful"), ("user", "Hello"), ("assistant", "Hi there!"), ("user", "What's the weather?"),
      ("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature"), ("user", "Thanks")], "You are helpful",
     [("system", "You are helpful"), ("user", "Hello"), ("assistant", "Hi there!"), ("user", "What's the weather?"),
      ("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature"), ("user", "Thanks")]),
]


def _msg(t):
    return {"role": t[0], "content": t[1], **({"tool_name": t[2]} if len(t) > 2 else {})}


@pytest.mark.parametrize("msgs, system, want", COLLATE)
def test_collate_keeps_tool_results_apart(msgs, system, want):
    got_system, got = collate([_msg(m) for m in msgs])
    assert got_system == system
    assert [(m["role"], m["content"], m["tool_name"]) for m in got] == [
        (w[0], w[1], w[2] if len(w) > 2 else "") for w in want]


def test_message_fields_are_empty_not_missing():
    # Ollama's message struct always has these fields: an unset one prints nothing, not "<no value>"
    out = execute("{{ range .Messages }}[{{ .Thinking }}|{{ .ToolName }}|{{ .ToolCallID }}]{{ end }}",
                  [{"role": "user", "content": "x"}])
    assert out == "[||]"
    assert execute("{{ if .Think }}T{{ end }}{{ .Prompt }}", [{"role": "user", "content": "x"}], think=True) == "Tx"


# -- Ollama's chat prompt tests: dropping what does not fit -------------------------------------------
SPACED = ("\n{{- if .System }}{{ .System }} {{ end }}\n{{- if .Prompt }}{{ .Prompt }} {{ end }}\n"
          "{{- if .Response }}{{ .Response }} {{ end }}")
HARRY = [{"role": "user", "content": "You're a test, Harry!"}, {"role": "assistant", "content": "I-I'm a what?"},
         {"role": "user", "content": "A test. And a thumping good one at that, I'd wager."}]
LIVED = {"role": "system", "content": "You are the Test Who Lived."}
CHAT_PROMPT = [
    ("messages", 64, HARRY,
     "You're a test, Harry! I-I'm a what? A test. And a thumping good one at that, I'd wager. "),
    ("truncate messages", 1, HARRY, "A test. And a thumping good one at that, I'd wager. "),
    ("message with system prompt", 2048, [LIVED] + HARRY,
     "You are the Test Who Lived. You're a test, Harry! I-I'm a what? A test. And a thumping good one at that, "
     "I'd wager. "),
    ("out of order system", 2048, HARRY[:2] + [LIVED] + HARRY[2:],
     "You're a test, Harry! I-I'm a what? You are the Test Who Lived. A test. And a thumping good one at that, "
     "I'd wager. "),
    ("no truncate with limit exceeded", None, HARRY,
     "You're a test, Harry! I-I'm a what? A test. And a thumping good one at that, I'd wager. "),
]


@pytest.mark.parametrize("name, limit, msgs, want", CHAT_PROMPT)
def test_chat_prompt_as_ollama(name, limit, msgs, want):
    assert chat_prompt(SPACED, msgs, num_ctx=limit, count_tokens=lambda s: len(s.split())) == want


def test_chat_prompt_keeps_a_dropped_system_message():
    msgs = [LIVED] + HARRY
    got = chat_prompt(SPACED, msgs, num_ctx=12, count_tokens=lambda s: len(s.split()))
    assert got == "You are the Test Who Lived. A test. And a thumping good one at that, I'd wager. "


@pytest.mark.parametrize("limit, most", [(2048, 1), (5, 5)])
def test_chat_prompt_counts_tokens_at_most_once_per_message(limit, most):
    calls = []
    msgs = [{"role": r, "content": f"{r} {i}"} for i in range(1, 3) for r in ("user", "assistant")]
    msgs.append({"role": "user", "content": "message 3"})
    chat_prompt(SPACED, msgs, num_ctx=limit, count_tokens=lambda s: calls.append(s) or len(s.split()))
    assert 1 <= len(calls) <= most
