"""The `llamapy` command: a thin Typer app; each verb lives in llamapy/commands/<verb>.py.

Each command module defines `register(app)`; heavy imports happen inside the commands, and only the
verb being run is registered, so `llamapy --help` is quick and a run reaches its first token sooner.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from . import __version__
from .errors import LlamapyError
from .util.safe_text import printable

ERROR_LIMIT = 1000  # characters of an error line: a name from a file can be a megabyte long

COMMANDS = ["info", "quantize", "tokenize", "run", "chat", "perplexity", "bench", "convert", "convert-lora",
            "export-lora", "serve", "create", "list", "show", "rm", "cp", "pull", "ps"]  # module: '-' as '_'


def _version(value: bool):
    if value:
        from .native import kernels_active

        typer.echo(f"llamapy {__version__} (kernels: {kernels_active()})")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Version and kernels."),
):
    pass


def make_app(verbs: list[str] = COMMANDS) -> typer.Typer:
    """The Typer app with the given verbs registered."""
    app = typer.Typer(
        name="llamapy",
        help="The llama.cpp toolchain in Python: convert, quantize, run, chat, serve.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for name in verbs:
        module = name.replace("-", "_")
        try:
            mod = importlib.import_module(f".commands.{module}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.commands.{module}":
                raise
            continue
        mod.register(app)
    return app


def __getattr__(name: str):
    if name == "app":   # `llamapy.cli.app`: every verb
        return make_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _verbs_for(args: list[str]) -> list[str]:
    """Only the verb being run is set up (some build their help text, which costs time to the first
    token); the top-level help, an unknown verb or none at all get every verb."""
    return [args[0]] if args and args[0] in COMMANDS else COMMANDS


def _run(args: list[str]) -> None:
    verbose = "--verbose" in args
    try:
        if args[:1] == ["run"] and len(args) > 1 and not args[1].startswith("-"):  # `run NAME`: as `ollama run`
            from .chat.ollama_repl import run_cli

            sys.exit(run_cli(args[1:]))
        make_app(_verbs_for(args))(args=args, prog_name="llamapy")
        sys.stdout.flush()  # a closed pipe shows here, while the handlers below still apply
    except LlamapyError as e:
        if verbose:
            raise
        print(f"error: {printable(str(e), ERROR_LIMIT)}", file=sys.stderr)
        sys.exit(1)
    except OverflowError as e:  # a number too large for the C core (-t, -c, --top-k ... beyond int32)
        if verbose:
            raise
        print(f"error: a number on the command line is out of range ({printable(str(e), 200)})", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        _quiet_closed_stdout()
        sys.exit(0)
    except SystemExit as e:
        # click ends a command whose output pipe closed (EPIPE) with status 1, its streams wrapped to stay
        # quiet; a closed pipe is the reader being done (`| head`): status 0, as for every other verb
        if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _quiet_closed_stdout()
            sys.exit(0)
        raise


def _quiet_closed_stdout() -> None:
    """The reader of stdout is gone (`| head`): point stdout at /dev/null so the flush at exit can't fail
    again (what Python's documentation recommends for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _end_on_signal(signum, frame) -> None:
    """SIGTERM and SIGHUP end the command as SIGINT does: through an exception in the main thread, so
    partial files are removed and files closed on the way out (exit status 128 + the signal)."""
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    import signal

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _end_on_signal)


def _exit_now(code) -> None:
    """Exit without tearing the interpreter down: the command is done and its files are closed, and freeing
    every object of the vocabulary and the modules one by one takes ~70 ms, the last thing a user waits for."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code or 0)


def main(argv: list[str] | None = None) -> None:
    """The `llamapy` console script (argv None: sys.argv, and the process exits at the end); with argv, a
    call from Python that ends in SystemExit as usual."""
    if argv is not None:
        _run(list(argv))
        return
    install_signal_handlers()
    try:
        _run(sys.argv[1:])
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)
