from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("pull")
    def pull(
        ref: str = typer.Argument(..., metavar="hf.co/USER/REPO[:QUANT]",
                                  help="A GGUF repository: hf.co/..., huggingface.co/... or modelscope.cn/..."),
    ):
        """Download a GGUF from Hugging Face or ModelScope into the local store.

        Resumable and checked against the hub's sha256; then use it with -m hf.co/USER/REPO:QUANT.
        HF_ENDPOINT names a mirror (e.g. https://hf-mirror.com); HF_TOKEN opens gated models."""
        from rich.console import Console

        from ..store.pull import pull as pull_model
        from ._storeui import byte_progress, printable

        err = Console(stderr=True, highlight=False)
        with byte_progress(err, "pulling") as progress:
            name = pull_model(ref, progress=progress, log=lambda m: err.print(printable(m), markup=False))
        typer.echo(f"pulled {name}")
