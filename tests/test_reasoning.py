"""--reasoning-format: a chat answer's <think>...</think> part in `reasoning_content` (deepseek, the default) or
left in `content` (none), whole and streamed, as llama-server parses DeepSeek R1's answers."""
from __future__ import annotations

import json
import random

import pytest

from llamapy.chat.reasoning import ReasoningStream, applies, opens_thought, split_reasoning

CASES = [
    ("<think>\nI ponder.\n</think>\n\nThe answer.", ("I ponder.", "The answer.")),
    ("I ponder.</think>The answer.", ("I ponder.", "The answer.")),  # the prompt opened the thought
    ("  <think>a</think>", ("a", "")),
    ("No thoughts here.", ("", "No thoughts here.")),
    ("<think>unfinished", ("", "<think>unfinished")),
    ("<think></think>x </think> y", ("", "x </think> y")),
    ("<think> one\n two </think>\r\n answer\n", ("one\n two", "answer\n")),
]


@pytest.mark.parametrize("text,want", CASES)
def test_split_is_llama_servers_parse(text, want):
    assert split_reasoning(text) == want


def _streamed(text: str, thinking: bool, rng: random.Random) -> tuple[str, str]:
    s = ReasoningStream(thinking)
    deltas = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 4)
        deltas += s.feed(text[i:i + n])
        i += n
    deltas += s.finish()
    assert all(len(d) == 1 and next(iter(d.values())) for d in deltas)
    return ("".join(d.get("reasoning_content", "") for d in deltas),
            "".join(d.get("content", "") for d in deltas))


@pytest.mark.parametrize("text,want", [c for c in CASES if "unfinished" not in c[0]])
def test_stream_gives_the_whole_answers_split(text, want):
    rng = random.Random(7)
    thinking = not text.lstrip().startswith("<think>") and "</think>" in text
    for _ in range(30):
        assert _streamed(text, thinking, rng) == want


def test_stream_keeps_an_unfinished_thought_as_reasoning():
    assert _streamed("<think>still thinking  ", False, random.Random(1)) == ("still thinking", "")
    assert _streamed("still thinking", True, random.Random(1)) == ("still thinking", "")
    assert _streamed("<thin", False, random.Random(1)) == ("", "<thin")


def test_which_templates_and_prompts():
    assert applies("deepseek", "{{ content.split('</think>')[-1] }}")
    assert not applies("none", "{{ content.split('</think>')[-1] }}")
    assert not applies("deepseek", "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not applies("deepseek", None)
    assert opens_thought("<|im_start|>assistant\n<think>\n") and not opens_thought("<|im_start|>assistant\n")


# --- on the server: a chat template that speaks of </think>, and a grammar that makes the model think ------------

THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.split('</think>')[-1] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ANSWER = "<think>\nThe user greets me.\n</think>\n\nHello there."
GRAMMAR = 'root ::= "<think>\\nThe user greets me.\\n</think>\\n\\nHello there."'


@pytest.fixture(scope="module")
def state_for(default_model, tmp_path_factory):
    pytest.importorskip("fastapi")
    from llamapy.server import build_state

    tpl = tmp_path_factory.mktemp("tpl") / "thinking.jinja"
    tpl.write_text(THINKING_TEMPLATE)
    states = {}

    def make(fmt: str, template: bool = True):
        key = (fmt, template)
        if key not in states:
            states[key] = build_state(model_path=default_model, n_ctx=512, store_models=False,
                                      chat_template_file=str(tpl) if template else None,
                                      endpoints={"reasoning_format": fmt})
        return states[key]

    return make


def _chat(state, stream: bool):
    from starlette.testclient import TestClient

    from llamapy.server.app import create_app

    body = {"messages": [{"role": "user", "content": "Hi"}], "grammar": GRAMMAR, "max_tokens": 64, "stream": stream}
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        if not stream:
            return r.json()["choices"][0]
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]


def test_deepseek_format_puts_the_thought_in_reasoning_content(state_for):
    st = state_for("deepseek")
    choice = _chat(st, stream=False)
    assert choice["message"]["reasoning_content"] == "The user greets me."
    assert choice["message"]["content"] == "Hello there." and choice["finish_reason"] == "stop"
    deltas = _chat(st, stream=True)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("content", "") for d in deltas) == "Hello there."
    first = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first:])  # the thought comes first


def test_none_format_and_other_templates_leave_the_answer_whole(state_for):
    for st in (state_for("none"), state_for("deepseek", template=False)):
        choice = _chat(st, stream=False)
        assert choice["message"]["content"] == ANSWER and "reasoning_content" not in choice["message"]
        deltas = _chat(st, stream=True)
        assert "".join(d.get("content", "") for d in deltas) == ANSWER
        assert not any("reasoning_content" in d for d in deltas)


def test_reasoning_format_option():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llamapy", "serve", "--reasoning-format", "r1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "'r1' is not one of deepseek, none" in r.stderr
