"""Chat templates are bounded: a hostile template is refused with one line, quickly, never a hang,
a huge allocation, an OverflowError or a RecursionError (chat/sandbox.py)."""
from __future__ import annotations

import time

import pytest

from llamapy.chat.sandbox import TemplateLimits
from llamapy.chat.templates import ChatTemplate, TemplateTooCostly
from llamapy.errors import LlamapyError

HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string times a huge number": "{{ 'x' * 10**10 }}",
    "list times a huge number": "{{ ([1] * 100000) * 100000 }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(36) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(36) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "huge power": "{{ 10 ** (10 ** 10) }}",
    "wide center filter": "{{ 'x'|center(10000000000) }}",
    "wide format width": "{{ '%0999999999d'|format(1) }}",
    "wide str method": "{{ 'x'.ljust(10000000000) }}",
    "replace blow-up": "{% set s = 'a' * 1000000 %}{{ s.replace('a', 'b' * 100) }}",
    "nested list output": "{% set x = ['y' * 100000] * 100 %}{% set y = [x] * 10000 %}{{ y }}",
    "join of a big list": "{% set l = ['x' * 100000] * 1000 %}{{ l|join }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_refused_at_load_in_one_line(name):
    t0 = time.monotonic()
    with pytest.raises(TemplateTooCostly) as e:
        ChatTemplate.for_model({}, name=HOSTILE[name])
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert msg.startswith("chat template (--chat-template) refused: ") and "\n" not in msg, msg


def test_hostile_branch_is_refused_per_request_within_the_budget():
    src = ("{% for m in messages %}{% if m.content == 'boom' %}{% for i in range(100000) %}{% for j in range(100000) %}"
           "{% endfor %}{% endfor %}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    tpl = ChatTemplate.for_model({}, name=src)  # the sample conversation is fine: loaded
    tpl.limits = TemplateLimits(seconds=0.3)
    assert tpl.render([{"role": "user", "content": "hi"}]) == "<user>hi"
    t0 = time.monotonic()
    with pytest.raises(LlamapyError, match=r"refused: it takes longer than 0.3 s"):
        tpl.render([{"role": "user", "content": "boom"}])
    assert time.monotonic() - t0 < 1.5


def test_the_budget_is_configurable(monkeypatch):
    monkeypatch.setenv("LLAMAPY_TEMPLATE_TIMEOUT", "0.2")
    src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    t0 = time.monotonic()
    with pytest.raises(TemplateTooCostly, match="longer than 0.2 s"):
        ChatTemplate.for_model({}, name=src)
    assert time.monotonic() - t0 < 1


def test_reserved_hook_names_can_not_be_rebound():
    with pytest.raises(LlamapyError, match="reserved"):
        ChatTemplate.for_model({}, name="{% set __llamapy_iter = range %}{{ 1 }}")


def test_ordinary_templates_render_large_conversations(default_model):
    from llamapy.ggufio.reader import GGUFReader

    with GGUFReader(default_model) as r:
        tpl = ChatTemplate.for_model({"tokenizer.chat_template": r.get("tokenizer.chat_template")})
    msgs = [{"role": "system", "content": "S"}]
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(20000)]
    out = tpl.render(msgs)
    assert out.count("<|im_start|>") == 20002 and "message 19999" in out  # every message and the prompt


def test_chat_command_refuses_a_spinning_template_in_one_line(default_model):
    import subprocess
    import sys

    src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "llamapy", "chat", "-m", default_model, "--chat-template", src],
                       input="hi\n", capture_output=True, text=True, timeout=60, check=False)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == "error: chat template (--chat-template) refused: it takes longer than 1 s"
    assert "Traceback" not in r.stderr
