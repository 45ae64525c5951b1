"""Ollama's prompt building: a chat (system + messages) turned into prompt text with a Modelfile TEMPLATE.

As Ollama's template.Execute: a template that uses `.Messages` is rendered once with the collated messages;
a legacy template (only `.System`, `.Prompt`, `.Response`) is rendered once per user turn, the renders
concatenated, and the last turn's render stops right after its `.Response` (left empty, for the model to
write). `chat_prompt` drops the oldest messages that do not fit the context, as Ollama's chatPrompt.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from .gotemplate import Template, cut_after_response, identifiers


def _as_message(m) -> dict:
    if isinstance(m, dict):
        d = dict(m)
    else:  # a Modelfile Message or any object with role/content
        d = {"role": m.role, "content": m.content}
    d.setdefault("content", "")
    return d


def collate(messages: Iterable) -> tuple[str, list[dict]]:
    """Ollama's collate: consecutive messages of one role merged (joined by a blank line); returns the
    system messages joined the same way, and the merged list."""
    system: list[str] = []
    out: list[dict] = []
    for m in messages:
        m = _as_message(m)
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"]:
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append(m)
    return "\n\n".join(system), out


def uses_messages(template: Template) -> bool:
    """Whether a template takes the whole chat (`.Messages`) rather than one turn at a time."""
    return "messages" in {name.lower() for name in identifiers(template.root)}


def execute(template: Template | str, messages: Iterable = (), *, tools: list | None = None, prompt: str = "",
            suffix: str = "", force_legacy: bool = False) -> str:
    """The prompt text for `messages` (dicts with role and content) as Ollama's template.Execute builds it."""
    t = template if isinstance(template, Template) else Template(template)
    system, msgs = collate(messages)
    if prompt and suffix:
        return t.render({"Prompt": prompt, "Suffix": suffix, "Response": ""})
    if not force_legacy and uses_messages(t):
        return t.render({"System": system, "Messages": msgs, "Tools": tools, "Response": ""})

    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def render_turn():
        out.append(t.render(dict(turn)))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        role = m["role"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                render_turn()
            turn["System"] = m["content"]
        elif role == "user":
            if turn["Response"]:
                render_turn()
            turn["Prompt"] = m["content"]
        elif role == "assistant":
            turn["Response"] = m["content"]
    out.append(t.render(dict(turn), root=cut_after_response(t.root)))
    return "".join(out)


def chat_prompt(template: Template | str, messages: list, *, tools: list | None = None, num_ctx: int | None = None,
                count_tokens: Callable[[str], int] | None = None) -> str:
    """Ollama's chatPrompt: the last message always, and as many earlier ones as fit in `num_ctx` tokens
    (counted by `count_tokens`), with every earlier system message kept."""
    t = template if isinstance(template, Template) else Template(template)
    msgs = [_as_message(m) for m in messages]
    n = len(msgs) - 1
    system: list[dict] = []
    if num_ctx is not None and count_tokens is not None:
        for i in range(n - 1, -1, -1):
            system = [m for m in msgs[:i] if m["role"] == "system"]
            if count_tokens(execute(t, system + msgs[i:], tools=tools)) > num_ctx:
                break
            n = i
    else:
        n = 0
        system = []
    return execute(t, system + msgs[n:], tools=tools)


def chat_messages(request: list, *, model_system: str | None = None, model_messages: Iterable = ()) -> list[dict]:
    """The messages Ollama's /api/chat renders: the Modelfile's MESSAGEs, then the request's, with the
    Modelfile's SYSTEM in front unless the request starts with its own system message."""
    req = [_as_message(m) for m in request]
    msgs = [_as_message(m) for m in model_messages] + req
    if model_system and (not req or req[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": model_system})
    return msgs


def generate_messages(prompt: str, *, system: str | None = None, model_system: str | None = None,
                      model_messages: Iterable = (), with_history: bool = True) -> list[dict]:
    """The messages Ollama's /api/generate renders: the request's system (else the Modelfile's), the
    Modelfile's MESSAGEs (unless a context is passed on), then the prompt as a user message."""
    msgs: list[dict] = []
    if system:
        msgs.append({"role": "system", "content": system})
    elif model_system:
        msgs.append({"role": "system", "content": model_system})
    if with_history:
        msgs.extend(_as_message(m) for m in model_messages)
    msgs.append({"role": "user", "content": prompt})
    return msgs
