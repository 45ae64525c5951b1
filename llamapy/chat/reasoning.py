"""A model's thoughts apart from its answer: `--reasoning-format deepseek` (the default, as llama-server's) puts the
`<think>...</think>` part of a chat answer into `reasoning_content`; `none` leaves it in `content`.

As llama-server parses DeepSeek R1's output: an optional `<think>`, then everything up to the first `</think>` is
the reasoning (stripped of surrounding whitespace), the rest (from its first non-blank character) the content;
an answer without `</think>` is all content. It applies to models whose chat template speaks of `</think>`
(DeepSeek R1 and its distillations, QwQ, Qwen3, ...): other models' answers are left as they are.

`ReasoningStream` does the same to streamed text, as deltas: `reasoning_content` until `</think>`, `content`
after it. A stream is in its thoughts when the answer opens with `<think>` or the prompt ended with one (the
templates that open the thought for the model).
"""
from __future__ import annotations

import re

FORMATS = ("deepseek", "none")
OPEN, CLOSE = "<think>", "</think>"
_BLANK = " \r\n"
_SPLIT = re.compile(r"((?:<think>)?([\s\S]*?)</think>)?([\s\S]*)")


def applies(reasoning_format: str, template_source: str | None) -> bool:
    """Whether answers of a model with this chat template have their thoughts taken out."""
    return reasoning_format == "deepseek" and bool(template_source) and CLOSE in template_source


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, content) of a whole answer; ("", text) when it has no `</think>`."""
    m = _SPLIT.fullmatch(text.lstrip(_BLANK))  # blanks before <think> too (llama-server's regex wants none)
    if m is None or m.group(1) is None:
        return "", text
    rest = m.group(3)
    return m.group(2).strip(), rest[len(rest) - len(rest.lstrip(_BLANK)):]


def opens_thought(prompt_text: str) -> bool:
    """The prompt leaves the model inside a thought (it ends with `<think>`)."""
    return prompt_text.rstrip(_BLANK).endswith(OPEN)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (held back: the tag may be completing)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningStream:
    """Streamed text in, deltas out: {"reasoning_content": ...} while thinking, {"content": ...} after."""

    def __init__(self, thinking: bool = False):
        self.state = "start"  # start -> think -> after (blanks dropped) -> content; or start -> content
        self.thinking_at_start = thinking
        self.buf = ""
        self.reasoning = ""

    def feed(self, text: str) -> list[dict[str, str]]:
        self.buf += text
        out: list[dict[str, str]] = []
        while True:
            before = (self.state, self.buf)
            out += self._step()
            if (self.state, self.buf) == before:
                return [d for d in out if next(iter(d.values()))]

    def _step(self) -> list[dict[str, str]]:
        if self.state == "start":
            head = self.buf.lstrip(_BLANK)
            if head.startswith(OPEN):
                self.buf, self.state = head[len(OPEN):], "think"
            elif OPEN.startswith(head):
                return []  # blanks or the start of <think>: wait
            else:
                self.state = "think" if self.thinking_at_start else "content"
            return []
        if self.state == "think":
            if not self.reasoning:
                self.buf = self.buf.lstrip(_BLANK)
            end = self.buf.find(CLOSE)
            if end >= 0:
                part = self.buf[:end].rstrip(_BLANK)
                self.buf, self.state = self.buf[end + len(CLOSE):], "after"
                self.reasoning += part
                return [{"reasoning_content": part}]
            keep = _partial_suffix(self.buf, CLOSE)
            body = self.buf[:len(self.buf) - keep]
            emit = body.rstrip(_BLANK)  # blanks before </think> are not part of the reasoning
            self.buf = self.buf[len(emit):]
            self.reasoning += emit
            return [{"reasoning_content": emit}]
        if self.state == "after":
            head = self.buf.lstrip(_BLANK)
            self.buf = head
            if head:
                self.state = "content"
            return []
        text, self.buf = self.buf, ""
        return [{"content": text}]

    def finish(self) -> list[dict[str, str]]:
        """What is still held back: an unfinished thought stays reasoning, anything else is content."""
        text, self.buf = self.buf, ""
        if self.state == "think":
            text = text.rstrip(_BLANK)
            return [{"reasoning_content": text}] if text else []
        if self.state == "start" and self.thinking_at_start:
            text = text.lstrip(_BLANK)
            text = text[len(OPEN):] if text.startswith(OPEN) else text
            text = text.strip(_BLANK)
            return [{"reasoning_content": text}] if text else []
        return [{"content": text}] if text and self.state != "after" else []
