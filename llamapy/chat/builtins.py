"""llama.cpp's built-in chat formats (src/llama-chat.cpp), name for name, and its detection of which
format a Jinja template is. Used through `llamapy.chat.templates.ChatTemplate`.

Each renderer takes plain messages ({"role", "content": str}) and whether to end with the assistant's
generation prompt; "alpaca" is llamapy's addition for the old instruction tutorials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Message = dict


def strip_ascii(s: str) -> str:
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
            content = strip_ascii(m["content"]) if strip else m["content"]
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
                out.append(f"{trailing}{strip_ascii(content) if trim_assistant else content}</s>")
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
            system = strip_ascii(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(strip_ascii(m["content"]) + "<end_of_turn>\n")
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


def _by_role(system: str, user: str, assistant: str, gen_text: str, strip: bool = False):
    """Formats where each system, user and assistant message is its role's pattern with the content at {}
    (trimmed with strip); messages of other roles are left out."""
    patterns = {"system": system, "user": user, "assistant": assistant}

    def render(msgs: list[Message], gen: bool) -> str:
        out = [patterns[m["role"]].format(strip_ascii(m["content"]) if strip else m["content"])
               for m in msgs if m["role"] in patterns]
        return "".join(out) + (gen_text if gen else "")

    return render


def _vicuna(orca: bool):
    return _by_role("SYSTEM: {}\n" if orca else "{}\n\n", "USER: {}\n", "ASSISTANT: {}</s>\n", "ASSISTANT:")


_deepseek = _by_role("{}", "### Instruction:\n{}\n", "### Response:\n{}\n<|EOT|>\n", "### Response:\n")


def _command_r(msgs: list[Message], gen: bool) -> str:
    tags = {"system": "<|SYSTEM_TOKEN|>", "user": "<|USER_TOKEN|>", "assistant": "<|CHATBOT_TOKEN|>"}
    out = [
        f"<|START_OF_TURN_TOKEN|>{tags[m['role']]}{strip_ascii(m['content'])}<|END_OF_TURN_TOKEN|>"
        for m in msgs
        if m["role"] in tags
    ]
    return "".join(out) + ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" if gen else "")


def _llama3(msgs: list[Message], gen: bool) -> str:
    out = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{strip_ascii(m['content'])}<|eot_id|>"
        for m in msgs
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
            out.append("<用户>" + strip_ascii(m["content"]) + "<AI>")
        else:
            out.append(strip_ascii(m["content"]))
    return "".join(out)


_deepseek2 = _by_role("{}\n\n", "User: {}\n\n", "Assistant: {}<｜end▁of▁sentence｜>", "Assistant:")
_deepseek3 = _by_role("{}\n\n", "<｜User｜>{}", "<｜Assistant｜>{}<｜end▁of▁sentence｜>", "<｜Assistant｜>")
_exaone3 = _by_role("[|system|]{}[|endofturn|]\n", "[|user|]{}\n", "[|assistant|]{}[|endofturn|]\n", "[|assistant|]",
                    strip=True)


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
class Builtin:
    render: Callable[[list[Message], bool], str]
    stops: tuple[str, ...]
    describe: str


_LLAMA2_STOPS = ("</s>", "[INST]")
BUILTINS: dict[str, Builtin] = {
    "chatml": Builtin(_chatml, ("<|im_end|>",), "<|im_start|>role ... <|im_end|>"),
    "llama2": Builtin(
        _llama2(False, False, False), _LLAMA2_STOPS, "[INST] ... [/INST] (system text unwrapped)"
    ),
    "llama2-sys": Builtin(
        _llama2(True, False, False), _LLAMA2_STOPS, "[INST] <<SYS>> ... <</SYS>> ... [/INST]"
    ),
    "llama2-sys-bos": Builtin(_llama2(True, True, False), _LLAMA2_STOPS, "llama2-sys with <s> between turns"),
    "llama2-sys-strip": Builtin(
        _llama2(True, False, True), _LLAMA2_STOPS, "llama2-sys with trimmed messages"
    ),
    "mistral-v1": Builtin(_mistral(" ", " ", False), _LLAMA2_STOPS, " [INST] ... [/INST]"),
    "mistral-v3": Builtin(_mistral("", " ", True), _LLAMA2_STOPS, "[INST] ... [/INST]"),
    "mistral-v3-tekken": Builtin(_mistral("", "", False), _LLAMA2_STOPS, "[INST]...[/INST]"),
    "mistral-v7": Builtin(_mistral_v7, ("</s>", "[INST]"), "[SYSTEM_PROMPT] ... [INST] ... [/INST]"),
    "phi3": Builtin(
        _tagged("<|{role}|>\n", "<|end|>\n", "<|assistant|>\n"), ("<|end|>",), "<|role|> ... <|end|>"
    ),
    "phi4": Builtin(
        _tagged("<|im_start|>{role}<|im_sep|>", "<|im_end|>", "<|im_start|>assistant<|im_sep|>"),
        ("<|im_end|>",),
        "<|im_start|>role<|im_sep|> ... <|im_end|>",
    ),
    "falcon3": Builtin(_tagged("<|{role}|>\n", "\n", "<|assistant|>\n"), ("<|user|>",), "<|role|> ..."),
    "zephyr": Builtin(
        _tagged("<|{role}|>\n", "<|endoftext|>\n", "<|assistant|>\n"),
        ("<|endoftext|>", "</s>"),
        "<|role|> ... <|endoftext|>",
    ),
    "monarch": Builtin(_monarch, ("</s>",), "role ... </s> <s>role ..."),
    "gemma": Builtin(_gemma, ("<end_of_turn>",), "<start_of_turn>role ... <end_of_turn>"),
    "orion": Builtin(_orion, ("</s>",), "Human: ... Assistant: </s>"),
    "openchat": Builtin(_openchat, ("<|end_of_turn|>",), "GPT4 Correct User: ... <|end_of_turn|>"),
    "vicuna": Builtin(_vicuna(False), ("</s>", "USER:"), "USER: ... ASSISTANT: ..."),
    "vicuna-orca": Builtin(_vicuna(True), ("</s>", "USER:"), "SYSTEM: ... USER: ... ASSISTANT: ..."),
    "deepseek": Builtin(_deepseek, ("<|EOT|>",), "### Instruction: ... ### Response: ... <|EOT|>"),
    "deepseek2": Builtin(_deepseek2, ("<｜end▁of▁sentence｜>",), "User: ... Assistant: ..."),
    "deepseek3": Builtin(_deepseek3, ("<｜end▁of▁sentence｜>",), "<｜User｜> ... <｜Assistant｜> ..."),
    "command-r": Builtin(_command_r, ("<|END_OF_TURN_TOKEN|>",), "<|START_OF_TURN_TOKEN|> ..."),
    "llama3": Builtin(_llama3, ("<|eot_id|>",), "<|start_header_id|>role<|end_header_id|> ... <|eot_id|>"),
    "chatglm3": Builtin(_glm("[gMASK]sop", "\n "), ("<|user|>",), "[gMASK]sop<|role|> ..."),
    "chatglm4": Builtin(_glm("[gMASK]<sop>", "\n"), ("<|user|>",), "[gMASK]<sop><|role|> ..."),
    "glmedge": Builtin(_glm("", "\n"), ("<|user|>",), "<|role|> ..."),
    "minicpm": Builtin(_minicpm, ("<用户>",), "<用户> ... <AI> ..."),
    "exaone3": Builtin(_exaone3, ("[|endofturn|]",), "[|role|] ... [|endofturn|]"),
    "rwkv-world": Builtin(_rwkv_world, ("\n\nUser:",), "User: ... Assistant: ..."),
    "granite": Builtin(_granite, ("<|end_of_text|>",), "<|start_of_role|>role<|end_of_role|> ..."),
    "gigachat": Builtin(_gigachat, ("<|message_sep|>",), "role<|role_sep|> ... <|message_sep|>"),
    "megrez": Builtin(
        _tagged("<|role_start|>{role}<|role_end|>", "<|turn_end|>", "<|role_start|>assistant<|role_end|>"),
        ("<|turn_end|>",),
        "<|role_start|>role<|role_end|> ... <|turn_end|>",
    ),
    "alpaca": Builtin(_alpaca, ("### Instruction:",), "### Instruction: ... ### Response: ..."),
}
# llama.cpp has no template named "mistral": the name is caught by its detection (it starts with "mistral"
# and carries none of the v1/v3/v7 markers), which gives the plain llama2 format. Same here, by name.
ALIASES = {"mistral": "llama2"}

BUILTIN_TEMPLATES: tuple[str, ...] = tuple(sorted([*BUILTINS, *ALIASES]))
DEFAULT_TEMPLATE = "chatml"


def detect_builtin(text: str) -> str | None:
    """The built-in family of a template given by name or Jinja text, as llama.cpp detects it; None if unknown."""
    if text in BUILTINS:
        return text
    if text in ALIASES:
        return ALIASES[text]

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
