"""The command-line options that several verbs share, declared once.

SAMPLING (run, chat, serve) sets SamplerParams fields: its defaults are the dataclass's. RUN_CHAT holds
the options that `run` and `chat` both take (llama-cli's). `with_options(...)` adds a table's options to a
Typer command, whose function receives them in **opts; `sampler_params(opts)` builds the SamplerParams.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import typer

from ..errors import LlamapyError
from ..generation.params import SamplerParams

_SAMPLER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplerParams)
                     if f.default is not dataclasses.MISSING}
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Opt:
    """One option: the keyword the command gets, its spellings, help, type and default, and the
    SamplerParams field it sets (its default is then that field's)."""

    name: str
    flags: tuple[str, ...]
    help: str = ""
    type: Any = None
    default: Any = _NO_DEFAULT
    field: str | None = None
    hidden: bool = False
    panel: str | None = None  # a --help section of its own

    def value_default(self) -> Any:
        if self.default is not _NO_DEFAULT:
            return self.default
        return _SAMPLER_DEFAULTS[self.field]

    def parameter(self) -> inspect.Parameter:
        default = self.value_default()
        kind = self.type if self.type is not None else type(default)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                 default=typer.Option(default, *self.flags, help=self.help, hidden=self.hidden,
                                                      rich_help_panel=self.panel))


def _s(name: str, flags: tuple[str, ...], help: str, field: str | None = None, **kw) -> Opt:
    return Opt(name, flags, help, field=field or name, panel="Sampling", **kw)


SAMPLING: list[Opt] = [
    _s("seed", ("-s", "--seed"), "RNG seed (-1: random)."),
    _s("temp", ("--temp",), "Temperature (0: greedy)."),
    _s("top_k", ("--top-k", "--top_k"), "Top-k sampling (0: off)."),
    _s("top_p", ("--top-p", "--top_p"), "Top-p sampling (1.0: off)."),
    _s("min_p", ("--min-p", "--min_p"), "Min-p sampling (0.0: off)."),
    _s("typical_p", ("--typical", "--typical_p"), "Locally typical sampling (1.0: off)."),
    _s("repeat_penalty", ("--repeat-penalty", "--repeat_penalty"), "Repetition penalty (1.0: off)."),
    _s("repeat_last_n", ("--repeat-last-n", "--repeat_last_n"), "Tokens the penalties look back on (-1: the context)."),
    _s("presence_penalty", ("--presence-penalty", "--presence_penalty"), "Presence penalty (0.0: off)."),
    _s("frequency_penalty", ("--frequency-penalty", "--frequency_penalty"), "Frequency penalty (0.0: off)."),
    _s("mirostat", ("--mirostat",), "Mirostat sampling (0 off, 1, 2)."),
    _s("mirostat_lr", ("--mirostat-lr", "--mirostat_lr"), "Mirostat learning rate (eta).", "mirostat_eta"),
    _s("mirostat_ent", ("--mirostat-ent", "--mirostat_ent"), "Mirostat target entropy (tau).", "mirostat_tau"),
    _s("logit_bias", ("-l", "--logit-bias"), "TOKEN_ID(+/-)BIAS, e.g. 15043+1 (repeatable).",
       type=Optional[list[str]], default=None),
    _s("ignore_eos", ("--ignore-eos",), "Never stop at end-of-generation tokens."),
]

CONTEXT_SHIFT = Opt("context_shift", ("--context-shift/--no-context-shift",),
                    "When the context fills: keep --keep tokens, drop half the rest and go on (or stop).",
                    bool, True, panel="Context")

RUN_CHAT: list[Opt] = [
    Opt("model", ("-m", "--model"), "GGUF model (default: the default model).", Optional[str], None),
    Opt("file", ("-f", "--file"), "Read the prompt from a file.", Optional[str], None),
    Opt("system_prompt", ("-sys", "--system-prompt"), "System message (conversation mode).", Optional[str], None),
    Opt("n_predict", ("-n", "--n-predict", "--n_predict"),
        "Tokens to generate (-1: no limit, -2: until the context is full).", int, -1),
    Opt("ctx_size", ("-c", "--ctx-size", "--ctx_size"), "Context size (0: the model's).", int, 4096),
    Opt("batch_size", ("-b", "--batch-size", "--batch_size"), "Prompt batch size.", int, 2048),
    Opt("threads", ("-t", "--threads"), "Threads (default: physical cores).", Optional[int], None),
    Opt("keep", ("--keep",), "Prompt tokens kept when the context shifts (-1: all).", int, 0),
    CONTEXT_SHIFT,
    Opt("escape", ("-e", "--escape"), "Process \\n, \\t, ... in the prompt (default).", bool, True),
    Opt("no_escape", ("--no-escape",), "Keep backslashes in the prompt as typed.", bool, False),
    Opt("no_display_prompt", ("--no-display-prompt",), "Don't echo the prompt.", bool, False),
    Opt("verbose_prompt", ("--verbose-prompt",), "Print the prompt's tokens.", bool, False),
    Opt("color", ("--color",), "Colour the prompt and input (terminals only).", bool, False),
    Opt("special", ("-sp", "--special"), "Print special tokens.", bool, False),
    Opt("n_gpu_layers", ("-ngl", "--gpu-layers", "--n-gpu-layers", "--n_gpu_layers"),
        "Accepted; llamapy runs on the CPU.", Optional[int], None),
    Opt("verbose", ("--verbose",), "Tracebacks on errors.", bool, False),
    Opt("reverse_prompt", ("-r", "--reverse-prompt"), "Stop at TEXT (interactive: your turn). Repeatable.",
        Optional[list[str]], None),
    Opt("in_prefix", ("--in-prefix",), "Text before each of your inputs.", str, ""),
    Opt("in_suffix", ("--in-suffix",), "Text after each of your inputs.", str, ""),
    Opt("in_prefix_bos", ("--in-prefix-bos",), "Start each of your inputs with BOS.", bool, False),
    Opt("chat_template", ("--chat-template",), "Built-in template name (chatml, llama3, ...) or Jinja text.",
        Optional[str], None),
    Opt("chat_template_file", ("--chat-template-file",), "Jinja template file.", Optional[str], None),
    Opt("multiline_input", ("--multiline-input", "-mli"), "Lines go on until one ends in \\.", bool, False),
    Opt("grammar", ("--grammar",), "GBNF grammar the output must follow, e.g. 'root ::= \"yes\" | \"no\"'.",
        Optional[str], None, panel="Grammar"),
    Opt("grammar_file", ("--grammar-file",), "Read the GBNF grammar from a file.", Optional[str], None,
        panel="Grammar"),
    Opt("json_schema", ("-j", "--json-schema"), "JSON schema the output must follow (JSON text).",
        Optional[str], None, panel="Grammar"),
]


def with_options(*tables: list[Opt]) -> Callable:
    """Add the tables' options to a Typer command function (it takes them as **opts)."""
    def deco(func: Callable) -> Callable:
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [o.parameter() for table in tables for o in table]
        func.__signature__ = sig.replace(parameters=own + extra)
        return func
    return deco


def parse_logit_bias(items: list[str] | None) -> dict[int, float]:
    """`TOKEN_ID(+/-)BIAS` strings (`15043+1`, `2-inf`) as a dict."""
    out: dict[int, float] = {}
    for item in items or []:
        s = item.strip()
        for i in range(1, len(s)):
            if s[i] in "+-" and s[:i].strip().lstrip("-").isdigit():
                try:
                    bias = float(s[i + 1:])
                except ValueError:
                    break
                out[int(s[:i])] = bias if s[i] == "+" else -bias
                break
        else:
            raise LlamapyError(f"--logit-bias '{item}': expected TOKEN_ID(+/-)BIAS, like 15043+1")
        if int(s[:i]) not in out:
            raise LlamapyError(f"--logit-bias '{item}': expected TOKEN_ID(+/-)BIAS, like 15043+1")
    return out


def sampler_params(opts: Mapping[str, Any]) -> SamplerParams:
    """The SamplerParams that parsed SAMPLING options ask for."""
    kw = {o.field: opts[o.name] for o in SAMPLING}
    kw["logit_bias"] = parse_logit_bias(opts["logit_bias"])
    return SamplerParams(**kw)
