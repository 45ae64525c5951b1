from __future__ import annotations

import os
from typing import Optional

import typer

from .options import NOT_YET, LlamaCommand, Opt, with_options

USAGE = "llamapy quantize [options] IN.gguf [OUT.gguf] TYPE [NTHREADS]"


def _types_table() -> str:
    from ..quantize import options_help

    return options_help()


def _parse_positionals(args: list[str]):
    """IN [OUT] TYPE [NTHREADS], read as the reference reads them: a TYPE right after IN means no OUT."""
    from ..errors import LlamapyError
    from ..quantize import QUANT_OPTIONS, parse_ftype

    valid = ", ".join(o.name for o in QUANT_OPTIONS)
    if len(args) < 2:
        raise LlamapyError(f"missing arguments; usage: {USAGE}")
    inp = args[0]
    opt = parse_ftype(args[1])
    if opt is not None:
        name = opt.name
        out = os.path.join(os.path.dirname(inp), f"ggml-model-{name}.gguf")
        rest = args[2:]
    else:
        out = args[1]
        if len(args) < 3:
            raise LlamapyError(f"'{args[1]}' is not a quantization type and no type follows it (valid: {valid})")
        opt = parse_ftype(args[2])
        if opt is None:
            raise LlamapyError(f"unknown quantization type '{args[2]}' (valid: {valid}; or their numbers, "
                               "see --help)")
        rest = args[3:]
    n_threads = None
    if rest:
        try:
            n_threads = int(rest[0])
        except ValueError:
            raise LlamapyError(f"invalid thread count '{rest[0]}'") from None
        if len(rest) > 1:
            raise LlamapyError(f"unexpected argument '{rest[1]}'; usage: {USAGE}")
    return inp, out, opt, n_threads


_Q = "llama-quantize (accepted, not supported yet)"

# llama-quantize's options llamapy takes without acting on them yet
QUANTIZE_NOTED: list[Opt] = [
    Opt("imatrix", ("--imatrix",), "Importance matrix file.", Optional[str], None, panel=_Q, note=NOT_YET),
    Opt("include_weights", ("--include-weights",), "Tensors the importance matrix applies to (repeatable).",
        Optional[list[str]], None, panel=_Q, note=NOT_YET),
    Opt("exclude_weights", ("--exclude-weights",), "Tensors it doesn't apply to (repeatable).", Optional[list[str]],
        None, panel=_Q, note=NOT_YET),
    Opt("keep_split", ("--keep-split",), "Write the same shards as the input.", bool, False, panel=_Q, note=NOT_YET),
    Opt("override_kv", ("--override-kv",), "KEY=TYPE:VALUE written into the output's metadata (repeatable).",
        Optional[list[str]], None, panel=_Q, note=NOT_YET),
]


def register(app: typer.Typer) -> None:
    @app.command(
        "quantize",
        help=("Quantize a GGUF model to another type, with llama.cpp's per-tensor mixes and bytes.\n\n"
              f"Usage: {USAGE}\n\n"
              "OUT defaults to ggml-model-TYPE.gguf beside IN. TYPE is a name (any case) or its number "
              "(bits per weight of the main type; mixes keep output.weight in Q6_K):\n\n"
              "\b\n" + _types_table()),
        context_settings={"allow_interspersed_args": True},
        cls=LlamaCommand,
    )
    @with_options(QUANTIZE_NOTED)
    def quantize(
        args: list[str] = typer.Argument(..., metavar="IN.gguf [OUT.gguf] TYPE [NTHREADS]",  # noqa: B008
                                         show_default=False),
        allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                              help="Allow requantizing tensors that are already quantized."),
        leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor",
                                                 help="Leave output.weight un(re)quantized."),
        pure: bool = typer.Option(False, "--pure", help="No k-quant mix: every tensor in TYPE."),
        output_tensor_type: str | None = typer.Option(None, "--output-tensor-type", metavar="GGML_TYPE",
                                                         help="Type of output.weight (e.g. q8_0, f16)."),
        token_embedding_type: str | None = typer.Option(None, "--token-embedding-type", metavar="GGML_TYPE",
                                                           help="Type of token_embd.weight."),
        verbose: bool = typer.Option(False, "--verbose", help="Tracebacks on errors."),
        **noted,
    ):
        import time

        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from ..quantize import default_threads, parse_tensor_type, quantize_file
        from ..util.safe_text import markup_safe, printable
        from ..util.threads import sane_threads
        from .options import announce

        announce(noted, QUANTIZE_NOTED)
        inp, out, opt, n_threads = _parse_positionals(args)
        n_threads = sane_threads(n_threads) if n_threads and n_threads > 0 else default_threads()
        opts = {
            "allow_requantize": allow_requantize,
            "quantize_output_tensor": not leave_output_tensor,
            "pure": pure,
            "only_copy": opt.name == "COPY",
            "output_tensor_type": parse_tensor_type(output_tensor_type) if output_tensor_type else None,
            "token_embedding_type": parse_tensor_type(token_embedding_type) if token_embedding_type else None,
        }
        err = Console(stderr=True)
        err.print(f"quantizing '{markup_safe(inp)}' to '{markup_safe(out)}' as {opt.name} using {n_threads} threads",
                  highlight=False)
        t0 = time.time()
        with Progress(TextColumn("{task.description:<32}"), BarColumn(), TaskProgressColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
            task = bar.add_task("reading", total=None)

            def progress(name: str, done: int, total: int):
                bar.update(task, description=markup_safe(name, 32), advance=done, total=total)

            r = quantize_file(inp, out, opt.ftype, n_threads, progress=progress, **opts)
        mib = 1024 * 1024
        typer.echo(f"model size = {r.size_in / mib:10.2f} MiB")
        typer.echo(f"quant size = {r.size_out / mib:10.2f} MiB ({r.n_quantized} of {r.n_tensors} tensors "
                   f"converted, {time.time() - t0:.1f} s)")
        typer.echo(f"wrote {printable(out)}")
