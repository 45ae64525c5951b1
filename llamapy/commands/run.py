"""`llamapy run`: llama-cli's text completion (-m -p -n ...); a thin parser over llamapy.run.run()."""
from __future__ import annotations

import sys
from typing import Optional

import typer

from .options import COMMON, RUN_CHAT, SAMPLING, LlamaCommand, with_options
from .options_draft import SPECULATIVE

TABLES = (COMMON, RUN_CHAT, SAMPLING, SPECULATIVE)
HELP = {"help_option_names": ["-h", "--help", "--usage"]}


class _Tee:
    """Log lines to stderr (unless disabled) and to the --log-file."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def log_stream(opts: dict):
    """Where log lines go: --log-disable / -lv below 0 silence them, --log-file copies them to a file."""
    streams = [] if opts["log_disable"] or opts["log_verbosity"] < 0 else [sys.stderr]
    if opts["log_file"]:
        try:
            streams.append(open(opts["log_file"], "a", encoding="utf-8", errors="replace"))
        except OSError as e:
            from ..errors import LlamapyError

            raise LlamapyError(f"--log-file {opts['log_file']}: can't open: {e.strerror}") from None
    return _Tee(*streams)


def prompt_of(prompt: str | None, opts: dict) -> str | None:
    """-p, or -bf's file read as it is."""
    if opts["binary_file"] is None:
        return prompt
    try:
        with open(opts["binary_file"], "rb") as f:
            return f.read().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        from ..errors import LlamapyError

        raise LlamapyError(f"failed to open file '{opts['binary_file']}': {e.strerror}") from None


def session_options(opts: dict) -> dict:
    """The options as the keywords of llamapy.run.run and llamapy.chat.interactive.start (notes printed,
    process settings applied)."""
    from ..grammar.options import schema_option
    from .option_values import apply_process_options, load_options, resolve_hf_model, sampler_params
    from .options import announce
    from .options_draft import draft_options

    announce(opts, *TABLES)
    apply_process_options(opts)
    resolve_hf_model(opts)
    return dict(
        model=opts["model"], file=opts["file"], n_predict=opts["n_predict"], ctx_size=opts["ctx_size"],
        batch_size=opts["batch_size"], threads=opts["threads"], keep=opts["keep"], ctx_shift=opts["context_shift"],
        escape=opts["escape"] and not opts["no_escape"], display_prompt=not opts["no_display_prompt"],
        verbose_prompt=opts["verbose_prompt"], color=opts["color"], special=opts["special"],
        sampling=sampler_params(opts), load=load_options(opts),
        grammar=opts["grammar"], grammar_file=opts["grammar_file"],
        json_schema=schema_option(opts["json_schema"], opts["json_schema_file"]),
        **draft_options(opts),
    )


def interactive_options(opts: dict) -> dict:
    """The RUN_CHAT options only the interactive session takes."""
    return dict(
        system_prompt=opts["system_prompt"], reverse_prompts=list(opts["reverse_prompt"] or []),
        in_prefix=opts["in_prefix"], in_suffix=opts["in_suffix"], in_prefix_bos=opts["in_prefix_bos"],
        chat_template=opts["chat_template"], chat_template_file=opts["chat_template_file"],
        multiline_input=opts["multiline_input"],
    )


def register(app: typer.Typer) -> None:
    @app.command("run", cls=LlamaCommand, context_settings=HELP)
    @with_options(*TABLES)
    def run(
        prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Prompt to continue.", rich_help_panel="Run"),
        # interactive mode (llamapy.chat.interactive): any of these hands the run to llama-cli's interactive loop
        interactive: bool = typer.Option(False, "-i", "--interactive", help="Chat: your turn after reverse prompts.",
                                         rich_help_panel="Run"),
        interactive_first: bool = typer.Option(False, "-if", "--interactive-first", help="-i, and you type first.",
                                               rich_help_panel="Run"),
        instruct: bool = typer.Option(False, "-ins", "--instruct", help="Alpaca instruction mode.",
                                      rich_help_panel="Run"),
        conversation: bool = typer.Option(False, "-cnv", "--conversation", help="Chat through the chat template.",
                                          rich_help_panel="Run"),
        no_conversation: bool = typer.Option(False, "-no-cnv", "--no-conversation", help="No conversation mode.",
                                             rich_help_panel="Run"),
        **opts,
    ):
        """Generate text from a prompt, as llama-cli does (-i, -r, -ins, -cnv: interactive)."""
        conversation = conversation and not no_conversation
        prompt = prompt_of(prompt, opts)
        if interactive or interactive_first or instruct or conversation or opts["reverse_prompt"]:
            from ..chat.interactive_start import start

            if opts["prompt_cache"]:
                print("note: --prompt-cache: not supported in interactive mode yet; ignored", file=sys.stderr)

            raise typer.Exit(start(
                prompt=prompt, interactive=interactive, interactive_first=interactive_first, instruct=instruct,
                conversation=conversation, **interactive_options(opts), **session_options(opts), log=log_stream(opts),
            ))
        from ..run import run as run_fn

        run_fn(prompt=prompt, perf=not opts["no_perf"], err=log_stream(opts), prompt_cache=opts["prompt_cache"],
               prompt_cache_all=opts["prompt_cache_all"], prompt_cache_ro=opts["prompt_cache_ro"],
               **session_options(opts))
