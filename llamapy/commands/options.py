"""The command-line options of llama.cpp's programs, declared once, as llama.cpp's common/arg.cpp declares them.

Every option of llama-cli and llama-server that means something on a CPU is here with all its spellings (the
multi-letter short forms like -fa or -ctk, the old underscore forms, the LLAMA_ARG_* variables llama-server
reads). An option llamapy doesn't act on carries a `note`: given on the command line, it prints that one line
(`note: -fa: ...`) and is otherwise ignored.

Tables: SAMPLING (run, chat, serve: SamplerParams fields, whose defaults are the dataclass's), COMMON (llama-cli
and llama-server both), RUN_CHAT (llama-cli's own), SERVER (llama-server's own). `with_options(...)` adds
tables to a Typer command, whose function receives the values in **opts; `LlamaCommand` is the command class
that matches each spelling whole and turns a bad option into one line; `announce(opts)` prints the notes;
`sampler_params(opts)` and `load_options(opts)` build the settings objects.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperOption

try:  # typer >= 0.22 parses with its own copy of click
    from typer._click import exceptions as _cx
    from typer._click import types as _types
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as _cx
    from click import types as _types

from ..generation.params import SamplerParams

_SAMPLER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplerParams)
                     if f.default is not dataclasses.MISSING}
_NO_DEFAULT = object()

# the reasons an accepted option has no effect here
NOT_YET = "not supported yet; ignored"
ON_CPU = "llamapy runs on the CPU; ignored"
NO_DOWNLOAD = "llamapy downloads models with -hf/-hff only; ignored"
SELF_EXTEND = ("self-extend is not supported (llamapy's KV cache holds one entry per position; grouped "
               "positions need several); ignored")
ONE_POOL = "llamapy has one thread pool for prompts and generation (set by -t/-C/--prio); ignored"


class Opt:
    """One option: the keyword the command gets, its spellings, help, type and default, the SamplerParams
    field it sets (its default is then that field's), the variable llama-server reads it from, and, for an
    option llamapy accepts without acting on it, the one-line note saying why.

    A plain class, not a dataclass: a dataclass compiles its methods when the module loads, which every
    command start would pay for."""

    __slots__ = ("name", "flags", "help", "type", "default", "field", "hidden", "panel", "env", "note", "quiet",
                 "choices", "min", "max", "callback")

    def __init__(self, name: str, flags: tuple[str, ...], help: str = "", type: Any = None,
                 default: Any = _NO_DEFAULT, field: str | None = None, hidden: bool = False,
                 panel: str | None = None, env: str | None = None, note: str | None = None, quiet: tuple = (),
                 choices: tuple[str, ...] = (), min: float | None = None, max: float | None = None,
                 callback: Callable | None = None):
        self.name, self.flags, self.help, self.type, self.default = name, flags, help, type, default
        self.field, self.hidden, self.panel, self.env, self.note = field, hidden, panel, env, note
        self.quiet, self.choices, self.min, self.max, self.callback = quiet, choices, min, max, callback

    def value_default(self) -> Any:
        if self.default is not _NO_DEFAULT:
            return self.default
        return _SAMPLER_DEFAULTS[self.field]

    def click_option(self, env: bool = False):
        """The option as a click parameter, built directly (typer's signature path costs ~0.3 ms an option,
        which a table of 170 options would add to every start)."""
        default = self.value_default()
        kind = self.type if self.type is not None else type(default)
        text = str(kind)
        help = self.help if self.note is None else f"{self.help} ({self.note})"
        if env and self.env:
            help += f" (env: {self.env})"
        kw: dict[str, Any] = dict(param_decls=[self.name, *self.flags], help=help, hidden=self.hidden,
                                  rich_help_panel=self.panel, envvar=self.env if env else None)
        if kind is bool:
            kw.update(is_flag=True, default=default, show_default=default is True and "/" in self.flags[0])
        elif "list[tuple" in text:
            kw.update(multiple=True, nargs=2, type=_types.STRING, default=None, metavar="A B")
        elif "list" in text:
            kw.update(multiple=True, type=_types.STRING, default=None, metavar="S")
        elif "tuple" in text:
            kw.update(nargs=2, type=_types.STRING, default=None, metavar="A B")
        elif "int" in text:
            kw.update(type=_types.INT, default=default, metavar="N", show_default=default is not None)
        elif "float" in text:
            kw.update(type=_types.FLOAT, default=default, metavar="N", show_default=default is not None)
        else:
            kw.update(type=_types.STRING, default=default, metavar="S", show_default=bool(default))
        if self.callback is not None:
            fn = self.callback
            kw.update(callback=lambda ctx, param, value: fn(value), is_eager=True, expose_value=False)
        return TyperOption(**kw)


def _s(name: str, flags: tuple[str, ...], help: str, field: str | None = None, **kw) -> Opt:
    return Opt(name, flags, help, field=field or name, panel="Sampling", **kw)


def _n(name: str, flags: tuple[str, ...], help: str, note: str, type: Any = Optional[str], panel: str = "Sampling",
       **kw) -> Opt:
    """An option accepted with a note (its value is None or False when not given)."""
    return Opt(name, flags, help, type, False if type is bool else None, panel=panel, note=note, **kw)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"llamapy {__version__}")
        raise typer.Exit()


def _list_devices(value: bool) -> None:
    if value:
        from .system import cpu_device_line

        typer.echo("Available devices:")
        typer.echo(f"  {cpu_device_line()}")
        raise typer.Exit()


SAMPLING: list[Opt] = [
    _s("seed", ("-s", "--seed"), "RNG seed (-1: random)."),
    _s("temp", ("--temp",), "Temperature (0: greedy)."),
    _s("top_k", ("--top-k", "--top_k"), "Top-k sampling (0: off)."),
    _s("top_p", ("--top-p", "--top_p"), "Top-p sampling (1.0: off)."),
    _s("min_p", ("--min-p", "--min_p"), "Min-p sampling (0.0: off)."),
    _s("typical_p", ("--typical", "--typical_p"), "Locally typical sampling (1.0: off)."),
    _s("repeat_penalty", ("--repeat-penalty", "--repeat_penalty"), "Repetition penalty (1.0: off)."),
    _s("repeat_last_n", ("--repeat-last-n", "--repeat_last_n"), "Tokens the penalties look back on (-1: the context).",
       min=-1),
    _s("presence_penalty", ("--presence-penalty", "--presence_penalty"), "Presence penalty (0.0: off)."),
    _s("frequency_penalty", ("--frequency-penalty", "--frequency_penalty"), "Frequency penalty (0.0: off)."),
    _s("mirostat", ("--mirostat",), "Mirostat sampling (0 off, 1, 2).", min=0, max=2),
    _s("mirostat_lr", ("--mirostat-lr", "--mirostat_lr"), "Mirostat learning rate (eta).", "mirostat_eta"),
    _s("mirostat_ent", ("--mirostat-ent", "--mirostat_ent"), "Mirostat target entropy (tau).", "mirostat_tau"),
    _s("logit_bias", ("-l", "--logit-bias"), "TOKEN_ID(+/-)BIAS, e.g. 15043+1 (repeatable).",
       type=Optional[list[str]], default=None),
    _s("ignore_eos", ("--ignore-eos",), "Never stop at end-of-generation tokens."),
    _s("dry_multiplier", ("--dry-multiplier",), "DRY repetition penalty multiplier (0.0: off)."),
    _s("dry_base", ("--dry-base",), "DRY penalty base (values below 1.0 keep the default)."),
    _s("dry_allowed_length", ("--dry-allowed-length",), "Repeats longer than this get the DRY penalty."),
    _s("dry_penalty_last_n", ("--dry-penalty-last-n",), "Tokens DRY looks back on (0: off, -1: the context)."),
    _s("dry_sequence_breaker", ("--dry-sequence-breaker",),
       "DRY sequence breaker, replacing the defaults ('\\n', ':', '\"', '*'); 'none' for none (repeatable).",
       "dry_sequence_breakers", type=Optional[list[str]], default=None),
    _s("xtc_probability", ("--xtc-probability",), "XTC: chance of excluding the top choices (0.0: off)."),
    _s("xtc_threshold", ("--xtc-threshold",), "XTC: probability a top choice has (above 0.5: off)."),
    _s("dynatemp_range", ("--dynatemp-range",), "Dynamic temperature range (0.0: off)."),
    _s("dynatemp_exponent", ("--dynatemp-exp",), "Dynamic temperature exponent."),
    _s("top_n_sigma", ("--top-nsigma",),
       "Top-n-sigma sampling (-1.0: off; on, the chain is top-k, temperature, top-n-sigma)."),
    _s("samplers", ("--samplers",), "The chain's samplers in order, separated by ';' "
       "(default: penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature).", type=Optional[str], default=None),
    _s("sampling_seq", ("--sampling-seq", "--sampler-seq"), "The chain's samplers as letters (default: edkypmxt).",
       "samplers", type=Optional[str], default=None),
]

_PARSED = ("logit_bias", "dry_sequence_breaker", "samplers", "sampling_seq")  # sampler_params reads these itself

CONTEXT_SHIFT = Opt("context_shift", ("--context-shift/--no-context-shift",),
                    "When the context fills: keep --keep tokens, drop half the rest and go on (or stop).",
                    bool, True, panel="Context")

_C = "Common"
_R = "RoPE and context"
_L = "Logging"
_G = "GPU (accepted, ignored)"


def _c(name, flags, help, type, default, **kw) -> Opt:
    return Opt(name, flags, help, type, default, panel=kw.pop("panel", _C), **kw)


# llama-cli's and llama-server's common params (the ones each verb declares in its own way aside)
COMMON: list[Opt] = [
    _c("model", ("-m", "--model"), "GGUF model (default: the default model).", Optional[str], None,
       env="LLAMA_ARG_MODEL"),
    _c("ctx_size", ("-c", "--ctx-size", "--n_ctx"), "Context size (0: the model's).", int, 4096,
       env="LLAMA_ARG_CTX_SIZE"),
    _c("n_predict", ("-n", "--predict", "--n-predict", "--n_predict"),
       "Tokens to generate (-1: no limit, -2: until the context is full).", int, -1, env="LLAMA_ARG_N_PREDICT"),
    _c("batch_size", ("-b", "--batch-size", "--batch_size"), "Logical batch: prompt tokens handed over at once.",
       int, 2048, env="LLAMA_ARG_BATCH"),
    _c("ubatch_size", ("-ub", "--ubatch-size"), "Physical batch: tokens per forward step.", int, 512,
       min=1, env="LLAMA_ARG_UBATCH"),
    _c("threads", ("-t", "--threads", "--n_threads"), "Threads (default, -1: physical cores).", Optional[int], None,
       min=-1, env="LLAMA_ARG_THREADS"),
    _n("threads_batch", ("-tb", "--threads-batch"), "Threads for prompt batches.", ONE_POOL, Optional[int], _C),
    _c("cpu_mask", ("-C", "--cpu-mask"), "CPU affinity mask in hex (the threads run on these CPUs).",
       Optional[str], None),
    _c("cpu_range", ("-Cr", "--cpu-range"), "CPU affinity range lo-hi.", Optional[str], None),
    _n("cpu_strict", ("--cpu-strict",), "Strict CPU placement <0|1>.", "the threads share the affinity of -C/-Cr",
       Optional[int], _C),
    _c("prio", ("--prio",), "Process priority: 0 normal, 1 medium, 2 high, 3 realtime.", int, 0, min=-1, max=3),
    _n("poll", ("--poll",), "Polling level <0..100>.", "llamapy's pool spins briefly, then sleeps; ignored",
       Optional[int], _C),
    _n("cpu_mask_batch", ("-Cb", "--cpu-mask-batch"), "CPU mask for batches.", ONE_POOL, panel=_C),
    _n("cpu_range_batch", ("-Crb", "--cpu-range-batch"), "CPU range for batches.", ONE_POOL, panel=_C),
    _n("cpu_strict_batch", ("--cpu-strict-batch",), "Strict placement for batches.", ONE_POOL, Optional[int], _C),
    _n("prio_batch", ("--prio-batch",), "Priority for batches.", ONE_POOL, Optional[int], _C),
    _n("poll_batch", ("--poll-batch",), "Polling for batches.", ONE_POOL, Optional[int], _C),
    _c("keep", ("--keep",), "Prompt tokens kept when the context shifts (-1: all).", int, 0, min=-1),
    _n("flash_attn", ("-fa", "--flash-attn"),
       "Flash attention.", "llamapy's CPU attention is one fused pass already; ignored", bool, _C,
       env="LLAMA_ARG_FLASH_ATTN"),
    _c("no_perf", ("--no-perf",), "Don't print the timings.", bool, False, env="LLAMA_ARG_NO_PERF", panel=_L),
    _c("rope_scaling", ("--rope-scaling",), "RoPE scaling: none, linear, yarn (default: the model's).",
       Optional[str], None, choices=("none", "linear", "yarn"), panel=_R,
       env="LLAMA_ARG_ROPE_SCALING_TYPE"),
    _c("rope_scale", ("--rope-scale",), "RoPE context scaling factor (context x N).", Optional[float], None,
       panel=_R, env="LLAMA_ARG_ROPE_SCALE", min=0.0, ),
    _c("rope_freq_base", ("--rope-freq-base",), "RoPE base frequency (default: the model's).", float, 0.0, panel=_R,
       env="LLAMA_ARG_ROPE_FREQ_BASE", min=0.0),
    _c("rope_freq_scale", ("--rope-freq-scale",), "RoPE frequency scaling factor (context x 1/N).", float, 0.0,
       panel=_R, env="LLAMA_ARG_ROPE_FREQ_SCALE", min=0.0),
    _c("yarn_orig_ctx", ("--yarn-orig-ctx",), "YaRN: the model's original context (0: the training context).",
       int, 0, panel=_R, env="LLAMA_ARG_YARN_ORIG_CTX", min=0),
    _c("yarn_ext_factor", ("--yarn-ext-factor",), "YaRN: extrapolation mix (-1: from the scaling type).",
       float, -1.0, panel=_R, env="LLAMA_ARG_YARN_EXT_FACTOR"),
    _c("yarn_attn_factor", ("--yarn-attn-factor",), "YaRN: attention magnitude scale.", float, 1.0, panel=_R,
       env="LLAMA_ARG_YARN_ATTN_FACTOR"),
    _c("yarn_beta_slow", ("--yarn-beta-slow",), "YaRN: high correction dim (alpha).", float, 1.0, panel=_R,
       env="LLAMA_ARG_YARN_BETA_SLOW"),
    _c("yarn_beta_fast", ("--yarn-beta-fast",), "YaRN: low correction dim (beta).", float, 32.0, panel=_R,
       env="LLAMA_ARG_YARN_BETA_FAST"),
    _n("dump_kv_cache", ("-dkvc", "--dump-kv-cache"), "Print the KV cache's use.", "no KV cache view here; ignored",
       bool, _C),
    _c("cache_type_k", ("-ctk", "--cache-type-k"),
       "KV cache type of K: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1.", str, "f16",
       env="LLAMA_ARG_CACHE_TYPE_K"),
    _c("cache_type_v", ("-ctv", "--cache-type-v"),
       "KV cache type of V: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1.", str, "f16",
       env="LLAMA_ARG_CACHE_TYPE_V"),
    _n("defrag_thold", ("-dt", "--defrag-thold"), "KV cache defragmentation threshold.",
       "each sequence's KV cache is contiguous, nothing to defragment; ignored", Optional[float], _C,
       env="LLAMA_ARG_DEFRAG_THOLD"),
    _c("mlock", ("--mlock",), "Keep the weights in RAM (mlock).", bool, False, env="LLAMA_ARG_MLOCK"),
    _c("no_mmap", ("--no-mmap",), "Read the weights into memory instead of mapping the file.", bool, False,
       env="LLAMA_ARG_NO_MMAP"),
    _n("numa", ("--numa",), "NUMA placement: distribute, isolate, numactl.",
       "llamapy doesn't place threads or memory per NUMA node (run it under numactl); ignored", panel=_C,
       choices=("distribute", "isolate", "numactl"), env="LLAMA_ARG_NUMA"),
    _n("device", ("-dev", "--device"), "Devices to offload to.", ON_CPU, panel=_G, quiet=("none", "cpu", "CPU"),
       env="LLAMA_ARG_DEVICE"),
    Opt("list_devices", ("--list-devices",), "List the devices and exit.", bool, False, panel=_G,
        callback=_list_devices),
    _n("n_gpu_layers", ("-ngl", "--gpu-layers", "--n-gpu-layers", "--n_gpu_layers"), "Layers on the GPU.", ON_CPU,
       Optional[int], _G, quiet=(0,), env="LLAMA_ARG_N_GPU_LAYERS"),
    _n("split_mode", ("-sm", "--split-mode"), "Split over GPUs: none, layer, row.", ON_CPU, panel=_G,
       choices=("none", "layer", "row"), env="LLAMA_ARG_SPLIT_MODE"),
    _n("tensor_split", ("-ts", "--tensor-split"), "Fractions per GPU.", ON_CPU, panel=_G, env="LLAMA_ARG_TENSOR_SPLIT"),
    _n("main_gpu", ("-mg", "--main-gpu"), "The main GPU.", ON_CPU, Optional[int], _G, env="LLAMA_ARG_MAIN_GPU"),
    _n("no_kv_offload", ("-nkvo", "--no-kv-offload"), "Keep the KV cache off the GPU.", ON_CPU, bool, _G,
       env="LLAMA_ARG_NO_KV_OFFLOAD"),
    _c("check_tensors", ("--check-tensors",), "Check the weights for NaN and infinite values at load.", bool, False),
    _c("override_kv", ("--override-kv",), "KEY=TYPE:VALUE (int, float, bool, str) replaces a metadata value "
       "(repeatable).", Optional[list[str]], None),
    _c("lora", ("--lora",), "GGUF LoRA adapter applied at run time, scale 1 (repeatable).", Optional[list[str]], None),
    _c("lora_scaled", ("--lora-scaled",), "GGUF LoRA adapter and its scale (repeatable; after the --lora ones).",
       Optional[list[tuple[str, str]]], None),
    _c("control_vector", ("--control-vector",), "Control vector GGUF added to the residual stream, scale 1 "
       "(repeatable; they add up).", Optional[list[str]], None, panel=_C),
    _c("control_vector_scaled", ("--control-vector-scaled",), "Control vector GGUF and its scale (repeatable).",
       Optional[list[tuple[str, str]]], None, panel=_C),
    _c("control_vector_layer_range", ("--control-vector-layer-range",), "First and last layer the control "
       "vectors apply to (default: all).", Optional[tuple[str, str]], None, panel=_C),
    _n("model_url", ("-mu", "--model-url"), "Model download URL.", NO_DOWNLOAD, panel=_C, env="LLAMA_ARG_MODEL_URL"),
    _c("hf_repo", ("-hf", "-hfr", "--hf-repo"), "Hugging Face repository <user>/<model>[:quant]: its GGUF is "
       "pulled into the model store once (HF_ENDPOINT, HF_TOKEN honoured), then used from there.", Optional[str],
       None, panel=_C, env="LLAMA_ARG_HF_REPO"),
    _n("hf_repo_draft", ("-hfd", "-hfrd", "--hf-repo-draft"), "Hugging Face repository of the draft model.",
       NO_DOWNLOAD, panel=_C, env="LLAMA_ARG_HFD_REPO"),
    _c("hf_file", ("-hff", "--hf-file"), "The GGUF file of the -hf repository to use (default: the quant "
       "given, else Q4_K_M, else the first GGUF).", Optional[str], None, panel=_C, env="LLAMA_ARG_HF_FILE"),
    _n("hf_repo_v", ("-hfv", "-hfrv", "--hf-repo-v"), "Hugging Face repository of the vocoder.", NO_DOWNLOAD,
       panel=_C, env="LLAMA_ARG_HF_REPO_V"),
    _n("hf_file_v", ("-hffv", "--hf-file-v"), "Vocoder file in the repository.", NO_DOWNLOAD, panel=_C,
       env="LLAMA_ARG_HF_FILE_V"),
    _c("hf_token", ("-hft", "--hf-token"), "Hugging Face access token (default: $HF_TOKEN).", Optional[str], None,
       panel=_C),
    _c("log_disable", ("--log-disable",), "No log lines (errors still go to stderr).", bool, False, panel=_L),
    _c("log_file", ("--log-file",), "Write the log lines to this file too.", Optional[str], None, panel=_L),
    _n("log_colors", ("--log-colors",), "Coloured log lines.", "log lines are plain text; ignored", bool, _L,
       env="LLAMA_LOG_COLORS"),
    _c("verbose", ("-v", "--verbose", "--log-verbose"), "Everything logged, and tracebacks on errors.", bool, False,
       panel=_L),
    _c("log_verbosity", ("-lv", "--verbosity", "--log-verbosity"),
       "Log threshold: 0 and up log everything llamapy logs; below 0 nothing (as --log-disable).", int, 0,
       panel=_L, env="LLAMA_LOG_VERBOSITY"),
    _n("log_prefix", ("--log-prefix",), "Prefix log lines.", "log lines are plain text; ignored", bool, _L,
       env="LLAMA_LOG_PREFIX"),
    _n("log_timestamps", ("--log-timestamps",), "Timestamps in log lines.", "log lines are plain text; ignored", bool,
       _L, env="LLAMA_LOG_TIMESTAMPS"),
    _n("completion_bash", ("--completion-bash",), "Print a bash completion script.",
       "no completion script here; ignored", bool, _C),
    Opt("version", ("--version",), "Version and exit.", bool, False, panel=_C, callback=_version),
    _n("no_warmup", ("--no-warmup",), "Skip the warm-up run.", "llamapy does no warm-up run; nothing to skip",
       bool, _C),
    _c("special", ("-sp", "--special"), "Print special tokens.", bool, False),
    _n("jinja", ("--jinja",), "Use the model's Jinja chat template.",
       "chat templates are always rendered with Jinja here", bool, _C, env="LLAMA_ARG_JINJA"),
    _n("reasoning_format", ("--reasoning-format",), "Chat answers' <think> part: deepseek (to reasoning_content, "
       "the default), none (left in content).", "the server's chat answers use it; ignored here", panel=_C,
       env="LLAMA_ARG_THINK", choices=("deepseek", "none")),
    _c("chat_template", ("--chat-template",), "Built-in template name (chatml, llama3, ...) or Jinja text.",
       Optional[str], None, env="LLAMA_ARG_CHAT_TEMPLATE"),
    _c("chat_template_file", ("--chat-template-file",), "Jinja template file.", Optional[str], None,
       env="LLAMA_ARG_CHAT_TEMPLATE_FILE"),
]

_X = "Run"

# llama-cli's own (the interactive-mode switches -i/-if/-ins/-cnv are the run command's)
RUN_CHAT: list[Opt] = [
    _c("file", ("-f", "--file"), "Read the prompt from a file.", Optional[str], None, panel=_X),
    _c("binary_file", ("-bf", "--binary-file"), "Read the prompt from a file as it is (no newline dropped).",
       Optional[str], None, panel=_X),
    _c("system_prompt", ("-sys", "--system-prompt"), "System message (conversation mode).", Optional[str], None,
       panel=_X),
    CONTEXT_SHIFT,
    _c("escape", ("-e", "--escape"), "Process \\n, \\t, ... in the prompt (default).", bool, True, panel=_X),
    _c("no_escape", ("--no-escape",), "Keep backslashes in the prompt as typed.", bool, False, panel=_X),
    _c("no_display_prompt", ("--no-display-prompt",), "Don't echo the prompt.", bool, False, panel=_X),
    _c("verbose_prompt", ("--verbose-prompt",), "Print the prompt's tokens.", bool, False, panel=_X),
    _c("color", ("-co", "--color"), "Colour the prompt and input (terminals only).", bool, False, panel=_X),
    _n("print_token_count", ("-ptc", "--print-token-count"), "Print the token count every N tokens.", NOT_YET,
       Optional[int], _X),
    _c("prompt_cache", ("--prompt-cache",), "File caching the prompt's state (tokens and KV cache).",
       Optional[str], None, panel=_X),
    _c("prompt_cache_all", ("--prompt-cache-all",), "Save the generated tokens to the prompt cache too.", bool,
       False, panel=_X),
    _c("prompt_cache_ro", ("--prompt-cache-ro",), "Use the prompt cache but don't update it.", bool, False,
       panel=_X),
    _c("reverse_prompt", ("-r", "--reverse-prompt"), "Stop at TEXT (interactive: your turn). Repeatable.",
       Optional[list[str]], None, panel=_X),
    _c("in_prefix", ("--in-prefix",), "Text before each of your inputs.", str, "", panel=_X),
    _c("in_suffix", ("--in-suffix",), "Text after each of your inputs.", str, "", panel=_X),
    _c("in_prefix_bos", ("--in-prefix-bos",), "Start each of your inputs with BOS.", bool, False, panel=_X),
    _c("multiline_input", ("-mli", "--multiline-input"), "Lines go on until one ends in \\.", bool, False, panel=_X),
    _c("grammar", ("--grammar",), "GBNF grammar the output must follow, e.g. 'root ::= \"yes\" | \"no\"'.",
       Optional[str], None, panel="Grammar"),
    _c("grammar_file", ("--grammar-file",), "Read the GBNF grammar from a file.", Optional[str], None,
       panel="Grammar"),
    _c("json_schema", ("-j", "--json-schema"), "JSON schema the output must follow (JSON text).",
       Optional[str], None, panel="Grammar"),
    _c("json_schema_file", ("-jf", "--json-schema-file"), "Read the JSON schema the output must follow from a file.",
       Optional[str], None, panel="Grammar"),
    _n("grp_attn_n", ("-gan", "--grp-attn-n"), "Group-attention factor.", SELF_EXTEND, Optional[int], _X),
    _n("grp_attn_w", ("-gaw", "--grp-attn-w"), "Group-attention width.", SELF_EXTEND, Optional[int], _X),
    _n("simple_io", ("--simple-io",), "Basic console input and output.",
       "input is read line by line from stdin already", bool, _X),
    _n("parallel", ("-np", "--parallel"), "Parallel sequences.", "run generates one sequence; ignored",
       Optional[int], _X),
]

_S = "Server"
_D = "Draft devices and presets (accepted, ignored)"

# llama-server's own
SERVER: list[Opt] = [
    CONTEXT_SHIFT,
    _c("parallel", ("-np", "--parallel"), "Slots: requests decoded together.", int, 1, min=1, panel=_S,
       env="LLAMA_ARG_N_PARALLEL"),
    _n("verbose_prompt", ("--verbose-prompt",), "Print the prompt's tokens.", "run only; ignored by the server",
       bool, _S),
    _n("escape", ("-e", "--escape"), "Process escapes in prompts.", "prompts are taken as sent; ignored", bool, _S),
    _n("no_escape", ("--no-escape",), "Keep backslashes in prompts.", "prompts are taken as sent; ignored", bool, _S),
    _c("spm_infill", ("--spm-infill",), "/infill puts the suffix before the prefix (suffix/prefix/middle).", bool,
       False, panel=_S),
    _c("pooling", ("--pooling",), "Embedding pooling: none, mean, cls, last, rank (default: the model's).",
       Optional[str], None, choices=("none", "mean", "cls", "last", "rank"), panel=_S,
       env="LLAMA_ARG_POOLING"),
    _n("cont_batching", ("-cb", "--cont-batching"), "Continuous batching.", "always on here", bool, _S,
       env="LLAMA_ARG_CONT_BATCHING"),
    _n("no_cont_batching", ("-nocb", "--no-cont-batching"), "No continuous batching.",
       "slots are always batched together here; ignored", bool, _S, env="LLAMA_ARG_NO_CONT_BATCHING"),
    _c("alias", ("-a", "--alias", "--model_alias"), "Model name the API reports.", Optional[str], None, panel=_S,
       env="LLAMA_ARG_ALIAS"),
    _c("host", ("--host",), "Address to listen on.", str, "127.0.0.1", panel=_S, env="LLAMA_ARG_HOST"),
    _c("port", ("--port",), "Port to listen on (0: any free port).", int, 8080, min=0, max=65535, panel=_S,
       env="LLAMA_ARG_PORT"),
    _c("path", ("--path",), "Serve the static files of this folder at / (instead of the chat page).",
       Optional[str], None, panel=_S, env="LLAMA_ARG_STATIC_PATH"),
    _c("no_webui", ("--no-webui",), "No chat page at /.", bool, False, panel=_S, env="LLAMA_ARG_NO_WEBUI"),
    _c("embedding", ("--embedding", "--embeddings"), "Embeddings only (completion endpoints answer 501).", bool,
       False, panel=_S, env="LLAMA_ARG_EMBEDDINGS"),
    _c("reranking", ("--reranking", "--rerank"), "Reranking endpoint (needs a model with a rank head).", bool, False,
       panel=_S, env="LLAMA_ARG_RERANKING"),
    _c("api_key", ("--api-key", "--api_key"), "Require 'Authorization: Bearer KEY'.", Optional[str], None, panel=_S,
       env="LLAMA_API_KEY"),
    _c("api_key_file", ("--api-key-file",), "Read API keys from a file, one a line.", Optional[str], None, panel=_S),
    _c("models_max", ("--models-max",), "Store models loaded at once (the least recently used idle one is "
       "unloaded to load another).", int, 3, min=1, panel=_S, env="LLAMAPY_MAX_LOADED_MODELS"),
    _c("keep_alive", ("--keep-alive",), "How long a store model stays loaded after its last request (\"5m\", "
       "seconds, 0: unload at once, -1: forever; default: $LLAMAPY_KEEP_ALIVE, $OLLAMA_KEEP_ALIVE, else 5m).",
       Optional[str], None, panel=_S),
    _c("no_model_writes", ("--no-model-writes",), "Refuse /api/create, /api/blobs, /api/copy, /api/delete and "
       "/api/pull (the model store is read-only over HTTP).", bool, False, panel=_S),
    _c("allow_path", ("--allow-path",), "A folder whose GGUF files a remote /api/create may name in FROM "
       "(repeatable; otherwise only uploaded blobs and stored models).", Optional[list[str]], None, panel=_S),
    _c("ssl_key_file", ("--ssl-key-file",), "PEM private key: serve HTTPS.", Optional[str], None, panel=_S,
       env="LLAMA_ARG_SSL_KEY_FILE"),
    _c("ssl_cert_file", ("--ssl-cert-file",), "PEM certificate: serve HTTPS.", Optional[str], None, panel=_S,
       env="LLAMA_ARG_SSL_CERT_FILE"),
    _c("timeout", ("-to", "--timeout"), "Drop a client that reads nothing of the answer for this many seconds.",
       float, 600.0, min=0, panel=_S, env="LLAMA_ARG_TIMEOUT"),
    _c("read_timeout", ("--read-timeout",), "Seconds a request's headers and body may take to arrive.", float,
       30.0, min=0, panel=_S),
    _c("cors_origin", ("--cors-origin",), "Web origin allowed to call a server without --api-key (repeatable).",
       Optional[list[str]], None, panel=_S),
    _c("threads_http", ("--threads-http",), "Threads for blocking HTTP work (-1: the default).", int, -1, min=-1,
       panel=_S, env="LLAMA_ARG_THREADS_HTTP"),
    _n("cache_reuse", ("--cache-reuse",), "Minimum chunk to reuse from the cache by shifting.",
       "a slot reuses its longest common prefix with the new prompt; chunks after it are not shifted",
       Optional[int], _S, env="LLAMA_ARG_CACHE_REUSE"),
    _c("metrics", ("--metrics",), "Prometheus metrics at /metrics.", bool, False, panel=_S,
       env="LLAMA_ARG_ENDPOINT_METRICS"),
    _c("slots", ("--slots/--no-slots",), "The /slots endpoint (on by default).", bool, True, panel=_S,
       env="LLAMA_ARG_ENDPOINT_SLOTS"),
    _c("props", ("--props",), "Allow changing settings through POST /props.", bool, False, panel=_S,
       env="LLAMA_ARG_ENDPOINT_PROPS"),
    _c("grammar", ("--grammar",), "GBNF grammar of requests that give none.", Optional[str], None, panel=_S),
    _c("grammar_file", ("--grammar-file",), "GBNF grammar file of requests that give none.", Optional[str], None,
       panel=_S),
    _c("json_schema", ("-j", "--json-schema"), "JSON schema of requests that give no grammar.", Optional[str], None,
       panel=_S),
    _c("slot_save_path", ("--slot-save-path",), "Folder slots are saved to (POST /slots/{id}?action=save|restore).",
       Optional[str], None, panel=_S),
    _n("slot_prompt_similarity", ("-sps", "--slot-prompt-similarity"), "Prompt similarity a slot needs to be reused.",
       "a request takes the slot with the longest common prefix", Optional[float], _S),
    _c("lora_init_without_apply", ("--lora-init-without-apply",),
       "Load LoRA adapters with scale 0 (apply them later through POST /lora-adapters).", bool, False, panel=_S),
    _n("device_draft", ("-devd", "--device-draft"), "Draft devices.", ON_CPU, panel=_D),
    _n("n_gpu_layers_draft", ("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"), "Draft layers on the GPU.",
       ON_CPU, Optional[int], _D, env="LLAMA_ARG_N_GPU_LAYERS_DRAFT"),
    _n("model_vocoder", ("-mv", "--model-vocoder"), "Vocoder model (text to speech).", NOT_YET, panel=_D),
    _n("tts_use_guide_tokens", ("--tts-use-guide-tokens",), "Guide tokens (text to speech).", NOT_YET, bool, _D),
    *(_n(f.strip("-").replace("-", "_").replace(".", "_"), (f,), "A preset that downloads its model.", NO_DOWNLOAD,
         bool, _D)
      for f in ("--embd-bge-small-en-default", "--embd-e5-small-en-default", "--embd-gte-small-default",
                "--fim-qwen-1.5b-default", "--fim-qwen-3b-default", "--fim-qwen-7b-default")),
]

def with_options(*tables: list[Opt], env: bool = False, skip: tuple[str, ...] = ()) -> Callable:
    """Give a Typer command (class LlamaCommand) the tables' options; its function takes them as **opts.
    `env`: read the LLAMA_ARG_* variables as llama-server does; `skip`: names the command declares itself."""
    def deco(func: Callable) -> Callable:
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        func.__signature__ = sig.replace(parameters=own)  # typer must not see **opts
        taken = {p.name for p in own} | set(skip)
        chosen, seen = [], set()
        for table in tables:
            for o in table:
                if o.name not in taken and o.name not in seen:
                    seen.add(o.name)
                    chosen.append(o)
        func.__llama_options__ = (chosen, env)  # copied onto typer's wrapper by functools.update_wrapper
        return func
    return deco


def announce(opts: Mapping[str, Any], *tables: list[Opt], err=None) -> None:
    """One line per reason for the given options llamapy accepts without acting on them."""
    by_note: dict[str, list[str]] = {}
    seen = set()
    for table in tables:
        for o in table:
            if o.note is None or o.name in seen or o.name not in opts:
                continue
            seen.add(o.name)
            v = opts[o.name]
            if v is None or v is False or v == () or v == [] or v in o.quiet or str(v) in map(str, o.quiet):
                continue
            by_note.setdefault(o.note, []).append(o.flags[0])
    for note, flags in by_note.items():
        print(f"note: {', '.join(flags)}: {note}", file=err or sys.stderr)


# -- the command class: every spelling matched whole, bad input in one line ----------------------------------

def _all_flags(cmd) -> list[str]:
    return [f for p in cmd.params for f in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))]


def _dashes(token: str) -> str:
    return token.replace("_", "-")


class LlamaCommand(TyperCommand):
    """A Typer command that parses as llama.cpp does: `-fa` is the option -fa or unknown, never `-f a`;
    an unknown option or a bad value is one line on stderr and exit status 2. The old underscore spellings
    (--ctx_size, --top_k) are the dashed ones."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.context_settings.setdefault("token_normalize_func", _dashes)
        chosen, env = getattr(self.callback, "__llama_options__", ((), False))
        self.params.extend(o.click_option(env) for o in chosen)

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        short = parser._match_short_opt

        def match_short(arg: str, state) -> None:
            if len(arg) > 2:  # llama.cpp has no bundled short options or glued values
                raise _cx.NoSuchOption(arg, ctx=ctx)
            short(arg, state)

        parser._match_short_opt = match_short
        return parser

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes the list
        try:
            rest = super().parse_args(ctx, args)
        except _cx.NoSuchOption as e:
            close = difflib.get_close_matches(e.option_name, _all_flags(self), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; see 'llamapy {self.name} -h'"
            _fail(f"unknown option '{e.option_name}'{hint}")
        except _cx.UsageError as e:
            _fail(_one_line(e))
        for name, check in _VALUE_CHECKS.items():
            v = ctx.params.get(name)
            if v is not None:
                check(v)
        for o in (*COMMON, *SERVER, *SAMPLING):
            v = ctx.params.get(o.name)
            if v is None or v is True or v is False:
                continue
            if o.choices and v not in o.choices:
                _fail(f"invalid value for '{o.flags[-1]}': '{v}' is not one of {', '.join(o.choices)}")
            if (o.min is not None and v < o.min) or (o.max is not None and v > o.max):
                allowed = (f"from {o.min:g} to {o.max:g}" if o.min is not None and o.max is not None
                           else f">= {o.min:g}" if o.min is not None else f"<= {o.max:g}")
                _fail(f"invalid value for '{' / '.join(o.flags)}': {v} (allowed: {allowed})")
        from .option_values import rope_scale_precedence

        rope_scale_precedence(ctx, given)
        return rest


def _check_samplers(v: str) -> None:
    """--samplers names as generation.params reads them (the one parser), refused in one line."""
    from ..generation.params import SAMPLER_ALIASES, SAMPLER_NAMES

    bad = [n for n in v.split(";") if n and n not in SAMPLER_NAMES and n not in SAMPLER_ALIASES]
    if bad or not v.strip(";"):
        names = [n for n in SAMPLER_NAMES if n != "penalties"] + ["penalties"]
        _fail(f"invalid value for '--samplers': '{bad[0] if bad else v}' is not a sampler (use ';'-separated "
              f"names: {', '.join(names)}; the default order is {';'.join(SAMPLER_NAMES)})")


def _check_sampling_seq(v: str) -> None:
    from ..generation.params import SAMPLER_LETTERS

    letters = "".join(SAMPLER_LETTERS)
    bad = [c for c in v if c not in SAMPLER_LETTERS]
    if bad or not v:
        _fail(f"invalid value for '--sampling-seq': '{bad[0] if bad else v}' is not a sampler letter "
              f"(use letters of {letters})")


_VALUE_CHECKS = {"samplers": _check_samplers, "sampling_seq": _check_sampling_seq}


def _one_line(e) -> str:
    msg = " ".join(e.format_message().split())
    return msg[0].lower() + msg[1:] if msg else "bad command line"


def _fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(2)
