"""`llamapy run`: llama-cli's text completion (-m -p -n ...); a thin parser over llamapy.run.run()."""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("run", context_settings={"help_option_names": ["-h", "--help"]})
    def run(
        model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF model (default: the default model)."),
        prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Prompt to continue."),
        file: Optional[str] = typer.Option(None, "-f", "--file", help="Read the prompt from a file."),
        n_predict: int = typer.Option(
            -1, "-n", "--n-predict", "--n_predict",
            help="Tokens to generate (-1: no limit, -2: until the context is full)."),
        ctx_size: int = typer.Option(4096, "-c", "--ctx-size", "--ctx_size", help="Context size (0: the model's)."),
        batch_size: int = typer.Option(2048, "-b", "--batch-size", "--batch_size", help="Prompt batch size."),
        threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
        seed: int = typer.Option(-1, "-s", "--seed", help="RNG seed (-1: random)."),
        temp: float = typer.Option(0.8, "--temp", help="Temperature (0: greedy)."),
        top_k: int = typer.Option(40, "--top-k", "--top_k", help="Top-k sampling (0: off)."),
        top_p: float = typer.Option(0.95, "--top-p", "--top_p", help="Top-p sampling (1.0: off)."),
        min_p: float = typer.Option(0.05, "--min-p", "--min_p", help="Min-p sampling (0.0: off)."),
        typical_p: float = typer.Option(
            1.0, "--typical", "--typical_p", help="Locally typical sampling (1.0: off)."),
        repeat_penalty: float = typer.Option(
            1.0, "--repeat-penalty", "--repeat_penalty", help="Repetition penalty (1.0: off)."),
        repeat_last_n: int = typer.Option(
            64, "--repeat-last-n", "--repeat_last_n", help="Tokens the penalties look back on (-1: the context)."),
        presence_penalty: float = typer.Option(0.0, "--presence-penalty", "--presence_penalty"),
        frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", "--frequency_penalty"),
        mirostat: int = typer.Option(0, "--mirostat", help="Mirostat sampling (0 off, 1, 2)."),
        mirostat_lr: float = typer.Option(
            0.1, "--mirostat-lr", "--mirostat_lr", help="Mirostat learning rate (eta)."),
        mirostat_ent: float = typer.Option(
            5.0, "--mirostat-ent", "--mirostat_ent", help="Mirostat target entropy (tau)."),
        logit_bias: Optional[list[str]] = typer.Option(  # noqa: B008
            None, "-l", "--logit-bias", help="TOKEN_ID(+/-)BIAS, e.g. 15043+1 (repeatable)."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Never stop at end-of-generation tokens."),
        keep: int = typer.Option(0, "--keep", help="Prompt tokens kept when the context shifts (-1: all)."),
        escape: bool = typer.Option(
            True, "-e", "--escape", help="Process \\n, \\t, ... in the prompt (default)."),
        no_escape: bool = typer.Option(False, "--no-escape", help="Keep backslashes in the prompt as typed."),
        no_display_prompt: bool = typer.Option(False, "--no-display-prompt", help="Don't echo the prompt."),
        verbose_prompt: bool = typer.Option(False, "--verbose-prompt", help="Print the prompt's tokens."),
        color: bool = typer.Option(False, "--color", help="Colour the prompt."),
        special: bool = typer.Option(False, "-sp", "--special", help="Print special tokens."),
        n_gpu_layers: Optional[int] = typer.Option(
            None, "-ngl", "--gpu-layers", "--n-gpu-layers", "--n_gpu_layers",
            help="Accepted; llamapy runs on the CPU."),
        verbose: bool = typer.Option(False, "--verbose", help="Tracebacks on errors."),
        # interactive mode (llamapy.chat.interactive): any of these hands the run to llama-cli's interactive loop
        interactive: bool = typer.Option(False, "-i", "--interactive", help="Chat: your turn after reverse prompts."),
        interactive_first: bool = typer.Option(False, "-if", "--interactive-first", help="-i, and you type first."),
        reverse_prompt: Optional[list[str]] = typer.Option(  # noqa: B008
            None, "-r", "--reverse-prompt", help="Stop at TEXT (with -i: your turn). Repeatable."),
        in_prefix: str = typer.Option("", "--in-prefix", help="Text before each of your inputs."),
        in_suffix: str = typer.Option("", "--in-suffix", help="Text after each of your inputs."),
        in_prefix_bos: bool = typer.Option(False, "--in-prefix-bos", help="Start each of your inputs with BOS."),
        instruct: bool = typer.Option(False, "-ins", "--instruct", help="Alpaca instruction mode."),
        conversation: bool = typer.Option(False, "-cnv", "--conversation", help="Chat through the chat template."),
        no_conversation: bool = typer.Option(False, "-no-cnv", "--no-conversation", help="No conversation mode."),
        system_prompt: Optional[str] = typer.Option(None, "-sys", "--system-prompt", help="System message (-cnv)."),
        chat_template: Optional[str] = typer.Option(None, "--chat-template", help="Built-in name or Jinja text."),
        chat_template_file: Optional[str] = typer.Option(None, "--chat-template-file", help="Jinja template file."),
        multiline_input: bool = typer.Option(
            False, "--multiline-input", "-mli", help="Lines go on until one ends in \\."
        ),
        no_context_shift: bool = typer.Option(False, "--no-context-shift", help="Stop when the context is full."),
    ):
        """Generate text from a prompt, as llama-cli does (-i, -r, -ins, -cnv: interactive)."""
        if interactive or interactive_first or instruct or (conversation and not no_conversation) or reverse_prompt:
            from ..chat.interactive import start
            from ..run import parse_logit_bias

            raise typer.Exit(start(
                model=model, prompt=prompt, file=file, system_prompt=system_prompt, interactive=interactive,
                interactive_first=interactive_first, instruct=instruct,
                conversation=conversation and not no_conversation, reverse_prompts=list(reverse_prompt or []),
                in_prefix=in_prefix, in_suffix=in_suffix, in_prefix_bos=in_prefix_bos, chat_template=chat_template,
                chat_template_file=chat_template_file, color=color, escape=escape and not no_escape,
                multiline_input=multiline_input, n_predict=n_predict, ctx_size=ctx_size, batch_size=batch_size,
                threads=threads, keep=keep, ctx_shift=not no_context_shift, display_prompt=not no_display_prompt,
                special=special, verbose_prompt=verbose_prompt, n_gpu_layers=n_gpu_layers,
                sampling={
                    "temp": temp, "top_k": top_k, "top_p": top_p, "min_p": min_p, "typical_p": typical_p,
                    "repeat_penalty": repeat_penalty, "repeat_last_n": repeat_last_n,
                    "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty,
                    "mirostat": mirostat, "mirostat_tau": mirostat_ent, "mirostat_eta": mirostat_lr, "seed": seed,
                    "logit_bias": parse_logit_bias(logit_bias), "ignore_eos": ignore_eos},
            ))
        from ..run import run as run_fn

        run_fn(
            model=model, prompt=prompt, file=file, n_predict=n_predict, ctx_size=ctx_size,
            batch_size=batch_size, threads=threads, seed=seed, temp=temp, top_k=top_k, top_p=top_p,
            min_p=min_p, typical_p=typical_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, mirostat=mirostat,
            mirostat_lr=mirostat_lr, mirostat_ent=mirostat_ent, logit_bias=logit_bias, ignore_eos=ignore_eos,
            keep=keep, escape=escape and not no_escape, display_prompt=not no_display_prompt,
            verbose_prompt=verbose_prompt, color=color, special=special, n_gpu_layers=n_gpu_layers,
        )
