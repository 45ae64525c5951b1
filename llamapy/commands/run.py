"""`llamapy run`: llama-cli's text completion (-m -p -n ...); a thin parser over llamapy.run.run()."""
from __future__ import annotations

from typing import Optional

import typer

from .options import RUN_CHAT, SAMPLING, with_options


def session_options(opts: dict) -> dict:
    """The RUN_CHAT options as the keywords of llamapy.run.run and llamapy.chat.interactive.start."""
    from .options import sampler_params

    return dict(
        model=opts["model"], file=opts["file"], n_predict=opts["n_predict"], ctx_size=opts["ctx_size"],
        batch_size=opts["batch_size"], threads=opts["threads"], keep=opts["keep"], ctx_shift=opts["context_shift"],
        escape=opts["escape"] and not opts["no_escape"], display_prompt=not opts["no_display_prompt"],
        verbose_prompt=opts["verbose_prompt"], color=opts["color"], special=opts["special"],
        n_gpu_layers=opts["n_gpu_layers"], sampling=sampler_params(opts),
        grammar=opts["grammar"], grammar_file=opts["grammar_file"], json_schema=opts["json_schema"],
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
    @app.command("run", context_settings={"help_option_names": ["-h", "--help"]})
    @with_options(RUN_CHAT, SAMPLING)
    def run(
        prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Prompt to continue."),
        # interactive mode (llamapy.chat.interactive): any of these hands the run to llama-cli's interactive loop
        interactive: bool = typer.Option(False, "-i", "--interactive", help="Chat: your turn after reverse prompts."),
        interactive_first: bool = typer.Option(False, "-if", "--interactive-first", help="-i, and you type first."),
        instruct: bool = typer.Option(False, "-ins", "--instruct", help="Alpaca instruction mode."),
        conversation: bool = typer.Option(False, "-cnv", "--conversation", help="Chat through the chat template."),
        no_conversation: bool = typer.Option(False, "-no-cnv", "--no-conversation", help="No conversation mode."),
        **opts,
    ):
        """Generate text from a prompt, as llama-cli does (-i, -r, -ins, -cnv: interactive)."""
        conversation = conversation and not no_conversation
        if interactive or interactive_first or instruct or conversation or opts["reverse_prompt"]:
            from ..chat.interactive import start

            raise typer.Exit(start(
                prompt=prompt, interactive=interactive, interactive_first=interactive_first, instruct=instruct,
                conversation=conversation, **interactive_options(opts), **session_options(opts),
            ))
        from ..run import run as run_fn

        run_fn(prompt=prompt, **session_options(opts))
