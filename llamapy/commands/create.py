from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("create")
    def create(
        name: str = typer.Argument(..., help="The model's name, e.g. llama3-zh-inst or user/model:tag."),
        file: str = typer.Option("Modelfile", "-f", "--file", help="The Modelfile (default: ./Modelfile)."),
        quantize: str | None = typer.Option(None, "-q", "--quantize", metavar="TYPE",
                                            help="Quantize the FROM model (F16/F32) to TYPE, e.g. Q4_K_M."),
        verbose: bool = typer.Option(False, "--verbose", help="Tracebacks on errors."),
    ):
        """Create a model in the local store from a Modelfile (as `ollama create`)."""
        from rich.console import Console

        from ..store.modelfile import parse_file
        from ..store.models import create_model
        from ._storeui import byte_progress

        err = Console(stderr=True, highlight=False)
        mf = parse_file(file)
        with byte_progress(err, "storing") as progress:
            stored = create_model(name, mf, quantize=quantize, log=lambda m: err.print(m, markup=False),
                                  progress=progress)
        typer.echo(f"created {stored}")
