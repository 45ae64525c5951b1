"""Ollama's prompt building: a chat (system + messages) turned into prompt text with a Modelfile TEMPLATE.

As Ollama's template.Execute: a template that uses `.Messages` is rendered once with the collated messages;
a legacy template (only `.System`, `.Prompt`, `.Response`) is rendered once per user turn, the renders
concatenated, and the last turn's render stops right after its `.Response` (left empty, for the model to
write). `chat_prompt` drops the oldest messages that do not fit the context, as Ollama's chatPrompt.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from .gotemplate import Template, cut_after_response, identifiers
from .gotemplate_parse import Action, Command, Field, Pipe

# the fields every message has in Ollama's templates (empty unless set), by their JSON names
_MESSAGE_FIELDS = {"content": "", "thinking": "", "images": None, "tool_calls": None, "tool_name": "",
                   "tool_call_id": ""}


def _as_message(m) -> dict:
    if isinstance(m, dict):
        d = dict(m)
    else:  # a Modelfile Message or any object with role/content
        d = {"role": m.role, "content": m.content}
    for k, v in _MESSAGE_FIELDS.items():
        if d.get(k) is None:
            d[k] = v
    return d


def vars_of(template: Template) -> list[str]:
    """Ollama's Template.Vars: the names the template uses, lower-cased, sorted, each once."""
    return sorted({name.lower() for name in identifiers(template.root)})


def parse_template(text: str) -> Template:
    """A Modelfile TEMPLATE as Ollama parses it: one that uses neither `.Messages` nor `.Response` gets a
    `{{ .Response }}` added at its end (so a legacy chat's earlier answers show)."""
    t = Template(text)
    if not {"messages", "response"} & set(vars_of(t)):
        t.root.append(Action(Pipe([Command([Field(["Response"], len(text))], len(text))], [], False, len(text))))
    return t


def _template(template: Template | str) -> Template:
    return template if isinstance(template, Template) else parse_template(template)


def collate(messages: Iterable) -> tuple[str, list[dict]]:
    """Ollama's collate: consecutive messages of one role (other than tool) merged, joined by a blank line;
    returns the system messages joined the same way, and the merged list."""
    system: list[str] = []
    out: list[dict] = []
    for m in messages:
        m = _as_message(m)
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":  # tool results keep their own names
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append(m)
    return "\n\n".join(system), out


def uses_messages(template: Template) -> bool:
    """Whether a template takes the whole chat (`.Messages`) rather than one turn at a time."""
    return "messages" in vars_of(template)


def execute(template: Template | str, messages: Iterable = (), *, tools: list | None = None, prompt: str = "",
            suffix: str = "", think: bool = False, think_level: str = "", think_set: bool = False,
            force_legacy: bool = False) -> str:
    """The prompt text for `messages` (dicts with role and content) as Ollama's template.Execute builds it.
    A template given as text is parsed as a Modelfile TEMPLATE (`parse_template`)."""
    t = _template(template)
    system, msgs = collate(messages)
    thinking = {"Think": think, "ThinkLevel": think_level, "IsThinkSet": think_set}
    if prompt and suffix:
        return t.render({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
    if not force_legacy and uses_messages(t):
        return t.render({"System": system, "Messages": msgs, "Tools": tools, "Response": "", **thinking})

    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": "", **thinking}

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
    """Ollama's chatPrompt: the oldest messages dropped until the prompt fits in `num_ctx` tokens (counted by
    `count_tokens`), keeping the system messages among the dropped ones and always the last message. Without
    `num_ctx` and `count_tokens` nothing is dropped."""
    t = _template(template)
    msgs = [_as_message(m) for m in messages]
    start, system = 0, []
    if num_ctx is not None and count_tokens is not None:
        for i in range(len(msgs)):
            system = [m for m in msgs[:i] if m["role"] == "system"]
            if count_tokens(execute(t, system + msgs[i:], tools=tools)) <= num_ctx or i == len(msgs) - 1:
                start = i
                break
    return execute(t, system + msgs[start:], tools=tools)


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
