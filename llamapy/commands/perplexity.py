"""`llamapy perplexity`: llama-perplexity's PPL of a text file (-f), chunks of -c tokens."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("perplexity", context_settings={"help_option_names": ["-h", "--help"]})
    def perplexity(
        model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF model (default: the default model)."),
        file: str = typer.Option(..., "-f", "--file", help="Text file to score."),
        ctx_size: int = typer.Option(512, "-c", "--ctx-size", "--ctx_size", help="Tokens per chunk."),
        batch_size: int = typer.Option(
            2048, "-b", "--batch-size", "--batch_size", help="Tokens per batch (b / c chunks at once)."),
        chunks: int = typer.Option(-1, "--chunks", help="Chunks to score (-1: all)."),
        threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
        n_gpu_layers: Optional[int] = typer.Option(
            None, "-ngl", "--gpu-layers", "--n-gpu-layers", help="Accepted; llamapy runs on the CPU."),
        verbose: bool = typer.Option(False, "--verbose", help="Tracebacks on errors."),
    ):
        """Perplexity of a text, the reference's way (second half of each chunk scored)."""
        from ..perplexity import run_perplexity

        run_perplexity(model=model, file=file, ctx_size=ctx_size, batch_size=batch_size, chunks=chunks,
                       threads=threads, n_gpu_layers=n_gpu_layers)
