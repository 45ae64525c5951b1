"""`llamapy chat`: an interactive chat through the model's chat template (llama-cli -cnv)."""

from __future__ import annotations

import typer

from .options import LlamaCommand, with_options
from .run import HELP, TABLES


def register(app: typer.Typer) -> None:
    @app.command("chat", cls=LlamaCommand, context_settings=HELP)
    @with_options(*TABLES)
    def chat(
        prompt: str | None = typer.Option(
            None, "-p", "--prompt", help="System message (or first message with -sys).", rich_help_panel="Run"
        ),
        no_cnv: bool = typer.Option(
            False, "-no-cnv", "--no-conversation", help="Plain interactive completion, no chat template."
        ),
        cnv: bool = typer.Option(True, "-cnv", "--conversation", help="Conversation mode (the default here)."),
        interactive: bool = typer.Option(True, "-i", "--interactive", hidden=True),
        interactive_first: bool = typer.Option(False, "-if", "--interactive-first", hidden=True),
        **opts,
    ):
        """Chat with a model in the terminal, through its chat template (llama-cli -cnv).

        Ctrl-C interrupts the answer; Ctrl-C at the prompt or Ctrl-D ends the session."""
        from ..chat.interactive_start import start
        from .run import interactive_options, log_stream, prompt_of, session_options

        conversation = cnv and not no_cnv
        raise typer.Exit(start(
            prompt=prompt_of(prompt, opts), interactive=True, interactive_first=interactive_first or not conversation,
            conversation=conversation,
            **interactive_options(opts), **session_options(opts), log=log_stream(opts),
        ))
