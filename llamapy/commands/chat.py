"""`llamapy chat`: an interactive chat through the model's chat template (llama-cli -cnv)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("chat", context_settings={"help_option_names": ["-h", "--help"]})
    def chat(
        model: str | None = typer.Option(
            None, "-m", "--model", help="GGUF model (default: the default model)."
        ),
        system_prompt: str | None = typer.Option(
            None, "-sys", "--system-prompt", help="System message (then -p is your first message)."
        ),
        prompt: str | None = typer.Option(
            None, "-p", "--prompt", help="System message (or first message with -sys)."
        ),
        file: str | None = typer.Option(None, "-f", "--file", help="Read -p's text from a file."),
        no_cnv: bool = typer.Option(
            False, "-no-cnv", "--no-conversation", help="Plain interactive completion, no chat template."
        ),
        cnv: bool = typer.Option(
            True, "-cnv", "--conversation", help="Conversation mode (the default here)."
        ),
        chat_template: str | None = typer.Option(
            None, "--chat-template", help="A built-in template by name (chatml, llama3, ...) or Jinja text."
        ),
        chat_template_file: str | None = typer.Option(
            None, "--chat-template-file", help="A Jinja template file."
        ),
        reverse_prompt: list[str] | None = typer.Option(  # noqa: B008 (Typer declares options this way)
            None, "-r", "--reverse-prompt", help="Hand control back at TEXT."
        ),
        in_prefix: str = typer.Option(
            "", "--in-prefix", help="Text before each input (disables the template)."
        ),
        in_suffix: str = typer.Option(
            "", "--in-suffix", help="Text after each input (disables the template)."
        ),
        in_prefix_bos: bool = typer.Option(False, "--in-prefix-bos", help="Start each input with BOS."),
        color: bool = typer.Option(False, "--color", help="Color prompt, input and output (terminals only)."),
        multiline_input: bool = typer.Option(
            False, "--multiline-input", help="Lines continue until one ends in \\."
        ),
        no_escape: bool = typer.Option(False, "--no-escape", help="Keep \\n etc. as typed."),
        escape: bool = typer.Option(
            True, "-e", "--escape", help="Process \\n, \\t, ... escapes (the default)."
        ),
        n_predict: int = typer.Option(
            -1, "-n", "--n-predict", "--n_predict", help="Tokens per turn (-1: no limit)."
        ),
        ctx_size: int = typer.Option(
            4096, "-c", "--ctx-size", "--ctx_size", help="Context size (0: the model's)."
        ),
        keep: int = typer.Option(0, "--keep", help="Prompt tokens kept when the context shifts (-1: all)."),
        no_context_shift: bool = typer.Option(
            False, "--no-context-shift", help="Stop when the context is full."
        ),
        threads: int | None = typer.Option(
            None, "-t", "--threads", help="Threads (default: physical cores)."
        ),
        batch_size: int = typer.Option(2048, "-b", "--batch-size", "--batch_size", help="Prompt batch size."),
        temp: float = typer.Option(0.8, "--temp", help="Temperature (0: greedy)."),
        top_k: int = typer.Option(40, "--top-k", "--top_k"),
        top_p: float = typer.Option(0.95, "--top-p", "--top_p"),
        min_p: float = typer.Option(0.05, "--min-p", "--min_p"),
        typical_p: float = typer.Option(1.0, "--typical", "--typical_p"),
        repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", "--repeat_penalty"),
        repeat_last_n: int = typer.Option(64, "--repeat-last-n", "--repeat_last_n"),
        presence_penalty: float = typer.Option(0.0, "--presence-penalty", "--presence_penalty"),
        frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", "--frequency_penalty"),
        mirostat: int = typer.Option(0, "--mirostat"),
        mirostat_lr: float = typer.Option(0.1, "--mirostat-lr"),
        mirostat_ent: float = typer.Option(5.0, "--mirostat-ent"),
        seed: int = typer.Option(-1, "-s", "--seed", help="RNG seed (-1: random)."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos"),
        special: bool = typer.Option(False, "-sp", "--special", help="Print special tokens."),
        verbose_prompt: bool = typer.Option(False, "--verbose-prompt", help="Print the prompt's tokens."),
        no_display_prompt: bool = typer.Option(False, "--no-display-prompt", help="Don't print the prompt."),
        interactive: bool = typer.Option(True, "-i", "--interactive", hidden=True),
        n_gpu_layers: int | None = typer.Option(None, "-ngl", "--n-gpu-layers", "--gpu-layers", hidden=True),
    ):
        """Chat with a model in the terminal, through its chat template (llama-cli -cnv).

        Ctrl-C interrupts the answer; Ctrl-C at the prompt or Ctrl-D ends the session."""
        from ..chat.interactive import start

        conversation = cnv and not no_cnv
        status = start(
            model=model,
            prompt=prompt,
            file=file,
            system_prompt=system_prompt,
            interactive=True,
            interactive_first=not conversation,
            conversation=conversation,
            reverse_prompts=list(reverse_prompt or []),
            in_prefix=in_prefix,
            in_suffix=in_suffix,
            in_prefix_bos=in_prefix_bos,
            chat_template=chat_template,
            chat_template_file=chat_template_file,
            color=color,
            escape=escape and not no_escape,
            multiline_input=multiline_input,
            n_predict=n_predict,
            ctx_size=ctx_size,
            batch_size=batch_size,
            threads=threads,
            keep=keep,
            ctx_shift=not no_context_shift,
            display_prompt=not no_display_prompt,
            special=special,
            verbose_prompt=verbose_prompt,
            n_gpu_layers=n_gpu_layers,
            sampling={
                "temp": temp,
                "top_k": top_k,
                "top_p": top_p,
                "min_p": min_p,
                "typical_p": typical_p,
                "repeat_penalty": repeat_penalty,
                "repeat_last_n": repeat_last_n,
                "presence_penalty": presence_penalty,
                "frequency_penalty": frequency_penalty,
                "mirostat": mirostat,
                "mirostat_tau": mirostat_ent,
                "mirostat_eta": mirostat_lr,
                "seed": seed,
                "ignore_eos": ignore_eos,
            },
        )
        raise typer.Exit(status)
