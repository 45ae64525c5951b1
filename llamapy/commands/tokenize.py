"""`llamapy tokenize`: the reference's examples/tokenize, same options and same output bytes."""
from __future__ import annotations

import sys

import typer

from ..util.escapes import process_escapes


def tokenize_report(*, model: str | None, prompt: bytes, ids: bool = False, no_bos: bool = False,
                    no_escape: bool = False, no_parse_special: bool = False, show_count: bool = False) -> bytes:
    """What the reference's tokenize example prints for this prompt, as bytes."""
    from ..store.locate import resolve_model
    from ..tokenizer.core import Tokenizer

    tok = Tokenizer.from_gguf(resolve_model(model))
    if not no_escape:
        prompt = process_escapes(prompt)
    add_bos = tok.add_bos and not no_bos
    tokens = tok.encode(prompt.decode("utf-8", "surrogateescape"), add_special=add_bos,
                        parse_special=not no_parse_special)
    out = []
    if ids:
        out.append(("[" + ", ".join(map(str, tokens)) + "]\n").encode())
    else:
        for t in tokens:
            piece = tok.token_to_piece(t, special=True).split(b"\0", 1)[0]  # printed with %s
            out.append(b"%6d -> '" % t + piece + b"'\n")
    if show_count:
        out.append(b"Total number of tokens: %d\n" % len(tokens))
    return b"".join(out)


def register(app: typer.Typer) -> None:
    @app.command("tokenize")
    def tokenize(
        model: str | None = typer.Option(None, "-m", "--model", help="GGUF model (default: the default model)."),
        prompt: str | None = typer.Option(None, "-p", "--prompt", help="Read the prompt from the argument."),
        file: str | None = typer.Option(None, "-f", "--file", help="Read the prompt from a file."),
        stdin: bool = typer.Option(False, "--stdin", help="Read the prompt from standard input."),
        ids: bool = typer.Option(False, "--ids", help="Print only the ids, as a Python-style list [1, 2, 3]."),
        no_bos: bool = typer.Option(False, "--no-bos", help="Never add a BOS token, even if the model wants one."),
        no_escape: bool = typer.Option(False, "--no-escape", help="Do not process escapes (\\n, \\t, ...)."),
        no_parse_special: bool = typer.Option(False, "--no-parse-special", help="Do not parse control tokens."),
        log_disable: bool = typer.Option(False, "--log-disable", help="Accepted for compatibility (no logs)."),
        show_count: bool = typer.Option(False, "--show-count", help="Print the total number of tokens."),
    ):
        """Tokenize a prompt with a model's vocabulary and print the tokens (like llama.cpp's llama-tokenize)."""
        import os

        from ..errors import LlamapyError

        given = (prompt is not None) + (file is not None) + stdin
        if given > 1:
            raise LlamapyError("--stdin, --file and --prompt are mutually exclusive")
        if given == 0:
            raise LlamapyError("must specify one of: --stdin, --file or --prompt")
        if prompt is not None:
            text = os.fsencode(prompt)
        elif file is not None:
            try:
                with open(file, "rb") as f:
                    text = f.read()
            except OSError as e:
                raise LlamapyError(f"could not open file '{file}' for reading: {e.strerror}") from None
        else:
            text = None
        if text is None:
            from ..store.locate import resolve_model

            model = resolve_model(model)  # a missing model fails before stdin is read, as in the reference
            text = sys.stdin.buffer.read()
        out = tokenize_report(model=model, prompt=text, ids=ids, no_bos=no_bos, no_escape=no_escape,
                              no_parse_special=no_parse_special, show_count=show_count)
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
