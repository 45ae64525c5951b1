from __future__ import annotations

from typing import Optional

import typer


def _PipeConsole():
    """A Rich console whose closed output pipe (`| head`) ends the command quietly with status 0 (Rich's
    own handling exits with status 1)."""
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return PipeConsole()


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        file: Optional[str] = typer.Argument(None, help="GGUF file (default: the default model)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
        no_tensors: bool = typer.Option(False, "--no-tensors", help="Leave out the tensor table."),
        system: bool = typer.Option(False, "--system", help="Show the build and the active kernels."),
    ):
        """Show a GGUF file's metadata, tensors and totals."""
        from ..info import print_info, summarize, system_info, to_json
        from ..store.locate import resolve_model

        if system:
            si = system_info()
            if json_out:
                typer.echo(to_json(si))
            else:
                for k, v in si.items():
                    typer.echo(f"{k}: {v}")
            if file is None:
                return
        d = summarize(resolve_model(file), with_tensors=not no_tensors)
        if json_out:
            typer.echo(to_json(d))
        else:
            print_info(d, _PipeConsole())
