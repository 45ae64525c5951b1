"""`llamapy bench`: llama-bench's pp/tg table for a model."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
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
        verbose: bool = typer.Option(False, "--verbose", help="Tracebacks on errors."),
    ):
        """Prompt-processing and generation speed, as llama-bench reports it."""
        import sys

        from ..bench import bench as bench_fn

        if n_gpu_layers:
            print(f"llamapy runs on the CPU: -ngl {n_gpu_layers} is ignored", file=sys.stderr)
        bench_fn(model=model, n_prompt=n_prompt, n_gen=n_gen, threads=threads, reps=reps, output=output,
                 n_batch=batch_size, n_ubatch=ubatch_size)
