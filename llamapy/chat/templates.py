"""Chat templates: the GGUF's Jinja template (sandboxed) and llama.cpp's built-in formats by name.

A template turns a list of messages ({"role": ..., "content": ...}) into the prompt text a model was
trained on. Three sources, in the order `ChatTemplate.for_model` tries them:

1. a name or Jinja text given by the user (`--chat-template`), or a file (`--chat-template-file`);
2. the model's own `tokenizer.chat_template`, rendered by Jinja in an `ImmutableSandboxedEnvironment`:
   a template is data from a downloaded file, so it may not reach Python internals (`__globals__`,
   `__subclasses__`, ...) or mutate its inputs; such a template is refused with a one-line error.
   Each render is also bounded in time, steps and size (chat/sandbox.py: 1 s by default, or
   LLAMAPY_TEMPLATE_TIMEOUT seconds); a template past its budget is refused with one line, when the
   model loads if a sample conversation already goes past it;
3. chatml, llama.cpp's fallback, with a note saying so.

The built-ins follow llama.cpp's `llama_chat_apply_template` (src/llama-chat.cpp) name for name, so
`--chat-template NAME` gives the text llama.cpp gives; "alpaca" is added for the old instruction tutorials.
`detect_builtin` is llama.cpp's content-based detection: which built-in family a Jinja template is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import LlamapyError
from .builtins import ALIASES, BUILTIN_TEMPLATES, BUILTINS, DEFAULT_TEMPLATE, detect_builtin, strip_ascii
from .sandbox import TemplateBudgetError, TemplateLimits

Message = dict
__all__ = ["BUILTIN_TEMPLATES", "DEFAULT_TEMPLATE", "ChatTemplate", "detect_builtin", "normalize_messages"]

# -- Jinja -----------------------------------------------------------------------------------------------


def default_limits() -> TemplateLimits:
    """The render budget: 1 s, or LLAMAPY_TEMPLATE_TIMEOUT seconds."""
    try:
        seconds = float(os.environ.get("LLAMAPY_TEMPLATE_TIMEOUT", "1"))
    except ValueError:
        raise LlamapyError("LLAMAPY_TEMPLATE_TIMEOUT must be a number of seconds") from None
    return TemplateLimits(seconds=seconds if seconds > 0 else 1.0)


class TemplateTooCostly(LlamapyError):
    """A chat template that went over its render budget (time, steps, size or recursion)."""


def _jinja_env():
    """A sandboxed, budgeted environment with what Hugging Face chat templates expect (trim/lstrip blocks,
    tojson...)."""
    from jinja2.ext import loopcontrols

    from .sandbox import BoundedEnvironment

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

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
    limits: TemplateLimits = field(default_factory=default_limits)  # a Jinja render's budget
    _compiled: object = field(default=None, repr=False)
    _system_ok: bool | None = field(default=None, repr=False)

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> ChatTemplate:
        """A built-in template by llama.cpp's name (see BUILTIN_TEMPLATES)."""
        if name not in BUILTINS and name not in ALIASES:
            raise LlamapyError(
                f"unknown chat template '{name}': built-ins are {', '.join(BUILTIN_TEMPLATES)}"
            )
        return cls(name=name, family=ALIASES.get(name, name))

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
        except (TemplateBudgetError, RecursionError, OverflowError, MemoryError) as e:
            raise TemplateTooCostly(f"chat template ({name}) refused: {_costly(e)}") from None
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
        if strip_ascii(text) in BUILTINS or strip_ascii(text) in ALIASES:
            return cls.from_name(strip_ascii(text))
        return cls.from_source(text, bos_token=bos_token, eos_token=eos_token, name=path)

    @classmethod
    def for_model(cls, metadata: dict, name: str | None = None, file: str | None = None) -> ChatTemplate:
        """The template to use for a model: `name` (a built-in, or Jinja text) or `file` if given, else the
        GGUF's tokenizer.chat_template, else chatml with a note saying so."""
        bos, eos = _special_texts(metadata)
        if file:
            return cls.from_file(file, bos_token=bos, eos_token=eos).probed()
        if name:
            if name in BUILTINS or name in ALIASES:
                return cls.from_name(name)
            if "{{" in name or "{%" in name:
                return cls.from_source(name, bos_token=bos, eos_token=eos, name="--chat-template").probed()
            raise LlamapyError(
                f"unknown chat template '{name}': give a built-in ({', '.join(BUILTIN_TEMPLATES)}), "
                "Jinja text, or --chat-template-file"
            )
        src = metadata.get("tokenizer.chat_template")
        if isinstance(src, str) and src.strip():
            if src.strip() in BUILTINS or src.strip() in ALIASES:
                return cls.from_name(src.strip())
            return cls.from_source(src, bos_token=bos, eos_token=eos, name="gguf").probed()
        tpl = cls.from_name(DEFAULT_TEMPLATE)
        tpl.note = f"the model has no chat template (tokenizer.chat_template); using the built-in '{DEFAULT_TEMPLATE}'"
        return tpl

    def probed(self) -> ChatTemplate:
        """This template, after rendering a sample conversation: one that goes over its budget already
        there is refused now (TemplateTooCostly), when the model loads, rather than on each request.
        Other failures (a template that rejects a system message, ...) are left for the request."""
        if self.is_jinja:
            try:
                self.example()
                _ = self.supports_system_role
            except TemplateTooCostly:
                raise
            except LlamapyError:
                pass
        return self

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
            return list(BUILTINS[self.family].stops)
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
            except TemplateTooCostly:
                raise
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
            return BUILTINS[self.family].render(msgs, add_generation_prompt)
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

        from .sandbox import render_bounded

        # a long conversation gets more time: 1 budget per million characters of input (its cost, bounded)
        size = sum(len(m["content"]) + 64 for m in msgs)
        limits = self.limits
        if size > 1_000_000:
            limits = dataclasses.replace(limits, seconds=limits.seconds * size / 1_000_000)
        try:
            return render_bounded(
                self._compiled,
                limits,
                messages=msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except (TemplateBudgetError, RecursionError, OverflowError, MemoryError) as e:
            raise TemplateTooCostly(f"chat template ({self.name}) refused: {_costly(e)}") from None
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
        return f"built-in '{self.name}'{alias}: {BUILTINS[self.family].describe}"


def _costly(e: BaseException) -> str:
    """Why a render went over its budget, in a few words."""
    if isinstance(e, RecursionError):
        return "it recurses too deeply"
    if isinstance(e, MemoryError):
        return "it needs more memory than there is"
    if isinstance(e, OverflowError):
        return f"a value is too large ({str(e).split('. ')[0]})"
    return str(e)


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
