"""The `llamapy` command: a thin Typer app; each verb lives in llamapy/commands/<verb>.py.

Each command module defines `register(app)`; heavy imports happen inside the commands, so
`llamapy --help` stays instant.
"""
from __future__ import annotations

import importlib
import sys

import typer

from . import __version__
from .errors import LlamapyError

COMMANDS = ["info", "quantize", "tokenize", "run", "chat", "perplexity", "bench", "convert", "serve"]

app = typer.Typer(
    name="llamapy",
    help="The llama.cpp toolchain in Python: convert, quantize, run, chat, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        from .native import kernels_active

        typer.echo(f"llamapy {__version__} (kernels: {kernels_active()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Version and kernels."),
):
    pass


for _name in COMMANDS:
    try:
        _mod = importlib.import_module(f".commands.{_name}", __package__)
    except ModuleNotFoundError as _e:
        if _e.name != f"{__package__}.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    verbose = "--verbose" in (argv if argv is not None else sys.argv)
    try:
        app(args=argv, prog_name="llamapy")
    except LlamapyError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
