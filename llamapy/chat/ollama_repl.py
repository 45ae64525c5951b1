"""`llamapy run NAME [PROMPT]` for a stored model, as `ollama run`: one answer to a prompt (or to piped
stdin), else a chat at a `>>> ` prompt.

The model's Modelfile applies: its TEMPLATE builds the prompt (store.prompt, Ollama's rules: the
Modelfile's MESSAGEs first, its SYSTEM unless the chat sets one, the oldest messages dropped when the
prompt outgrows num_ctx), and its PARAMETERs set the sampler, the context (num_ctx), the token budget
(num_predict), the positions a context shift keeps (num_keep) and the stop strings. Generation goes
through the generation core (generation.sequence.Sequence driven by generation.generate.steps), which
reuses the cached prefix of the last prompt, so each chat turn only evaluates what is new.

In the chat: `\"\"\"` starts and ends a message of several lines; `/set parameter NAME VALUE...`,
`/set system TEXT` (or `\"\"\"` lines), `/show info|license|modelfile|parameters|system|template`,
`/clear`, `/bye` (or end of input), `/?` for help.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from ..errors import LlamapyError
from ..generation.params import SamplerParams
from ..store.gotemplate import Template
from ..store.modelfile import PARAMETER_TYPES, parse_parameter
from ..store.models import ModelSettings, render_modelfile, render_parameters
from ..store.prompt import chat_messages, chat_prompt, execute, generate_messages, parse_template
from ..store.text import one_line, printable

DEFAULT_TEMPLATE = "{{ .Prompt }}"  # Ollama's, for a model without a TEMPLATE
# Ollama's api.DefaultOptions (num_ctx: its default without a GPU's memory to size it by)
DEFAULTS: dict[str, object] = {"num_ctx": 4096, "num_batch": 512, "num_predict": -1, "num_keep": 4,
                               "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                               "repeat_last_n": 64, "repeat_penalty": 1.0, "presence_penalty": 0.0,
                               "frequency_penalty": 0.0, "seed": -1}
# Ollama's option names that are SamplerParams fields under another name (the rest share the name)
_SAMPLER_NAMES = {"temperature": "temp"}
_SAMPLER_FIELDS = set(SamplerParams.__dataclass_fields__)

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""
USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
"""
USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
"""


@dataclass
class RunOptions:
    """Ollama's options as the generation core takes them."""
    sampling: SamplerParams
    n_ctx: int
    n_batch: int
    n_predict: int
    n_keep: int
    stop: list[str] = field(default_factory=list)
    threads: int | None = None


def run_options(parameters: dict) -> RunOptions:
    """The options of a run from Ollama's defaults overlaid by `parameters` (the Modelfile's PARAMETERs,
    then the session's): sampler fields, num_ctx, num_batch, num_predict, num_keep, stop, num_thread.
    Options with no effect here (num_gpu, use_mmap, ...) are accepted and ignored."""
    p = {**DEFAULTS, **parameters}
    sp = SamplerParams()
    for k, v in p.items():
        name = _SAMPLER_NAMES.get(k, k)
        if name in _SAMPLER_FIELDS and k in PARAMETER_TYPES:
            setattr(sp, name, v)
    sp.check()
    n_ctx, n_predict = int(p["num_ctx"]), int(p["num_predict"])
    if n_ctx < 1:
        raise LlamapyError(f"num_ctx {n_ctx}: the context needs at least one token")
    if n_predict < -2:
        raise LlamapyError(f"num_predict {n_predict}: use -1 (no limit), -2 (until the context is full) or a count")
    stop = p.get("stop") or []
    return RunOptions(sp, n_ctx, max(int(p["num_batch"]), 1), n_predict, max(int(p["num_keep"]), 0),
                      [stop] if isinstance(stop, str) else list(stop), p.get("num_thread") or None)


class OllamaChat:
    """A stored model's chat: the Modelfile's settings, the session's messages and parameters, one engine."""

    def __init__(self, settings: ModelSettings, *, out: TextIO | None = None, engine_factory: Callable | None = None):
        self.settings = settings
        self.out = out or sys.stdout
        self.template: Template = parse_template(settings.template if settings.template else DEFAULT_TEMPLATE)
        self.system: str | None = None         # set by /set system (the Modelfile's SYSTEM otherwise)
        self.parameters: dict[str, object] = {}  # set by /set parameter
        self.messages: list[dict] = []
        self.options = run_options(dict(settings.parameters))
        self._engine_factory = engine_factory
        self.llm = None
        self._llm_ctx = 0
        self.last_prompt = ""                   # the prompt text of the last generation
        self.stop_reason = ""
        self.stop_word = ""                     # the stop string that ended the last answer, if one did

    # -- settings -----------------------------------------------------------------------------------------------
    def set_parameter(self, name: str, values: list[str]) -> None:
        """`/set parameter NAME VALUE...`: several values only for stop; LlamapyError if it is bad."""
        key = name.lower()
        if not values:
            raise LlamapyError(f"parameter {one_line(name)} needs a value")
        if key != "stop" and len(values) > 1:
            raise LlamapyError(f"parameter {one_line(name)} takes one value")
        value = [parse_parameter(key, v) for v in values] if key == "stop" else parse_parameter(key, values[0])
        params = {**self.settings.parameters, **self.parameters, key: value}
        self.options = run_options(params)
        self.parameters[key] = value

    def set_system(self, text: str) -> None:
        """`/set system`: the session's system message, replacing one just set (as Ollama's REPL)."""
        self.system = text
        msg = {"role": "system", "content": text}
        if self.messages and self.messages[-1]["role"] == "system":
            self.messages[-1] = msg
        else:
            self.messages.append(msg)

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    # -- the engine ---------------------------------------------------------------------------------------------
    def engine(self):
        o = self.options
        if self.llm is not None and self._llm_ctx != o.n_ctx:  # /set parameter num_ctx: a new context
            self.llm.close()
            self.llm = None
        if self.llm is None:
            self._llm_ctx = o.n_ctx
            if self._engine_factory is not None:
                self.llm = self._engine_factory(self.settings.model_path, o)
            else:
                from ..engine.engine import Engine
                from ..engine.load import LoadOptions

                load = LoadOptions(lora=[(a, 1.0) for a in self.settings.adapters])  # the Modelfile's ADAPTERs
                self.llm = Engine(self.settings.model_path, n_ctx=o.n_ctx, n_threads=o.threads,
                                  n_batch=min(o.n_batch, 512), load=load)
        return self.llm

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def count_tokens(self, text: str) -> int:
        return len(self.engine().tokenizer.encode(text, add_special=True, parse_special=True))

    # -- prompts ------------------------------------------------------------------------------------------------
    def chat_prompt_text(self) -> str:
        """The prompt of the chat so far (Ollama's /api/chat over the session's messages)."""
        msgs = chat_messages(self.messages, model_system=self.settings.system, model_messages=self.settings.messages)
        return chat_prompt(self.template, msgs, num_ctx=self.options.n_ctx, count_tokens=self.count_tokens)

    def generate_prompt_text(self, prompt: str) -> str:
        """The prompt of one answer (Ollama's /api/generate: the Modelfile's SYSTEM and MESSAGEs, then `prompt`)."""
        return execute(self.template, generate_messages(prompt, model_system=self.settings.system,
                                                        model_messages=self.settings.messages))

    # -- generation ---------------------------------------------------------------------------------------------
    def complete(self, text: str) -> str:
        """Generate from prompt text, streaming the answer to `out`; returns the answer (stop strings cut)."""
        from ..generation.generate import eog_ids_of, steps
        from ..generation.sampling import Sampler
        from ..generation.sequence import Sequence

        llm = self.engine()
        o = self.options
        tok = llm.tokenizer
        ids = tok.encode(text, add_special=True, parse_special=True)
        if not ids:
            raise LlamapyError("the prompt is empty")
        if len(ids) >= llm.n_ctx:
            raise LlamapyError(f"the prompt is too long ({len(ids)} tokens, num_ctx {llm.n_ctx})")
        self.last_prompt = text
        eog = frozenset(eog_ids_of(llm))
        seq = Sequence(Sampler(o.sampling, llm.n_vocab, eog_ids=eog), llm.n_ctx, is_eog=eog.__contains__,
                       piece=lambda t: tok.token_to_piece(t, False), n_predict=o.n_predict,
                       n_keep=min(o.n_keep + (1 if tok.add_bos else 0), len(ids)), stop=o.stop,
                       ignore_eos=o.sampling.ignore_eos)
        try:
            for step in steps(llm, seq, ids):
                if step.text:
                    self.out.write(printable(step.text))
                    self.out.flush()
        finally:
            tail = seq.flush()
            if tail:
                self.out.write(printable(tail))
            self.out.flush()
        self.stop_reason = seq.timings.stop_reason
        self.stop_word = seq.text.stopped_word if seq.text is not None else ""
        return seq.content

    def answer(self, prompt: str) -> str:
        """One answer to `prompt`, as `ollama run NAME PROMPT`."""
        return self.complete(self.generate_prompt_text(prompt))

    def ask(self, content: str) -> str:
        """A chat turn: the user's message, the model's answer (kept in the chat)."""
        self.messages.append({"role": "user", "content": content})
        try:
            reply = self.complete(self.chat_prompt_text())
        except BaseException:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    # -- /show ----------------------------------------------------------------------------------------------
    def show(self, what: str) -> str:
        s = self.settings
        if what == "info":
            lines = [f"  Model: {s.name}", f"  File: {s.model_path}"]
            if self.llm is not None:
                lines += [f"  Architecture: {self.llm.desc}", f"  Parameters: {self.llm.n_params / 1e6:.2f} M",
                          f"  Context length: {self.llm.n_ctx}"]
            return printable("\n".join(lines) + "\n")
        if what == "license":
            return printable("\n".join(s.licenses)) if s.licenses else "No license was specified for this model."
        if what == "modelfile":
            return printable(render_modelfile(s))
        if what == "parameters":
            out = ["Model defined parameters:"]
            shown = render_parameters(s.parameters)
            out += [f"  {line}" for line in shown.splitlines()] or [
                "  No additional parameters were specified for this model."]
            out.append("")
            if self.parameters:
                out.append("User defined parameters:")
                out += [f"  {line}" for line in render_parameters(self.parameters).splitlines()]
                out.append("")
            return printable("\n".join(out))
        if what == "system":
            text = self.system or s.system
            return printable(text + "\n") if text else "No system message was specified for this model."
        if what == "template":
            return printable(s.template) if s.template else "No prompt template was specified for this model."
        return f"Unknown command '/show {printable(what)}'. Type /? for help"


def repl(chat: OllamaChat, inp: TextIO, out: TextIO, err: TextIO, *, tty: bool = False) -> None:
    """The `>>> ` loop over the lines of `inp` until /bye or the end of input. On a terminal the lines are
    read with line editing and history (Python's input()), the prompt `>>> ` (`... ` inside a triple-quoted message),
    and Ctrl-C drops the line being typed or stops the answer being written."""
    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    buf: list[str] = []
    multiline = ""  # "", "prompt" or "system"
    if tty:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - input() gets line editing and history

    def read() -> str | None:
        if tty:
            try:
                return input("... " if multiline else ">>> ")
            except EOFError:
                return None
        line = inp.readline()
        return line.rstrip("\n").rstrip("\r") if line else None

    while True:
        try:
            line = read()
        except KeyboardInterrupt:
            if not buf:
                say("\nUse Ctrl + d or /bye to exit.")
            buf, multiline = [], ""
            continue
        if line is None:
            break
        send = False
        if multiline:
            before, ended = (line[:-3], True) if line.endswith('"""') else (line, False)
            buf.append(before)
            if not ended:
                continue
            if multiline == "system":
                chat.set_system("\n".join(buf))
                say("Set system message.")
                buf = []
            multiline = ""
            send = bool(buf)
        elif line.startswith('"""'):
            rest = line[3:]
            if rest.endswith('"""') and len(rest) >= 3:
                buf.append(rest[:-3])
                send = True
            else:
                buf.append(rest)
                multiline = "prompt"
                continue
        elif line.startswith(("/exit", "/bye")):
            return
        elif line.startswith("/clear"):
            chat.clear()
            say("Cleared session context")
        elif line.startswith("/set"):
            args = line.split()
            if len(args) < 2:
                err.write(USAGE_SET + "\n")
            elif args[1] == "parameter":
                if len(args) < 4:
                    err.write(USAGE_PARAMETERS + "\n")
                else:
                    try:
                        chat.set_parameter(args[2], args[3:])
                        say(f"Set parameter '{printable(args[2])}' to '{printable(', '.join(args[3:]))}'")
                    except LlamapyError as e:
                        say(f"Couldn't set parameter: {one_line(str(e))}")
            elif args[1] == "system":
                if len(args) < 3:
                    err.write(USAGE_SET + "\n")
                else:
                    text = " ".join(args[2:])
                    if text.startswith('"""'):
                        text = text[3:]
                        if text.endswith('"""') and len(text) >= 3:
                            chat.set_system(text[:-3])
                            say("Set system message.")
                        else:
                            buf, multiline = [text], "system"
                            continue
                    else:
                        chat.set_system(text)
                        say("Set system message.")
            else:
                say(f"Unknown command '/set {printable(args[1])}'. Type /? for help")
        elif line.startswith("/show"):
            args = line.split()
            if len(args) < 2:
                err.write(USAGE_SHOW + "\n")
            else:
                say(chat.show(args[1]))
        elif line.startswith(("/help", "/?")):
            args = line.split()
            topic = args[1] if len(args) > 1 else ""
            err.write((USAGE_SET if topic in ("set", "/set") else USAGE_SHOW if topic in ("show", "/show")
                       else USAGE) + "\n")
        elif line.startswith("/"):
            say(f"Unknown command '{printable(line.split()[0])}'. Type /? for help")
        elif line:
            buf = [line]
            send = True
        if send:
            text = "\n".join(buf)
            buf = []
            try:
                chat.ask(text)
            except KeyboardInterrupt:  # the answer stops; the question is not kept
                pass
            say()
            say()
    if tty:
        say()


def run_stored(name: str, prompt: str | None, *, inp: TextIO | None = None, out: TextIO | None = None,
               err: TextIO | None = None, verbose: bool = False) -> int:
    """`llamapy run NAME [PROMPT...]`: the chat when stdin and stdout are terminals and no prompt is given,
    else one answer (piped stdin goes first in the prompt; no prompt at all only loads the model).
    Returns the exit status."""
    from ..store.models import model_settings

    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    chat = OllamaChat(model_settings(name), out=out)
    try:
        interactive = prompt is None and inp.isatty() and out.isatty()  # as Ollama: both ends a terminal
        if not inp.isatty():
            piped = inp.read()
            prompt = " ".join(p for p in (piped, prompt) if p)
        if not interactive:
            if not prompt:  # Ollama: an empty prompt only loads the model
                chat.engine()
                return 0
            chat.answer(prompt)
            if verbose:
                err.write(f"prompt: {one_line(chat.last_prompt)}\nstop: {chat.stop_reason}\n")
            out.write("\n\n")
            out.flush()
            return 0
        repl(chat, inp, out, err, tty=True)
        return 0
    finally:
        chat.close()


def run_cli(args: list[str]) -> int:
    """`llamapy run NAME [PROMPT...] [--verbose]` (the words after `run`): a stored model run as `ollama run`."""
    from ..store.models import settings_for

    name, words, verbose = args[0], [], False
    for a in args[1:]:
        if a == "--verbose":
            verbose = True
        elif a == "--nowordwrap":
            pass  # answers are never wrapped here
        elif a.startswith("-") and not words:
            raise LlamapyError(f"run {one_line(name)}: unknown option {one_line(a)} (a stored model takes a prompt, "
                               "--verbose and --nowordwrap; llama-cli's options go with -m)")
        else:
            words.append(a)
    if settings_for(name) is None:
        raise LlamapyError(f"{one_line(name)}: no model of that name in the store (llamapy list); "
                           "for a GGUF file use -m")
    return run_stored(name, " ".join(words) if words else None, verbose=verbose)
