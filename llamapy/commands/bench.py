"""`llamapy bench`: llama-bench's pp/tg table for a model."""
from __future__ import annotations

from typing import Optional

import typer

from .options import NOT_YET, ON_CPU, LlamaCommand, Opt, with_options

_B = "llama-bench (accepted)"


def _b(name, flags, help, note, type=Optional[str]) -> Opt:
    return Opt(name, flags, help, type, False if type is bool else None, panel=_B, note=note)


# llama-bench's options that llamapy's bench takes without acting on them (one value each, not lists)
BENCH: list[Opt] = [
    Opt("pg", ("-pg",), "A combined test <pp,tg>: a prompt of pp, then tg generated after it (repeatable).",
        Optional[list[str]], None, panel=_B),
    Opt("cache_type_k", ("-ctk", "--cache-type-k"), "K cache types, a comma list (f16).", str, "f16", panel=_B),
    Opt("cache_type_v", ("-ctv", "--cache-type-v"), "V cache types, a comma list (f16).", str, "f16", panel=_B),
    Opt("cpu_mask", ("-C", "--cpu-mask"), "CPU affinity mask in hex.", Optional[str], None, panel=_B),
    _b("cpu_strict", ("--cpu-strict",), "Strict CPU placement.", "the threads share the affinity of -C"),
    _b("poll", ("--poll",), "Polling level.", "llamapy's pool spins briefly, then sleeps; ignored"),
    _b("split_mode", ("-sm", "--split-mode"), "Split mode.", ON_CPU),
    _b("main_gpu", ("-mg", "--main-gpu"), "Main GPU.", ON_CPU),
    _b("no_kv_offload", ("-nkvo", "--no-kv-offload"), "No KV offload <0|1>.", ON_CPU),
    _b("flash_attn", ("-fa", "--flash-attn"), "Flash attention <0|1>.",
       "llamapy's CPU attention is one fused pass already; ignored"),
    _b("mmap", ("-mmp", "--mmap"), "Map the model <0|1>.", "the model is always mapped in bench; ignored"),
    _b("numa", ("--numa",), "NUMA placement.", "llamapy doesn't place threads or memory per NUMA node; ignored"),
    _b("embeddings", ("-embd", "--embeddings"), "Embeddings <0|1>.", NOT_YET),
    _b("tensor_split", ("-ts", "--tensor-split"), "Tensor split.", ON_CPU),
    Opt("prio", ("--prio",), "Process priority: 0 normal, 1 medium, 2 high, 3 realtime.", int, 0, min=-1, max=3,
        panel=_B),
    _b("delay", ("--delay",), "Seconds between tests.", NOT_YET),
    _b("output_err", ("-oe", "--output-err"), "Second output format on stderr.", NOT_YET),
    _b("progress", ("--progress",), "Progress lines.", NOT_YET, bool),
]


def register(app: typer.Typer) -> None:
    @app.command("bench", cls=LlamaCommand, context_settings={"help_option_names": ["-h", "--help"]})
    @with_options(BENCH)
    def bench(
        model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF model (default: the default model)."),
        n_prompt: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens of the pp test (0: skip it)."),
        n_gen: int = typer.Option(128, "-n", "--n-gen", help="Tokens of the tg test (0: skip it)."),
        threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
        reps: int = typer.Option(5, "-r", "--repetitions", help="Timed runs of each test."),
        output: str = typer.Option("md", "-o", "--output", help="md, json or jsonl."),
        batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Prompt batch size."),
        ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch size."),
        n_gpu_layers: Optional[int] = typer.Option(
            None, "-ngl", "--n-gpu-layers", help="Accepted; llamapy runs on the CPU."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Tracebacks on errors."),
        **opts,
    ):
        """Prompt-processing and generation speed, as llama-bench reports it."""
        import sys

        from ..bench import bench as bench_fn
        from ..bench import parse_pg
        from .option_values import apply_process_options
        from .options import announce

        if n_gpu_layers:
            print(f"llamapy runs on the CPU: -ngl {n_gpu_layers} is ignored", file=sys.stderr)
        announce(opts, BENCH)
        apply_process_options(opts)
        bench_fn(model=model, n_prompt=n_prompt, n_gen=n_gen, threads=threads, reps=reps, output=output,
                 n_batch=batch_size, n_ubatch=ubatch_size, type_k=opts["cache_type_k"],
                 type_v=opts["cache_type_v"], pg=parse_pg(" ".join(opts["pg"] or ())))
