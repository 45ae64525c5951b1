"""Starting an interactive session from the command's options: the model loaded (and a draft model or prompt
lookup for speculative decoding), the chat template and grammar chosen, then interactive.py's loop."""
from __future__ import annotations

import sys
from typing import TextIO

from ..errors import LlamapyError
from ..generation.params import SamplerParams
from .interactive import InteractiveOptions, chat_template_for_session, run_interactive
from .templates import ChatTemplate


def start(
    *,
    model: str | None,
    prompt: str | None,
    file: str | None,
    sampling: SamplerParams,
    system_prompt: str | None = None,
    interactive: bool = False,
    interactive_first: bool = False,
    instruct: bool = False,
    conversation: bool = False,
    reverse_prompts: list[str] | tuple[str, ...] = (),
    in_prefix: str = "",
    in_suffix: str = "",
    in_prefix_bos: bool = False,
    chat_template: str | None = None,
    chat_template_file: str | None = None,
    color: bool = False,
    escape: bool = True,
    multiline_input: bool = False,
    n_predict: int = -1,
    ctx_size: int = 4096,
    batch_size: int = 2048,
    threads: int | None = None,
    keep: int = 0,
    ctx_shift: bool = True,
    display_prompt: bool = True,
    special: bool = False,
    verbose_prompt: bool = False,
    load=None,
    log: TextIO | None = None,
    grammar: str | None = None,
    grammar_file: str | None = None,
    json_schema: str | None = None,
    model_draft: str | None = None,
    lookup: bool = False,
    draft=None,
    ctx_size_draft: int | None = None,
    threads_draft: int | None = None,
) -> int:
    """Load a model and run the interactive loop: what `llamapy chat` and `llamapy run -i/-r/-ins/-cnv` call.

    In conversation mode the chat template is the one named (or read from a file), else the model's, else
    chatml with a note. Returns the exit status."""
    from ..engine.engine import Engine
    from ..engine.load import ubatch
    from ..generation.generate import eog_ids_of
    from ..generation.sampling import Sampler
    from ..generation.speculative import DraftParams, drafter_from_options
    from ..grammar.options import check_options, grammar_from_options
    from ..run import read_prompt

    if chat_template and chat_template_file:
        raise LlamapyError("give --chat-template or --chat-template-file, not both")
    if n_predict < -2:
        raise LlamapyError(f"-n {n_predict}: use -1 (no limit), -2 (until the context is full) or a count")
    if batch_size < 1:
        raise LlamapyError(f"-b {batch_size}: the batch size must be at least 1")
    check_options(grammar, grammar_file, json_schema)
    opts = InteractiveOptions(
        prompt=read_prompt(prompt, file),
        interactive=interactive,
        interactive_first=interactive_first,
        reverse_prompts=list(reverse_prompts),
        in_prefix=in_prefix,
        in_suffix=in_suffix,
        in_prefix_bos=in_prefix_bos,
        instruct=instruct,
        conversation=conversation,
        system_prompt=system_prompt,
        color=color,
        escape=escape,
        multiline_input=multiline_input,
        n_predict=n_predict,
        n_keep=keep,
        n_batch=batch_size,
        ctx_shift=ctx_shift,
        display_prompt=display_prompt,
        special=special,
        verbose_prompt=verbose_prompt,
    )
    err = log or sys.stderr  # the load lines; --log-disable / --log-file choose where they go
    with Engine(model, n_ctx=ctx_size, n_threads=threads, n_batch=ubatch(batch_size, load), load=load) as llm:
        err.write(f"llama_model_load: {llm.model_path}: {llm.desc}\n")
        err.write(llm.kv_line() + "\n")
        err.write(f"llama_context: n_ctx = {llm.n_ctx}, n_threads = {llm.n_threads}\n")
        if opts.conversation:
            opts.chat_template = chat_template_for_session(
                ChatTemplate.for_model(llm.metadata, name=chat_template, file=chat_template_file)
            )
        opts.grammar = grammar_from_options(llm.tokenizer, llm.n_vocab, grammar=grammar, grammar_file=grammar_file,
                                            json_schema=json_schema)
        drafter = drafter_from_options(llm, model_draft, lookup, draft or DraftParams(), ctx_size_draft,
                                       threads_draft, lambda line: err.write(line + "\n"))
        try:
            if drafter is not None and model_draft is None:
                p = drafter.params
                err.write(f"speculative: prompt lookup, n-grams of {p.ngram_min}..{p.ngram_max} tokens, "
                          f"draft max {p.n_max}\n")
            sampler = Sampler(sampling, llm.n_vocab, eog_ids=eog_ids_of(llm), tokenizer=llm.tokenizer)
            err.write(f"sampler seed: {sampler.seed}\n")
            return run_interactive(llm, sampler, opts, t_load_ms=1e3 * getattr(llm, "load_time", 0.0),
                                   drafter=drafter)
        finally:
            if drafter is not None:
                drafter.close()
