"""Chat templates: the GGUF's Jinja template (sandboxed) and llama.cpp's built-in formats by name.

A template turns a list of messages ({"role": ..., "content": ...}) into the prompt text a model was
trained on. Three sources, in the order `ChatTemplate.for_model` tries them:

1. a name or Jinja text given by the user (`--chat-template`), or a file (`--chat-template-file`);
2. the model's own `tokenizer.chat_template`, rendered by Jinja in an `ImmutableSandboxedEnvironment`:
   a template is data from a downloaded file, so it may not reach Python internals (`__globals__`,
   `__subclasses__`, ...) or mutate its inputs; such a template is refused with a one-line error;
3. chatml, llama.cpp's fallback, with a note saying so.

The built-ins follow llama.cpp's `llama_chat_apply_template` (src/llama-chat.cpp) name for name, so
`--chat-template NAME` gives the text llama.cpp gives; "alpaca" is added for the old instruction tutorials.
`detect_builtin` is llama.cpp's content-based detection: which built-in family a Jinja template is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .errors import LlamapyError

Message = dict

# -- built-in formats ------------------------------------------------------------------------------------


def _strip(s: str) -> str:
    """Trim ASCII whitespace at both ends, as llama.cpp's trim() (isspace) does."""
    return s.strip(" \t\n\r\v\f")


def _chatml(msgs: list[Message], gen: bool) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return out + ("<|im_start|>assistant\n" if gen else "")


def _llama2(system_tags: bool, bos_inside: bool, strip: bool):
    """Llama 2 `[INST]` and its variants: <<SYS>> tags or not, <s> between turns or not, trimmed or not."""

    def render(msgs: list[Message], gen: bool) -> str:
        out = ["[INST] "]
        in_turn = True  # the first [INST] is already written; BOS comes from the tokenizer
        for m in msgs:
            content = _strip(m["content"]) if strip else m["content"]
            if not in_turn:
                out.append("<s>[INST] " if bos_inside else "[INST] ")
                in_turn = True
            if m["role"] == "system":
                out.append(f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system_tags else content + "\n")
            elif m["role"] == "user":
                out.append(content + " [/INST]")
            else:
                out.append(content + "</s>")
                in_turn = False
        return "".join(out)

    return render


def _mistral(leading: str, trailing: str, trim_assistant: bool):
    """Mistral v1 / v3 / v3-tekken: the system text goes inside the first [INST]."""

    def render(msgs: list[Message], gen: bool) -> str:
        out = []
        in_turn = False
        for m in msgs:
            if not in_turn:
                out.append(f"{leading}[INST]{trailing}")
                in_turn = True
            role, content = m["role"], m["content"]
            if role == "system":
                out.append(content + "\n\n")
            elif role == "user":
                out.append(f"{content}{leading}[/INST]")
            else:
                out.append(f"{trailing}{_strip(content) if trim_assistant else content}</s>")
                in_turn = False
        return "".join(out)

    return render


def _mistral_v7(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "system":
            out.append(f"[SYSTEM_PROMPT] {m['content']}[/SYSTEM_PROMPT]")
        elif m["role"] == "user":
            out.append(f"[INST] {m['content']}[/INST]")
        else:
            out.append(f" {m['content']}</s>")
    return "".join(out)


def _tagged(open_fmt: str, close: str, gen_text: str):
    """Formats where every message is `open_fmt.format(role=...) + content + close`."""

    def render(msgs: list[Message], gen: bool) -> str:
        out = "".join(open_fmt.format(role=m["role"]) + m["content"] + close for m in msgs)
        return out + (gen_text if gen else "")

    return render


def _monarch(msgs: list[Message], gen: bool) -> str:
    out = [("" if i == 0 else "<s>") + f"{m['role']}\n{m['content']}</s>\n" for i, m in enumerate(msgs)]
    return "".join(out) + ("<s>assistant\n" if gen else "")


def _gemma(msgs: list[Message], gen: bool) -> str:
    out = []
    system = ""
    for m in msgs:
        if m["role"] == "system":  # gemma has no system role: it is merged into the next user turn
            system = _strip(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(_strip(m["content"]) + "<end_of_turn>\n")
    return "".join(out) + ("<start_of_turn>model\n" if gen else "")


def _orion(msgs: list[Message], gen: bool) -> str:
    out = []
    system = ""
    for m in msgs:
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            out.append("Human: " + (system + "\n\n" if system else "") + m["content"] + "\n\nAssistant: </s>")
            system = ""
        else:
            out.append(m["content"] + "</s>")
    return "".join(out)


def _openchat(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        role = m["role"]
        if role == "system":
            out.append(m["content"] + "<|end_of_turn|>")
        else:
            out.append(f"GPT4 Correct {role[:1].upper()}{role[1:]}: {m['content']}<|end_of_turn|>")
    return "".join(out) + ("GPT4 Correct Assistant:" if gen else "")


def _vicuna(orca: bool):
    def render(msgs: list[Message], gen: bool) -> str:
        out = []
        for m in msgs:
            if m["role"] == "system":
                out.append(f"SYSTEM: {m['content']}\n" if orca else m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append(f"USER: {m['content']}\n")
            elif m["role"] == "assistant":
                out.append(f"ASSISTANT: {m['content']}</s>\n")
        return "".join(out) + ("ASSISTANT:" if gen else "")

    return render


def _deepseek(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "system":
            out.append(m["content"])
        elif m["role"] == "user":
            out.append(f"### Instruction:\n{m['content']}\n")
        elif m["role"] == "assistant":
            out.append(f"### Response:\n{m['content']}\n<|EOT|>\n")
    return "".join(out) + ("### Response:\n" if gen else "")


def _command_r(msgs: list[Message], gen: bool) -> str:
    tags = {"system": "<|SYSTEM_TOKEN|>", "user": "<|USER_TOKEN|>", "assistant": "<|CHATBOT_TOKEN|>"}
    out = [
        f"<|START_OF_TURN_TOKEN|>{tags[m['role']]}{_strip(m['content'])}<|END_OF_TURN_TOKEN|>"
        for m in msgs
        if m["role"] in tags
    ]
    return "".join(out) + ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" if gen else "")


def _llama3(msgs: list[Message], gen: bool) -> str:
    out = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{_strip(m['content'])}<|eot_id|>" for m in msgs
    )
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")


def _glm(head: str, sep: str):
    """chatglm3 / chatglm4 / glmedge: `<|role|>` + sep + content, an optional fixed head."""

    def render(msgs: list[Message], gen: bool) -> str:
        out = head + "".join(f"<|{m['role']}|>{sep}{m['content']}" for m in msgs)
        return out + ("<|assistant|>" if gen else "")

    return render


def _minicpm(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "user":
            out.append("<用户>" + _strip(m["content"]) + "<AI>")
        else:
            out.append(_strip(m["content"]))
    return "".join(out)


def _deepseek2(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "system":
            out.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            out.append(f"User: {m['content']}\n\n")
        elif m["role"] == "assistant":
            out.append(f"Assistant: {m['content']}<｜end▁of▁sentence｜>")
    return "".join(out) + ("Assistant:" if gen else "")


def _deepseek3(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "system":
            out.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            out.append("<｜User｜>" + m["content"])
        elif m["role"] == "assistant":
            out.append("<｜Assistant｜>" + m["content"] + "<｜end▁of▁sentence｜>")
    return "".join(out) + ("<｜Assistant｜>" if gen else "")


def _exaone3(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        c = _strip(m["content"])
        if m["role"] == "system":
            out.append(f"[|system|]{c}[|endofturn|]\n")
        elif m["role"] == "user":
            out.append(f"[|user|]{c}\n")
        elif m["role"] == "assistant":
            out.append(f"[|assistant|]{c}[|endofturn|]\n")
    return "".join(out) + ("[|assistant|]" if gen else "")


def _rwkv_world(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        if m["role"] == "user":
            out.append(f"User: {m['content']}\n\nAssistant:")
        else:
            out.append(m["content"] + "\n\n")
    return "".join(out)


def _granite(msgs: list[Message], gen: bool) -> str:
    out = []
    for m in msgs:
        out.append(f"<|start_of_role|>{m['role']}<|end_of_role|>")
        if m["role"] == "assistant_tool_call":
            out.append("<|tool_call|>")
        out.append(m["content"] + "<|end_of_text|>\n")
    return "".join(out) + ("<|start_of_role|>assistant<|end_of_role|>\n" if gen else "")


def _gigachat(msgs: list[Message], gen: bool) -> str:
    has_system = bool(msgs) and msgs[0]["role"] == "system"
    out = ["<s>" + (msgs[0]["content"] + "<|message_sep|>" if has_system else "")]
    for m in msgs[1 if has_system else 0 :]:
        if m["role"] == "user":
            out.append(
                f"user<|role_sep|>{m['content']}<|message_sep|>available functions<|role_sep|>[]<|message_sep|>"
            )
        elif m["role"] == "assistant":
            out.append(f"assistant<|role_sep|>{m['content']}<|message_sep|>")
    return "".join(out) + ("assistant<|role_sep|>" if gen else "")


def _alpaca(msgs: list[Message], gen: bool) -> str:
    """The Alpaca instruction format (not a llama.cpp built-in): system text, then Instruction/Response."""
    out = []
    for m in msgs:
        if m["role"] == "system":
            out.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            out.append(f"### Instruction:\n{m['content']}\n\n")
        else:
            out.append(f"### Response:\n{m['content']}\n\n")
    return "".join(out) + ("### Response:\n" if gen else "")


@dataclass(frozen=True)
class _Builtin:
    render: Callable[[list[Message], bool], str]
    stops: tuple[str, ...]
    describe: str


_LLAMA2_STOPS = ("</s>", "[INST]")
_BUILTINS: dict[str, _Builtin] = {
    "chatml": _Builtin(_chatml, ("<|im_end|>",), "<|im_start|>role ... <|im_end|>"),
    "llama2": _Builtin(
        _llama2(False, False, False), _LLAMA2_STOPS, "[INST] ... [/INST] (system text unwrapped)"
    ),
    "llama2-sys": _Builtin(
        _llama2(True, False, False), _LLAMA2_STOPS, "[INST] <<SYS>> ... <</SYS>> ... [/INST]"
    ),
    "llama2-sys-bos": _Builtin(
        _llama2(True, True, False), _LLAMA2_STOPS, "llama2-sys with <s> between turns"
    ),
    "llama2-sys-strip": _Builtin(
        _llama2(True, False, True), _LLAMA2_STOPS, "llama2-sys with trimmed messages"
    ),
    "mistral-v1": _Builtin(_mistral(" ", " ", False), _LLAMA2_STOPS, " [INST] ... [/INST]"),
    "mistral-v3": _Builtin(_mistral("", " ", True), _LLAMA2_STOPS, "[INST] ... [/INST]"),
    "mistral-v3-tekken": _Builtin(_mistral("", "", False), _LLAMA2_STOPS, "[INST]...[/INST]"),
    "mistral-v7": _Builtin(_mistral_v7, ("</s>", "[INST]"), "[SYSTEM_PROMPT] ... [INST] ... [/INST]"),
    "phi3": _Builtin(
        _tagged("<|{role}|>\n", "<|end|>\n", "<|assistant|>\n"), ("<|end|>",), "<|role|> ... <|end|>"
    ),
    "phi4": _Builtin(
        _tagged("<|im_start|>{role}<|im_sep|>", "<|im_end|>", "<|im_start|>assistant<|im_sep|>"),
        ("<|im_end|>",),
        "<|im_start|>role<|im_sep|> ... <|im_end|>",
    ),
    "falcon3": _Builtin(_tagged("<|{role}|>\n", "\n", "<|assistant|>\n"), ("<|user|>",), "<|role|> ..."),
    "zephyr": _Builtin(
        _tagged("<|{role}|>\n", "<|endoftext|>\n", "<|assistant|>\n"),
        ("<|endoftext|>", "</s>"),
        "<|role|> ... <|endoftext|>",
    ),
    "monarch": _Builtin(_monarch, ("</s>",), "role ... </s> <s>role ..."),
    "gemma": _Builtin(_gemma, ("<end_of_turn>",), "<start_of_turn>role ... <end_of_turn>"),
    "orion": _Builtin(_orion, ("</s>",), "Human: ... Assistant: </s>"),
    "openchat": _Builtin(_openchat, ("<|end_of_turn|>",), "GPT4 Correct User: ... <|end_of_turn|>"),
    "vicuna": _Builtin(_vicuna(False), ("</s>", "USER:"), "USER: ... ASSISTANT: ..."),
    "vicuna-orca": _Builtin(_vicuna(True), ("</s>", "USER:"), "SYSTEM: ... USER: ... ASSISTANT: ..."),
    "deepseek": _Builtin(_deepseek, ("<|EOT|>",), "### Instruction: ... ### Response: ... <|EOT|>"),
    "deepseek2": _Builtin(_deepseek2, ("<｜end▁of▁sentence｜>",), "User: ... Assistant: ..."),
    "deepseek3": _Builtin(_deepseek3, ("<｜end▁of▁sentence｜>",), "<｜User｜> ... <｜Assistant｜> ..."),
    "command-r": _Builtin(_command_r, ("<|END_OF_TURN_TOKEN|>",), "<|START_OF_TURN_TOKEN|> ..."),
    "llama3": _Builtin(_llama3, ("<|eot_id|>",), "<|start_header_id|>role<|end_header_id|> ... <|eot_id|>"),
    "chatglm3": _Builtin(_glm("[gMASK]sop", "\n "), ("<|user|>",), "[gMASK]sop<|role|> ..."),
    "chatglm4": _Builtin(_glm("[gMASK]<sop>", "\n"), ("<|user|>",), "[gMASK]<sop><|role|> ..."),
    "glmedge": _Builtin(_glm("", "\n"), ("<|user|>",), "<|role|> ..."),
    "minicpm": _Builtin(_minicpm, ("<用户>",), "<用户> ... <AI> ..."),
    "exaone3": _Builtin(_exaone3, ("[|endofturn|]",), "[|role|] ... [|endofturn|]"),
    "rwkv-world": _Builtin(_rwkv_world, ("\n\nUser:",), "User: ... Assistant: ..."),
    "granite": _Builtin(_granite, ("<|end_of_text|>",), "<|start_of_role|>role<|end_of_role|> ..."),
    "gigachat": _Builtin(_gigachat, ("<|message_sep|>",), "role<|role_sep|> ... <|message_sep|>"),
    "megrez": _Builtin(
        _tagged("<|role_start|>{role}<|role_end|>", "<|turn_end|>", "<|role_start|>assistant<|role_end|>"),
        ("<|turn_end|>",),
        "<|role_start|>role<|role_end|> ... <|turn_end|>",
    ),
    "alpaca": _Builtin(_alpaca, ("### Instruction:",), "### Instruction: ... ### Response: ..."),
}
# llama.cpp has no template named "mistral": the name is caught by its detection (it starts with "mistral"
# and carries none of the v1/v3/v7 markers), which gives the plain llama2 format. Same here, by name.
_ALIASES = {"mistral": "llama2"}

BUILTIN_TEMPLATES: tuple[str, ...] = tuple(sorted([*_BUILTINS, *_ALIASES]))
DEFAULT_TEMPLATE = "chatml"


def detect_builtin(text: str) -> str | None:
    """The built-in family of a template given by name or Jinja text, as llama.cpp detects it; None if unknown."""
    if text in _BUILTINS:
        return text
    if text in _ALIASES:
        return _ALIASES[text]

    def has(s: str) -> bool:
        return s in text

    if has("<|im_start|>"):
        return "phi4" if has("<|im_sep|>") else "chatml"
    if text.startswith("mistral") or has("[INST]"):
        if has("[SYSTEM_PROMPT]"):
            return "mistral-v7"
        if has("' [INST] ' + system_message") or has("[AVAILABLE_TOOLS]"):
            if has(" [INST]"):
                return "mistral-v1"
            if has('"[INST]"'):
                return "mistral-v3-tekken"
            return "mistral-v3"
        if has("content.strip()"):
            return "llama2-sys-strip"
        if has("bos_token + '[INST]"):
            return "llama2-sys-bos"
        return "llama2-sys" if has("<<SYS>>") else "llama2"
    if has("<|assistant|>") and has("<|end|>"):
        return "phi3"
    if has("<|assistant|>") and has("<|user|>"):
        return "falcon3" if has("</s>") else "glmedge"
    if has("<|user|>") and has("<|endoftext|>"):
        return "zephyr"
    if has("bos_token + message['role']"):
        return "monarch"
    if has("<start_of_turn>"):
        return "gemma"
    if has("'\\n\\nAssistant: ' + eos_token"):
        return "orion"
    if has("GPT4 Correct "):
        return "openchat"
    if has("USER: ") and has("ASSISTANT: "):
        return "vicuna-orca" if has("SYSTEM: ") else "vicuna"
    if has("### Instruction:") and has("<|EOT|>"):
        return "deepseek"
    if has("<|START_OF_TURN_TOKEN|>") and has("<|USER_TOKEN|>"):
        return "command-r"
    if has("<|start_header_id|>") and has("<|end_header_id|>"):
        return "llama3"
    if has("[gMASK]sop"):
        return "chatglm3"
    if has("[gMASK]<sop>"):
        return "chatglm4"
    if has("<用户>"):
        return "minicpm"
    if has("'Assistant: ' + message['content'] + eos_token"):
        return "deepseek2"
    if has("<｜Assistant｜>") and has("<｜User｜>") and has("<｜end▁of▁sentence｜>"):
        return "deepseek3"
    if has("[|system|]") and has("[|assistant|]") and has("[|endofturn|]"):
        return "exaone3"
    if has("rwkv-world"):
        return "rwkv-world"
    if has("<|start_of_role|>"):
        return "granite"
    if has(
        "message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]"
    ):
        return "gigachat"
    if has("<|role_start|>"):
        return "megrez"
    if has("### Instruction:") and has("### Response:"):
        return "alpaca"
    return None


# -- Jinja -----------------------------------------------------------------------------------------------


def _jinja_env():
    """A sandboxed environment with what Hugging Face chat templates expect (trim/lstrip blocks, tojson...)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def raise_exception(message):
        raise _TemplateRaised(str(message))

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class _TemplateRaised(Exception):
    """raise_exception() called by a template: a message the template's author wrote for the user."""


def normalize_messages(messages: list[Message]) -> list[Message]:
    """Plain {"role", "content": str} messages: None becomes "", a list of OpenAI content parts becomes its
    text parts joined by newlines (llama.cpp does the same); other keys are kept for Jinja templates."""
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise LlamapyError(f"chat message {m!r} has no 'role'")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            content = "\n".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
            )
        elif not isinstance(content, str):
            raise LlamapyError(
                f"chat message content must be a string or a list of parts, got {type(content).__name__}"
            )
        out.append({**m, "role": str(m["role"]), "content": content})
    return out


# -- the template object -------------------------------------------------------------------------------------


@dataclass
class ChatTemplate:
    """A chat template: render(messages) -> prompt text. Build it with from_name, from_source or for_model."""

    name: str  # a built-in's name, or where the Jinja text came from ("gguf", a file name, "jinja")
    family: str | None  # the built-in family (llama.cpp's detection); None for an unknown Jinja template
    source: str | None = None  # the Jinja text, for Jinja templates
    bos_token: str = ""
    eos_token: str = ""
    note: str | None = None  # what the user should be told about how this template was chosen
    _compiled: object = field(default=None, repr=False)
    _system_ok: bool | None = field(default=None, repr=False)

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> ChatTemplate:
        """A built-in template by llama.cpp's name (see BUILTIN_TEMPLATES)."""
        if name not in _BUILTINS and name not in _ALIASES:
            raise LlamapyError(
                f"unknown chat template '{name}': built-ins are {', '.join(BUILTIN_TEMPLATES)}"
            )
        return cls(name=name, family=_ALIASES.get(name, name))

    @classmethod
    def from_source(
        cls, jinja_text: str, bos_token: str = "", eos_token: str = "", name: str = "jinja"
    ) -> ChatTemplate:
        """A Jinja template, compiled in the sandbox; a syntax error is a LlamapyError naming `name`."""
        from jinja2 import TemplateError

        try:
            compiled = _jinja_env().from_string(jinja_text)
        except TemplateError as e:
            raise LlamapyError(f"chat template ({name}) does not parse: {e}") from None
        return cls(
            name=name,
            family=detect_builtin(jinja_text),
            source=jinja_text,
            bos_token=bos_token,
            eos_token=eos_token,
            _compiled=compiled,
        )

    @classmethod
    def from_file(cls, path: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """A Jinja template read from a file (`--chat-template-file`); a built-in's name in it is accepted too."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise LlamapyError(f"{path}: can't read chat template: {e.strerror}") from None
        except UnicodeDecodeError:
            raise LlamapyError(f"{path}: chat template is not UTF-8 text") from None
        if _strip(text) in _BUILTINS or _strip(text) in _ALIASES:
            return cls.from_name(_strip(text))
        return cls.from_source(text, bos_token=bos_token, eos_token=eos_token, name=path)

    @classmethod
    def for_model(cls, metadata: dict, name: str | None = None, file: str | None = None) -> ChatTemplate:
        """The template to use for a model: `name` (a built-in, or Jinja text) or `file` if given, else the
        GGUF's tokenizer.chat_template, else chatml with a note saying so."""
        bos, eos = _special_texts(metadata)
        if file:
            return cls.from_file(file, bos_token=bos, eos_token=eos)
        if name:
            if name in _BUILTINS or name in _ALIASES:
                return cls.from_name(name)
            if "{{" in name or "{%" in name:
                return cls.from_source(name, bos_token=bos, eos_token=eos, name="--chat-template")
            raise LlamapyError(
                f"unknown chat template '{name}': give a built-in ({', '.join(BUILTIN_TEMPLATES)}), "
                "Jinja text, or --chat-template-file"
            )
        src = metadata.get("tokenizer.chat_template")
        if isinstance(src, str) and src.strip():
            if src.strip() in _BUILTINS or src.strip() in _ALIASES:
                return cls.from_name(src.strip())
            return cls.from_source(src, bos_token=bos, eos_token=eos, name="gguf")
        tpl = cls.from_name(DEFAULT_TEMPLATE)
        tpl.note = f"the model has no chat template (tokenizer.chat_template); using the built-in '{DEFAULT_TEMPLATE}'"
        return tpl

    # -- use ---------------------------------------------------------------------------------------------------
    @property
    def is_jinja(self) -> bool:
        return self._compiled is not None

    @property
    def from_model(self) -> bool:
        """True when the template is the model's own (not a fallback chosen for it)."""
        return self.name == "gguf"

    @property
    def stop_strings(self) -> list[str]:
        """Text that ends an assistant turn in this format (besides the model's end-of-generation tokens)."""
        if self.family is not None:
            return list(_BUILTINS[self.family].stops)
        return [self.eos_token] if self.eos_token else []

    @property
    def supports_system_role(self) -> bool:
        """Whether a system message shows up in the output (Jinja templates are probed once, as llama.cpp does)."""
        if not self.is_jinja:
            return True
        if self._system_ok is None:
            needle = "<System Needle>"
            try:
                out = self._render_jinja(
                    [{"role": "system", "content": needle}, {"role": "user", "content": "u"}], False
                )
            except LlamapyError:
                out = ""
            self._system_ok = needle in out
        return self._system_ok

    def render(self, messages: list[Message], add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text for `messages`; with add_generation_prompt, ending where the assistant's reply starts.

        Jinja templates get llama.cpp's adjustments: system messages are merged into the next user message
        when the template has no system role, and a leading bos_token / trailing eos_token the template
        wrote is removed (the tokenizer adds BOS itself). `extra` (tools, ...) is passed to Jinja templates only."""
        msgs = normalize_messages(messages)
        if not self.is_jinja:
            return _BUILTINS[self.family].render(msgs, add_generation_prompt)
        if not self.supports_system_role:
            msgs = _merge_system(msgs)
        out = self._render_jinja(msgs, add_generation_prompt, **extra)
        # only text the template wrote as bos_token/eos_token: SmolLM2's BOS text is "<|im_start|>" itself
        if self.bos_token and "bos_token" in self.source and out.startswith(self.bos_token):
            out = out[len(self.bos_token) :]
        if self.eos_token and "eos_token" in self.source and out.endswith(self.eos_token):
            out = out[: -len(self.eos_token)]
        return out

    def _render_jinja(self, msgs: list[Message], add_generation_prompt: bool, **extra) -> str:
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        try:
            return self._compiled.render(
                messages=msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except SecurityError as e:
            raise LlamapyError(
                f"chat template ({self.name}) refused: it tried something unsafe ({e})"
            ) from None
        except _TemplateRaised as e:
            raise LlamapyError(f"chat template ({self.name}) rejected the messages: {e}") from None
        except TemplateError as e:
            raise LlamapyError(f"chat template ({self.name}) failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
            raise LlamapyError(f"chat template ({self.name}) failed: {type(e).__name__}: {e}") from None

    def format_single(self, past: list[Message], new: Message, add_generation_prompt: bool = True) -> str:
        """The text `new` adds after `past` (llama.cpp's common_chat_format_single): render both, take the
        difference, keeping a newline that ends the past when a generation prompt follows."""
        before = self.render(past, add_generation_prompt=False) if past else ""
        after = self.render([*past, new], add_generation_prompt=add_generation_prompt)
        keep_nl = "\n" if add_generation_prompt and before.endswith("\n") else ""
        return keep_nl + after[len(before) :]

    def history_is_stable(self) -> bool:
        """Whether each turn's text extends the text of the turns before it (what a chat that appends to its
        KV cache turn by turn needs); checked on a sample conversation. Built-ins always are."""
        if not self.is_jinja:
            return True
        convo = [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"},
        ]
        try:
            for n in range(1, len(convo)):
                before = self.render(convo[:n], add_generation_prompt=False)
                if not self.render(
                    convo[: n + 1], add_generation_prompt=convo[n]["role"] == "user"
                ).startswith(before):
                    return False
        except LlamapyError:
            return False
        return True

    def example(self) -> str:
        """A short conversation rendered with this template (what llama.cpp prints at startup)."""
        return self.render(
            [
                {"role": "system", "content": "You are a helpful assistant"},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there"},
                {"role": "user", "content": "How are you?"},
            ],
            add_generation_prompt=True,
        )

    def describe(self) -> str:
        """One line for the user: which template this is."""
        if self.is_jinja:
            fam = f", {self.family} format" if self.family else ""
            return f"Jinja template from {self.name}{fam}"
        alias = f" (= {self.family})" if self.family != self.name else ""
        return f"built-in '{self.name}'{alias}: {_BUILTINS[self.family].describe}"


def _merge_system(msgs: list[Message]) -> list[Message]:
    """System messages folded into the next user message ("\n"-joined); one with no user after it becomes
    a user message (llama.cpp's polyfill for templates without a system role)."""
    out: list[Message] = []
    pending = ""
    for m in msgs:
        if m["role"] == "system":
            pending = pending + "\n" + m["content"] if pending else m["content"]
            continue
        if pending:
            if m["role"] == "user":
                m = {**m, "content": pending + ("\n" + m["content"] if m["content"] else "")}
            else:
                out.append({"role": "user", "content": pending})
            pending = ""
        out.append(m)
    if pending:
        out.append({"role": "user", "content": pending})
    return out


def _special_texts(metadata: dict) -> tuple[str, str]:
    """The BOS and EOS tokens' text from GGUF metadata ("" when absent), for Jinja's bos_token/eos_token."""
    tokens = metadata.get("tokenizer.ggml.tokens")

    def text(key: str) -> str:
        i = metadata.get(key)
        if tokens is None or not isinstance(i, int) or not 0 <= i < len(tokens):
            return ""
        return str(tokens[i])

    return text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id")
