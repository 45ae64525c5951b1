"""The option table against llama.cpp's: every llama-cli and llama-server option is accepted with all its
spellings and arity (multi-letter short forms matched whole), bad input is one line, and the options that
change something on a CPU do it (RoPE overrides, --override-kv, -ub, --mlock, --no-mmap, logging)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import typer
from cliutil import cli
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama

from llamapy.cli import make_app
from llamapy.commands.options import COMMON, RUN_CHAT, SAMPLING, SERVER
from llamapy.engine.engine import Engine
from llamapy.engine.load import LoadOptions, parse_override_kv
from llamapy.errors import LlamapyError

# llama.cpp's options as its programs list them (common/arg.cpp, the February 2025 snapshot): the
# spellings of each option and how many values it takes; for llama-server also the variable it reads.
LLAMA_CLI = [
    (('-h', '--help', '--usage'), 0),
    (('--version',), 0),
    (('--completion-bash',), 0),
    (('--verbose-prompt',), 0),
    (('-t', '--threads'), 1),
    (('-tb', '--threads-batch'), 1),
    (('-C', '--cpu-mask'), 1),
    (('-Cr', '--cpu-range'), 1),
    (('--cpu-strict',), 1),
    (('--prio',), 1),
    (('--poll',), 1),
    (('-Cb', '--cpu-mask-batch'), 1),
    (('-Crb', '--cpu-range-batch'), 1),
    (('--cpu-strict-batch',), 1),
    (('--prio-batch',), 1),
    (('--poll-batch',), 1),
    (('-c', '--ctx-size'), 1),
    (('-n', '--predict', '--n-predict'), 1),
    (('-b', '--batch-size'), 1),
    (('-ub', '--ubatch-size'), 1),
    (('--keep',), 1),
    (('-fa', '--flash-attn'), 0),
    (('-p', '--prompt'), 1),
    (('--no-perf',), 0),
    (('-f', '--file'), 1),
    (('-bf', '--binary-file'), 1),
    (('-e', '--escape'), 0),
    (('--no-escape',), 0),
    (('--rope-scaling',), 1),
    (('--rope-scale',), 1),
    (('--rope-freq-base',), 1),
    (('--rope-freq-scale',), 1),
    (('--yarn-orig-ctx',), 1),
    (('--yarn-ext-factor',), 1),
    (('--yarn-attn-factor',), 1),
    (('--yarn-beta-slow',), 1),
    (('--yarn-beta-fast',), 1),
    (('-dkvc', '--dump-kv-cache'), 0),
    (('-nkvo', '--no-kv-offload'), 0),
    (('-ctk', '--cache-type-k'), 1),
    (('-ctv', '--cache-type-v'), 1),
    (('-dt', '--defrag-thold'), 1),
    (('-np', '--parallel'), 1),
    (('--mlock',), 0),
    (('--no-mmap',), 0),
    (('--numa',), 1),
    (('-dev', '--device'), 1),
    (('--list-devices',), 0),
    (('-ngl', '--gpu-layers', '--n-gpu-layers'), 1),
    (('-sm', '--split-mode'), 1),
    (('-ts', '--tensor-split'), 1),
    (('-mg', '--main-gpu'), 1),
    (('--check-tensors',), 0),
    (('--override-kv',), 1),
    (('--lora',), 1),
    (('--lora-scaled',), 2),
    (('--control-vector',), 1),
    (('--control-vector-scaled',), 2),
    (('--control-vector-layer-range',), 2),
    (('-m', '--model'), 1),
    (('-mu', '--model-url'), 1),
    (('-hf', '-hfr', '--hf-repo'), 1),
    (('-hfd', '-hfrd', '--hf-repo-draft'), 1),
    (('-hff', '--hf-file'), 1),
    (('-hfv', '-hfrv', '--hf-repo-v'), 1),
    (('-hffv', '--hf-file-v'), 1),
    (('-hft', '--hf-token'), 1),
    (('--log-disable',), 0),
    (('--log-file',), 1),
    (('--log-colors',), 0),
    (('-v', '--verbose', '--log-verbose'), 0),
    (('-lv', '--verbosity', '--log-verbosity'), 1),
    (('--log-prefix',), 0),
    (('--log-timestamps',), 0),
    (('--samplers',), 1),
    (('-s', '--seed'), 1),
    (('--sampling-seq', '--sampler-seq'), 1),
    (('--ignore-eos',), 0),
    (('--temp',), 1),
    (('--top-k',), 1),
    (('--top-p',), 1),
    (('--min-p',), 1),
    (('--top-nsigma',), 1),
    (('--xtc-probability',), 1),
    (('--xtc-threshold',), 1),
    (('--typical',), 1),
    (('--repeat-last-n',), 1),
    (('--repeat-penalty',), 1),
    (('--presence-penalty',), 1),
    (('--frequency-penalty',), 1),
    (('--dry-multiplier',), 1),
    (('--dry-base',), 1),
    (('--dry-allowed-length',), 1),
    (('--dry-penalty-last-n',), 1),
    (('--dry-sequence-breaker',), 1),
    (('--dynatemp-range',), 1),
    (('--dynatemp-exp',), 1),
    (('--mirostat',), 1),
    (('--mirostat-lr',), 1),
    (('--mirostat-ent',), 1),
    (('-l', '--logit-bias'), 1),
    (('--grammar',), 1),
    (('--grammar-file',), 1),
    (('-j', '--json-schema'), 1),
    (('--no-display-prompt',), 0),
    (('-co', '--color'), 0),
    (('--no-context-shift',), 0),
    (('-ptc', '--print-token-count'), 1),
    (('--prompt-cache',), 1),
    (('--prompt-cache-all',), 0),
    (('--prompt-cache-ro',), 0),
    (('-r', '--reverse-prompt'), 1),
    (('-sp', '--special'), 0),
    (('-cnv', '--conversation'), 0),
    (('-no-cnv', '--no-conversation'), 0),
    (('-i', '--interactive'), 0),
    (('-if', '--interactive-first'), 0),
    (('-mli', '--multiline-input'), 0),
    (('--in-prefix-bos',), 0),
    (('--in-prefix',), 1),
    (('--in-suffix',), 1),
    (('--no-warmup',), 0),
    (('-gan', '--grp-attn-n'), 1),
    (('-gaw', '--grp-attn-w'), 1),
    (('--jinja',), 0),
    (('--reasoning-format',), 1),
    (('--chat-template',), 1),
    (('--chat-template-file',), 1),
    (('--simple-io',), 0),
]

LLAMA_SERVER = [
    (('-h', '--help', '--usage'), 0, None),
    (('--version',), 0, None),
    (('--completion-bash',), 0, None),
    (('--verbose-prompt',), 0, None),
    (('-t', '--threads'), 1, 'LLAMA_ARG_THREADS'),
    (('-tb', '--threads-batch'), 1, None),
    (('-C', '--cpu-mask'), 1, None),
    (('-Cr', '--cpu-range'), 1, None),
    (('--cpu-strict',), 1, None),
    (('--prio',), 1, None),
    (('--poll',), 1, None),
    (('-Cb', '--cpu-mask-batch'), 1, None),
    (('-Crb', '--cpu-range-batch'), 1, None),
    (('--cpu-strict-batch',), 1, None),
    (('--prio-batch',), 1, None),
    (('--poll-batch',), 1, None),
    (('-c', '--ctx-size'), 1, 'LLAMA_ARG_CTX_SIZE'),
    (('-n', '--predict', '--n-predict'), 1, 'LLAMA_ARG_N_PREDICT'),
    (('-b', '--batch-size'), 1, 'LLAMA_ARG_BATCH'),
    (('-ub', '--ubatch-size'), 1, 'LLAMA_ARG_UBATCH'),
    (('--keep',), 1, None),
    (('-fa', '--flash-attn'), 0, 'LLAMA_ARG_FLASH_ATTN'),
    (('--no-perf',), 0, 'LLAMA_ARG_NO_PERF'),
    (('-e', '--escape'), 0, None),
    (('--no-escape',), 0, None),
    (('--rope-scaling',), 1, 'LLAMA_ARG_ROPE_SCALING_TYPE'),
    (('--rope-scale',), 1, 'LLAMA_ARG_ROPE_SCALE'),
    (('--rope-freq-base',), 1, 'LLAMA_ARG_ROPE_FREQ_BASE'),
    (('--rope-freq-scale',), 1, 'LLAMA_ARG_ROPE_FREQ_SCALE'),
    (('--yarn-orig-ctx',), 1, 'LLAMA_ARG_YARN_ORIG_CTX'),
    (('--yarn-ext-factor',), 1, 'LLAMA_ARG_YARN_EXT_FACTOR'),
    (('--yarn-attn-factor',), 1, 'LLAMA_ARG_YARN_ATTN_FACTOR'),
    (('--yarn-beta-slow',), 1, 'LLAMA_ARG_YARN_BETA_SLOW'),
    (('--yarn-beta-fast',), 1, 'LLAMA_ARG_YARN_BETA_FAST'),
    (('-dkvc', '--dump-kv-cache'), 0, None),
    (('-nkvo', '--no-kv-offload'), 0, 'LLAMA_ARG_NO_KV_OFFLOAD'),
    (('-ctk', '--cache-type-k'), 1, 'LLAMA_ARG_CACHE_TYPE_K'),
    (('-ctv', '--cache-type-v'), 1, 'LLAMA_ARG_CACHE_TYPE_V'),
    (('-dt', '--defrag-thold'), 1, 'LLAMA_ARG_DEFRAG_THOLD'),
    (('-np', '--parallel'), 1, 'LLAMA_ARG_N_PARALLEL'),
    (('--mlock',), 0, 'LLAMA_ARG_MLOCK'),
    (('--no-mmap',), 0, 'LLAMA_ARG_NO_MMAP'),
    (('--numa',), 1, 'LLAMA_ARG_NUMA'),
    (('-dev', '--device'), 1, 'LLAMA_ARG_DEVICE'),
    (('--list-devices',), 0, None),
    (('-ngl', '--gpu-layers', '--n-gpu-layers'), 1, 'LLAMA_ARG_N_GPU_LAYERS'),
    (('-sm', '--split-mode'), 1, 'LLAMA_ARG_SPLIT_MODE'),
    (('-ts', '--tensor-split'), 1, 'LLAMA_ARG_TENSOR_SPLIT'),
    (('-mg', '--main-gpu'), 1, 'LLAMA_ARG_MAIN_GPU'),
    (('--check-tensors',), 0, None),
    (('--override-kv',), 1, None),
    (('--lora',), 1, None),
    (('--lora-scaled',), 2, None),
    (('--control-vector',), 1, None),
    (('--control-vector-scaled',), 2, None),
    (('--control-vector-layer-range',), 2, None),
    (('-m', '--model'), 1, 'LLAMA_ARG_MODEL'),
    (('-mu', '--model-url'), 1, 'LLAMA_ARG_MODEL_URL'),
    (('-hf', '-hfr', '--hf-repo'), 1, 'LLAMA_ARG_HF_REPO'),
    (('-hfd', '-hfrd', '--hf-repo-draft'), 1, 'LLAMA_ARG_HFD_REPO'),
    (('-hff', '--hf-file'), 1, 'LLAMA_ARG_HF_FILE'),
    (('-hfv', '-hfrv', '--hf-repo-v'), 1, 'LLAMA_ARG_HF_REPO_V'),
    (('-hffv', '--hf-file-v'), 1, 'LLAMA_ARG_HF_FILE_V'),
    (('-hft', '--hf-token'), 1, None),
    (('--log-disable',), 0, None),
    (('--log-file',), 1, None),
    (('--log-colors',), 0, 'LLAMA_LOG_COLORS'),
    (('-v', '--verbose', '--log-verbose'), 0, None),
    (('-lv', '--verbosity', '--log-verbosity'), 1, 'LLAMA_LOG_VERBOSITY'),
    (('--log-prefix',), 0, 'LLAMA_LOG_PREFIX'),
    (('--log-timestamps',), 0, 'LLAMA_LOG_TIMESTAMPS'),
    (('--samplers',), 1, None),
    (('-s', '--seed'), 1, None),
    (('--sampling-seq', '--sampler-seq'), 1, None),
    (('--ignore-eos',), 0, None),
    (('--temp',), 1, None),
    (('--top-k',), 1, None),
    (('--top-p',), 1, None),
    (('--min-p',), 1, None),
    (('--xtc-probability',), 1, None),
    (('--xtc-threshold',), 1, None),
    (('--typical',), 1, None),
    (('--repeat-last-n',), 1, None),
    (('--repeat-penalty',), 1, None),
    (('--presence-penalty',), 1, None),
    (('--frequency-penalty',), 1, None),
    (('--dry-multiplier',), 1, None),
    (('--dry-base',), 1, None),
    (('--dry-allowed-length',), 1, None),
    (('--dry-penalty-last-n',), 1, None),
    (('--dry-sequence-breaker',), 1, None),
    (('--dynatemp-range',), 1, None),
    (('--dynatemp-exp',), 1, None),
    (('--mirostat',), 1, None),
    (('--mirostat-lr',), 1, None),
    (('--mirostat-ent',), 1, None),
    (('-l', '--logit-bias'), 1, None),
    (('--grammar',), 1, None),
    (('--grammar-file',), 1, None),
    (('-j', '--json-schema'), 1, None),
    (('--no-context-shift',), 0, 'LLAMA_ARG_NO_CONTEXT_SHIFT'),
    (('-sp', '--special'), 0, None),
    (('--no-warmup',), 0, None),
    (('--spm-infill',), 0, None),
    (('--pooling',), 1, 'LLAMA_ARG_POOLING'),
    (('-cb', '--cont-batching'), 0, 'LLAMA_ARG_CONT_BATCHING'),
    (('-nocb', '--no-cont-batching'), 0, 'LLAMA_ARG_NO_CONT_BATCHING'),
    (('-a', '--alias'), 1, 'LLAMA_ARG_ALIAS'),
    (('--host',), 1, 'LLAMA_ARG_HOST'),
    (('--port',), 1, 'LLAMA_ARG_PORT'),
    (('--path',), 1, 'LLAMA_ARG_STATIC_PATH'),
    (('--no-webui',), 0, 'LLAMA_ARG_NO_WEBUI'),
    (('--embedding', '--embeddings'), 0, 'LLAMA_ARG_EMBEDDINGS'),
    (('--reranking', '--rerank'), 0, 'LLAMA_ARG_RERANKING'),
    (('--api-key',), 1, 'LLAMA_API_KEY'),
    (('--api-key-file',), 1, None),
    (('--ssl-key-file',), 1, 'LLAMA_ARG_SSL_KEY_FILE'),
    (('--ssl-cert-file',), 1, 'LLAMA_ARG_SSL_CERT_FILE'),
    (('-to', '--timeout'), 1, 'LLAMA_ARG_TIMEOUT'),
    (('--threads-http',), 1, 'LLAMA_ARG_THREADS_HTTP'),
    (('--cache-reuse',), 1, 'LLAMA_ARG_CACHE_REUSE'),
    (('--metrics',), 0, 'LLAMA_ARG_ENDPOINT_METRICS'),
    (('--slots',), 0, 'LLAMA_ARG_ENDPOINT_SLOTS'),
    (('--props',), 0, 'LLAMA_ARG_ENDPOINT_PROPS'),
    (('--no-slots',), 0, 'LLAMA_ARG_NO_ENDPOINT_SLOTS'),
    (('--slot-save-path',), 1, None),
    (('--jinja',), 0, 'LLAMA_ARG_JINJA'),
    (('--reasoning-format',), 1, 'LLAMA_ARG_THINK'),
    (('--chat-template',), 1, 'LLAMA_ARG_CHAT_TEMPLATE'),
    (('--chat-template-file',), 1, 'LLAMA_ARG_CHAT_TEMPLATE_FILE'),
    (('-sps', '--slot-prompt-similarity'), 1, None),
    (('--lora-init-without-apply',), 0, None),
    (('--draft-max', '--draft', '--draft-n'), 1, 'LLAMA_ARG_DRAFT_MAX'),
    (('--draft-min', '--draft-n-min'), 1, 'LLAMA_ARG_DRAFT_MIN'),
    (('--draft-p-min',), 1, 'LLAMA_ARG_DRAFT_P_MIN'),
    (('-cd', '--ctx-size-draft'), 1, 'LLAMA_ARG_CTX_SIZE_DRAFT'),
    (('-devd', '--device-draft'), 1, None),
    (('-ngld', '--gpu-layers-draft', '--n-gpu-layers-draft'), 1, 'LLAMA_ARG_N_GPU_LAYERS_DRAFT'),
    (('-md', '--model-draft'), 1, 'LLAMA_ARG_MODEL_DRAFT'),
    (('-mv', '--model-vocoder'), 1, None),
    (('--tts-use-guide-tokens',), 0, None),
    (('--embd-bge-small-en-default',), 0, None),
    (('--embd-e5-small-en-default',), 0, None),
    (('--embd-gte-small-default',), 0, None),
    (('--fim-qwen-1.5b-default',), 0, None),
    (('--fim-qwen-3b-default',), 0, None),
    (('--fim-qwen-7b-default',), 0, None),
]

# llama-perplexity's own options; llama-bench's and llama-quantize's (their own parsers, not arg.cpp)
LLAMA_PERPLEXITY_OWN = [
    (("--chunks",), 1), (("--perplexity", "--all-logits"), 0), (("--hellaswag",), 0), (("--hellaswag-tasks",), 1),
    (("--winogrande",), 0), (("--winogrande-tasks",), 1), (("--multiple-choice",), 0),
    (("--multiple-choice-tasks",), 1), (("--kl-divergence",), 0), (("--save-all-logits", "--kl-divergence-base"), 1),
    (("--ppl-stride",), 1), (("--ppl-output-type",), 1), (("-f", "--file"), 1), (("-c", "--ctx-size"), 1),
]
LLAMA_BENCH = [
    (("-m", "--model"), 1), (("-p", "--n-prompt"), 1), (("-n", "--n-gen"), 1), (("-pg",), 1),
    (("-b", "--batch-size"), 1), (("-ub", "--ubatch-size"), 1), (("-ctk", "--cache-type-k"), 1),
    (("-ctv", "--cache-type-v"), 1), (("-t", "--threads"), 1), (("-C", "--cpu-mask"), 1), (("--cpu-strict",), 1),
    (("--poll",), 1), (("-ngl", "--n-gpu-layers"), 1), (("-sm", "--split-mode"), 1), (("-mg", "--main-gpu"), 1),
    (("-nkvo", "--no-kv-offload"), 1), (("-fa", "--flash-attn"), 1), (("-mmp", "--mmap"), 1), (("--numa",), 1),
    (("-embd", "--embeddings"), 1), (("-ts", "--tensor-split"), 1), (("-r", "--repetitions"), 1), (("--prio",), 1),
    (("--delay",), 1), (("-o", "--output"), 1), (("-oe", "--output-err"), 1), (("-v", "--verbose"), 0),
    (("--progress",), 0),
]
LLAMA_QUANTIZE = [
    (("--allow-requantize",), 0), (("--leave-output-tensor",), 0), (("--pure",), 0), (("--imatrix",), 1),
    (("--include-weights",), 1), (("--exclude-weights",), 1), (("--output-tensor-type",), 1),
    (("--token-embedding-type",), 1), (("--keep-split",), 0), (("--override-kv",), 1),
]

# options another change brings (none left: -to/--timeout came with the server's connection settings)
ELSEWHERE: set[str] = set()


def command(verb: str):
    return typer.main.get_command(make_app([verb])).commands[verb]


def accepted(cmd, flags: tuple[str, ...], nargs: int) -> bool:
    """Every spelling is an option of `cmd` that takes `nargs` values."""
    params = {}
    for p in cmd.params:
        for f in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())):
            params[f] = p
    for f in flags:
        if f in ("-h", "--help", "--usage"):
            if f not in cmd.context_settings.get("help_option_names", ()):
                return False
            continue
        p = params.get(f)
        if p is None:
            return False
        takes = 0 if p.is_flag else p.nargs
        if takes != nargs:
            return False
    return True


def coverage(verb: str, ref: list) -> tuple[float, list]:
    cmd = command(verb)
    missing = [o[0] for o in ref if not accepted(cmd, o[0], o[1])]
    return 1 - len(missing) / len(ref), missing


def test_run_accepts_every_llama_cli_option():
    share, missing = coverage("run", LLAMA_CLI)
    assert missing == [], missing
    assert share == 1.0


def test_chat_accepts_every_llama_cli_option():
    assert coverage("chat", LLAMA_CLI)[1] == []


def test_serve_accepts_every_llama_server_option():
    share, missing = coverage("serve", LLAMA_SERVER)
    assert [m for m in missing if not set(m) & ELSEWHERE] == [], missing
    assert share >= 0.99


@pytest.mark.parametrize("verb,ref", [("perplexity", LLAMA_PERPLEXITY_OWN), ("bench", LLAMA_BENCH),
                                       ("quantize", LLAMA_QUANTIZE)])
def test_perplexity_bench_quantize_accept_their_options(verb, ref):
    assert coverage(verb, ref)[1] == []


def test_perplexity_accepts_the_common_options():
    share, missing = coverage("perplexity", LLAMA_CLI[:LLAMA_CLI.index((("--samplers",), 1))])
    assert missing == [], missing


def test_serve_reads_llama_servers_variables():
    cmd = command("serve")
    by_flag = {f: p for p in cmd.params for f in getattr(p, "opts", ())}
    # flags whose negation has a variable of its own, read by the command
    by_hand = {"LLAMA_ARG_NO_CONTEXT_SHIFT", "LLAMA_ARG_NO_ENDPOINT_SLOTS", "LLAMA_ARG_TIMEOUT"}
    for flags, _, env in LLAMA_SERVER:
        if env is None or env in by_hand:
            continue
        p = by_flag[flags[-1]]
        assert p.envvar == env, (flags, p.envvar)


def test_every_noted_option_says_why():
    for o in (*COMMON, *RUN_CHAT, *SERVER, *SAMPLING):
        if o.note is not None:
            assert len(o.note) > 10 and "\n" not in o.note, o.name


def parse(verb: str, *args: str) -> dict:
    cmd = command(verb)
    ctx = cmd.make_context(verb, list(args))
    return ctx.params


@pytest.mark.parametrize("args,name,value", [
    (("-fa",), "flash_attn", True), (("-ctk", "q8_0"), "cache_type_k", "q8_0"), (("-ctv", "q4_0"), "cache_type_v", "q4_0"),
    (("-tb", "2"), "threads_batch", 2), (("-ub", "64"), "ubatch_size", 64), (("-np", "4"), "parallel", 4),
    (("-co",), "color", True), (("-cnv",), "conversation", True), (("-mli",), "multiline_input", True),
    (("-sys", "hi"), "system_prompt", "hi"), (("-hf", "x/y"), "hf_repo", "x/y"), (("-hff", "f.gguf"), "hf_file", "f.gguf"),
    (("-dev", "none"), "device", "none"), (("-ngl", "99"), "n_gpu_layers", 99), (("-nkvo",), "no_kv_offload", True),
    (("-bf", "p.bin"), "binary_file", "p.bin"), (("-dt", "0.1"), "defrag_thold", 0.1), (("-lv", "3"), "log_verbosity", 3),
    (("-Cr", "0-1"), "cpu_range", "0-1"), (("-ptc", "5"), "print_token_count", 5), (("-gan", "4"), "grp_attn_n", 4),
    (("-sp",), "special", True), (("-if",), "interactive_first", True), (("-no-cnv",), "no_conversation", True),
])
def test_multi_letter_short_options_are_matched_whole(args, name, value):
    assert parse("run", *args)[name] == value


@pytest.mark.parametrize("args,name,value", [
    (("-np", "4"), "parallel", 4), (("-md", "d.gguf"), "model_draft", "d.gguf"), (("-cb",), "cont_batching", True),
    (("-nocb",), "no_cont_batching", True), (("-sps", "0.5"), "slot_prompt_similarity", 0.5),
    (("-to", "30"), "timeout", 30), (("-cd", "128"), "ctx_size_draft", 128), (("-ngld", "9"), "n_gpu_layers_draft", 9),
    (("-devd", "none"), "device_draft", "none"), (("-a", "smol"), "alias", "smol"), (("-ctk", "f16"), "cache_type_k", "f16"),
])
def test_server_short_options_are_matched_whole(args, name, value):
    assert parse("serve", *args)[name] == value


def test_serve_takes_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "1234")
    monkeypatch.setenv("LLAMA_ARG_N_PARALLEL", "3")
    monkeypatch.setenv("LLAMA_ARG_FLASH_ATTN", "1")
    p = parse("serve")
    assert p["ctx_size"] == 1234 and p["parallel"] == 3 and p["flash_attn"] is True
    assert parse("serve", "-c", "99")["ctx_size"] == 99  # the command line wins


@pytest.mark.parametrize("args,expect", [
    (("-xyz",), "unknown option '-xyz'"),
    (("--tmep", "1"), "unknown option '--tmep'; did you mean '--temp'?"),
    (("-fax",), "unknown option '-fax'"),
    (("-c", "-5"), "-c -5"),
    (("-t", "0"), "-t 0"),
    (("--temp", "abc"), "'--temp': 'abc' is not a valid float"),
    (("--rope-scaling", "foo"), "'foo' is not one of none, linear, yarn"),
    (("--numa", "x"), "is not one of distribute, isolate, numactl"),
    (("--mirostat", "3"), "--mirostat"),
    (("-n",), "'-n' requires an argument"),
    (("--override-kv", "a.b=wrong:1"), "type 'wrong' is not one of int, float, bool, str"),
    (("--override-kv", "nokey"), "expected KEY=TYPE:VALUE"),
    (("-C", "zz"), "-C zz: expected a non-zero hex mask"),
    (("--samplers", "xyz"), "'--samplers': 'xyz' is not a sampler (use ';'-separated names: dry, top_k"),
    (("--samplers", "top_k;bogus"), "'bogus' is not a sampler"),
    (("--sampling-seq", "kz"), "'--sampling-seq': 'z' is not a sampler letter"),
])
def test_bad_input_is_one_line(default_model, capsys, args, expect):
    code, out, err = cli(capsys, "run", "-p", "x", *args) if args != ("-n",) else cli(capsys, "run", "-p", "x", "-n")
    assert code != 0
    assert expect in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.mark.parametrize("verb", ["run", "serve", "chat"])
def test_unknown_option_is_exit_status_2(capsys, verb):
    code, _, err = cli(capsys, verb, "-zz9")
    assert code == 2 and err.startswith("error: unknown option '-zz9'") and err.count("\n") == 1


def test_notes_say_once_why_an_option_does_nothing(default_model, capsys):
    code, out, err = cli(capsys, "run", "-p", "Hi", "-n", "1", "-fa", "-ngl", "99", "-ts", "1,1", "-ctk", "q8_0",
                         "-ctv", "f16", "-dt", "0.1", "--numa", "distribute", "--no-warmup", "-tb", "2")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert "note: -ngl, -ts: llamapy runs on the CPU; ignored" in notes
    assert not any(n.startswith("note: -ctk") for n in notes)  # -ctk q8_0 is a KV cache type now
    assert not any("-ctv" in n for n in notes)  # f16 is the cache type llamapy has
    for flag in ("-fa", "-dt", "--numa", "--no-warmup", "-tb"):
        assert sum(n.startswith(f"note: {flag}:") for n in notes) == 1, flag


def test_list_devices_and_version(capsys):
    code, out, _ = cli(capsys, "run", "--list-devices")
    assert code == 0 and out.startswith("Available devices:\n  CPU: ")
    code, out, _ = cli(capsys, "serve", "--version")
    assert code == 0 and out.startswith("llamapy ")


def test_help_groups_options_as_llama_cpp(capsys):
    code, out, _ = cli(capsys, "run", "-h")
    assert code == 0
    for panel in ("Common", "Sampling", "RoPE and context", "Logging", "Run"):
        assert f" {panel} " in out, panel
    assert "-ctk" in out and "--override-kv" in out


# -- options that change what happens ---------------------------------------------------------------------

TOKENS = [1, 5, 7, 9, 11, 3, 2, 8, 40, 41, 50, 60, 70, 80, 90]


def logits(path, load=None, **kw) -> np.ndarray:
    with Engine(path, n_ctx=128, n_threads=1, load=load, **kw) as llm:
        return llm.eval_all_logits(TOKENS)


@pytest.mark.parametrize("scaling", ["linear", "yarn"])
def test_rope_overrides_equal_the_models_own_values(tmp_path, scaling):
    plain = write_random_llama(tmp_path / "plain.gguf", seed=3)
    scaled = write_random_llama(tmp_path / "scaled.gguf", seed=3, rope_scaling=(scaling, 4.0))
    want = logits(scaled)
    base = logits(plain)
    assert np.abs(want - base).max() > 1e-3  # the scaling changes the logits at all
    from llamapy.commands.option_values import load_options

    opts = parse("run", "--rope-scaling", scaling, "--rope-scale", "4", "--yarn-orig-ctx", "64")
    got = logits(plain, load_options(opts))
    np.testing.assert_array_equal(got, want)
    # and --rope-scaling none on the scaled model gives the plain one
    np.testing.assert_array_equal(logits(scaled, load_options(parse("run", "--rope-scaling", "none",
                                                                          "--yarn-ext-factor", "0"))), base)


def test_rope_scale_and_rope_freq_scale_the_last_one_wins(monkeypatch):
    """Both options set llama.cpp's one rope_freq_scale: the later on the command line wins; a command-line
    value beats a variable; of the two variables, LLAMA_ARG_ROPE_FREQ_SCALE (read after LLAMA_ARG_ROPE_SCALE)."""
    from llamapy.commands.option_values import load_options

    def freq(verb: str, *args: str) -> float:
        return load_options(parse(verb, *args)).rope_freq_scale

    assert freq("run", "--rope-scale", "4", "--rope-freq-scale", "0.5") == 0.5
    assert freq("run", "--rope-freq-scale", "0.5", "--rope-scale", "4") == 0.25
    assert freq("run", "--rope_freq_scale=0.5", "--rope-scale=8") == 0.125
    assert freq("run", "--rope-scale", "4", "--rope-freq-scale", "0.5", "--rope-scale", "2") == 0.5
    assert freq("run", "--rope-scale", "4") == 0.25 and freq("run", "--rope-freq-scale", "0.5") == 0.5
    monkeypatch.setenv("LLAMA_ARG_ROPE_SCALE", "4")
    assert freq("serve", "--rope-freq-scale", "0.5") == 0.5
    monkeypatch.setenv("LLAMA_ARG_ROPE_FREQ_SCALE", "0.5")
    assert freq("serve") == 0.5
    assert freq("serve", "--rope-scale", "8") == 0.125
    monkeypatch.delenv("LLAMA_ARG_ROPE_SCALE")
    assert freq("serve", "--rope-scale", "8") == 0.125


def test_rope_freq_base_and_override_kv(tmp_path):
    plain = write_random_llama(tmp_path / "plain.gguf", seed=4)
    other = write_random_llama(tmp_path / "base.gguf", seed=4, rope_freq_base=50000.0)
    want = logits(other)
    from llamapy.commands.option_values import load_options

    np.testing.assert_array_equal(logits(plain, load_options(parse("run", "--rope-freq-base", "50000"))), want)
    np.testing.assert_array_equal(
        logits(plain, LoadOptions(override_kv=parse_override_kv(["llama.rope.freq_base=float:50000"]))), want)
    np.testing.assert_array_equal(logits(plain, LoadOptions(rope_freq_scale=0.5)),
                                  logits(plain, LoadOptions(rope_scaling="linear", rope_freq_scale=0.5)))


def test_override_kv_types_and_refusals(tmp_path):
    path = write_random_llama(tmp_path / "m.gguf", extra_kv={"tokenizer.ggml.add_bos_token": True})
    ov = parse_override_kv(["a=int:-3", "b=float:0.5", "c=bool:true", "d=str:hello"])
    assert [ov[k].value for k in "abcd"] == [-3, 0.5, True, "hello"]
    with Engine(path, load=LoadOptions(override_kv=parse_override_kv(["llama.context_length=int:64"]))) as llm:
        assert llm.n_ctx == 64  # -c 0: the (overridden) training context
    with pytest.raises(LlamapyError, match="the model's value is a int, not a str"):
        Engine(path, load=LoadOptions(override_kv=parse_override_kv(["llama.block_count=str:2"])))
    for bad, msg in (("k=bool:yes", "true or false"), ("k=int:x", "not a valid int"), ("k=str:" + "x" * 128, "127")):
        with pytest.raises(LlamapyError, match=msg):
            parse_override_kv([bad])


def test_ubatch_no_mmap_and_mlock(tmp_path, capsys):
    path = write_random_llama(tmp_path / "m.gguf", seed=5)
    want = logits(path)
    with Engine(path, n_ctx=128, n_batch=2048, load=LoadOptions(n_ubatch=4)) as llm:
        assert llm.n_batch == 4
        np.testing.assert_array_equal(llm.eval_all_logits(TOKENS), want)
    with Engine(path, n_ctx=128, n_threads=1, load=LoadOptions(mmap=False)) as llm:
        assert isinstance(llm._weights, bytearray) and len(llm._weights) == os.path.getsize(path)
        np.testing.assert_array_equal(llm.eval_all_logits(TOKENS), want)

    def locked_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmLck:"))

    before = locked_kb()
    with Engine(path, n_ctx=128, n_threads=1, load=LoadOptions(mlock=True)) as llm:
        err = capsys.readouterr().err
        assert locked_kb() - before >= os.path.getsize(path) // 1024 or "failed to mlock" in err
        np.testing.assert_array_equal(llm.eval_all_logits(TOKENS), want)
    assert locked_kb() == before


def test_mlock_refused_is_a_warning(tmp_path):
    """With RLIMIT_MEMLOCK at 0 (and, as root, no privilege to pass it) mlock fails: a warning, and the run
    goes on."""
    d = tempfile.mkdtemp()
    try:
        os.chmod(d, 0o755)
        path = write_random_llama(os.path.join(d, "m.gguf"), seed=5)
        os.chmod(path, 0o644)
        code = ("import resource, os\n"
                "from llamapy.engine.engine import Engine\nfrom llamapy.engine.load import LoadOptions\n"
                "import llamapy.native, llamapy.tokenizer.core, llamapy.store.locate, ctypes.util\n"
                "resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))\n"
                "os.setuid(65534) if os.getuid() == 0 else None\n"
                f"e = Engine({path!r}, n_ctx=32, load=LoadOptions(mlock=True))\n"
                "print(e.eval([1, 2]).shape)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(d)
    assert out.returncode == 0, out.stderr
    assert "warning: failed to mlock" in out.stderr and "RLIMIT_MEMLOCK" in out.stderr
    assert out.stderr.count("\n") == 1


def test_logging_switches(default_model, capsys, tmp_path):
    code, out, err = cli(capsys, "run", "-p", "Hi", "-n", "2", "--temp", "0", "--log-disable")
    assert code == 0 and out.startswith("Hi") and err == ""
    code, out, err = cli(capsys, "run", "-p", "Hi", "-n", "2", "--temp", "0", "-lv", "-1")
    assert code == 0 and err == ""
    log = tmp_path / "log.txt"
    code, _, err = cli(capsys, "run", "-p", "Hi", "-n", "2", "--temp", "0", "--log-file", str(log), "--no-perf")
    assert code == 0 and "llama_model_load" in err and "llama_perf" not in err
    assert log.read_text().splitlines() == err.splitlines()


def test_binary_file_prompt_keeps_its_newline(default_model, capsys, tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"The capital of France is\n")
    _, out_f, _ = cli(capsys, "run", "-f", str(p), "-n", "1", "--temp", "0")
    _, out_bf, _ = cli(capsys, "run", "-bf", str(p), "-n", "1", "--temp", "0")
    assert out_f.startswith("The capital of France is") and not out_f.startswith("The capital of France is\n")
    assert out_bf.startswith("The capital of France is\n")


def test_cpu_affinity_and_priority(default_model):
    from llamapy.commands.system import parse_cpu_mask, parse_cpu_range

    assert parse_cpu_mask("0x5") == {0, 2} and parse_cpu_mask("ff") == set(range(8))
    assert parse_cpu_range("1-3") == {1, 2, 3}
    with pytest.raises(LlamapyError):
        parse_cpu_range("3-1")
    code = ("import os, sys\nfrom llamapy.cli import main\n"
            "try:\n    main(['run', '-p', 'Hi', '-n', '1', '-C', '0x1', '--prio', '-1'])\n"
            "except SystemExit as e:\n    assert not e.code\n"
            "print(sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[0] 5")


@pytest.mark.parametrize("verb,ref", [("run", LLAMA_CLI), ("serve", LLAMA_SERVER)])
def test_every_multi_letter_short_spelling_sets_its_own_option(verb, ref):
    """`-xy V` sets the option whose spellings include -xy, never a one-letter option with the rest glued on."""
    cmd = command(verb)
    owner = {f: p.name for p in cmd.params for f in getattr(p, "opts", ())}
    checked = 0
    for flags, nargs, *_ in ref:
        for f in flags:
            if f.startswith("--") or len(f) <= 2 or f in ELSEWHERE or f not in owner:
                continue
            value = {0: [], 1: ["7"], 2: ["7", "8"]}[nargs]
            name = owner[f]
            if name in ("list_devices", "version"):
                continue  # they act at once (print and exit)
            if f in ("-sm",):
                value = ["row"]
            params = cmd.make_context(verb, [f, *value]).params
            default = cmd.make_context(verb, []).params[name]
            assert params[name] != default, f
            checked += 1
    assert checked > 30


@pytest.mark.parametrize("wtype", [T.F32, T.F16, T.Q4_0, T.Q4_K], ids=lambda t: t.name)
def test_check_tensors_finds_invalid_values(tmp_path, wtype):
    from llamapy.ggufio.reader import GGUFReader

    path = write_random_llama(tmp_path / "m.gguf", wtype=wtype, n_embd=256, n_ff=256, seed=6)
    with Engine(path, n_ctx=32, load=LoadOptions(check_tensors=True)):
        pass  # a sound model loads
    with GGUFReader(path) as r:
        t = r.tensors["blk.1.ffn_up.weight"]
        offset = t.offset
    # an infinite value in the first element (F32/F16) or the first block's fp16 scale (d at byte 0)
    bad = {T.F32: np.float32(np.inf).tobytes(), T.F16: np.float16(np.inf).tobytes()}.get(
        wtype, np.float16(np.inf).tobytes())
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bad)
    with Engine(path, n_ctx=32):
        pass  # without the check it loads
    with pytest.raises(LlamapyError, match="tensor 'blk.1.ffn_up.weight' has invalid data"):
        Engine(path, n_ctx=32, load=LoadOptions(check_tensors=True))
