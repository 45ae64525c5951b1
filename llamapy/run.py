"""`llamapy run`: llama-cli's plain completion. The prompt is echoed and the continuation streamed to
stdout as it is generated; logs and the timing summary go to stderr."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from .errors import LlamapyError
from .generation.params import SamplerParams

ANSI_PROMPT = "\x1b[33m"  # the reference colours the prompt yellow
ANSI_RESET = "\x1b[0m"


def read_prompt(prompt: str | None, file: str | None) -> str:
    """-p text, or -f file contents without one trailing newline (as the reference reads -f)."""
    if file is not None:
        try:
            with open(file, encoding="utf-8", errors="surrogateescape", newline="") as f:
                text = f.read()
        except OSError as e:
            raise LlamapyError(f"failed to open file '{file}': {e.strerror}") from None
        if text.endswith("\n"):
            text = text[:-1]
        return text
    return prompt or ""


def run(
    model: str | None = None,
    prompt: str | None = None,
    file: str | None = None,
    n_predict: int = -1,
    ctx_size: int = 4096,
    batch_size: int = 2048,
    threads: int | None = None,
    keep: int = 0,
    ctx_shift: bool = True,
    escape: bool = True,
    display_prompt: bool = True,
    verbose_prompt: bool = False,
    color: bool = False,
    special: bool = False,
    sampling: SamplerParams | None = None,
    load=None,
    perf: bool = True,
    grammar: str | None = None,
    grammar_file: str | None = None,
    json_schema: str | None = None,
    prompt_cache: str | None = None,
    prompt_cache_all: bool = False,
    prompt_cache_ro: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    model_draft: str | None = None,
    lookup: bool = False,
    draft=None,
    ctx_size_draft: int | None = None,
    threads_draft: int | None = None,
) -> int:
    """Generate a continuation of the prompt; returns the number of tokens generated.

    grammar (GBNF text), grammar_file (its file) or json_schema (JSON text): what the output must follow
    (llama-cli's --grammar, --grammar-file, -j); the generation ends where the grammar is complete.
    prompt_cache: a state file (llama-cli's --prompt-cache): its tokens and KV state are loaded when the prompt
    starts with them, and the evaluated prompt is saved to it at the first sampled token unless the whole prompt
    came from it; prompt_cache_all saves the generated tokens too at the end, prompt_cache_ro never writes.
    model_draft (a draft model) or lookup (prompt lookup), with draft (DraftParams): speculative decoding."""
    from .engine.engine import Engine
    from .engine.load import ubatch
    from .generation.generate import eog_ids_of, steps
    from .generation.sampling import Sampler
    from .generation.sequence import Sequence, Timings
    from .generation.speculative import DraftParams, drafter_from_options
    from .grammar.options import check_options, grammar_from_options
    from .tokenizer.core import StreamDecoder
    from .util.escapes import process_escapes_text as process_escapes

    out = out or sys.stdout
    err = err or sys.stderr

    def log(msg: str = "") -> None:
        print(msg, file=err, flush=True)

    if n_predict < -2:
        raise LlamapyError(f"-n {n_predict}: use -1 (no limit), -2 (until the context is full) or a count")
    if ctx_size < 0:
        raise LlamapyError(f"-c {ctx_size}: the context size can't be negative")
    if batch_size < 1:
        raise LlamapyError(f"-b {batch_size}: the batch size must be at least 1")
    check_options(grammar, grammar_file, json_schema)
    params = sampling if sampling is not None else SamplerParams()
    text = read_prompt(prompt, file)
    if escape:
        text = process_escapes(text)

    t0 = time.perf_counter()
    llm = Engine(model, n_ctx=ctx_size, n_threads=threads, n_batch=ubatch(batch_size, load), load=load)
    timings = Timings(load_ms=1000 * (time.perf_counter() - t0))
    drafter = None
    try:
        log(f"llama_model_load: {llm.model_path}: {llm.desc}, {llm.n_params / 1e6:.2f} M params, "
            f"{llm.model_size / 2**20:.2f} MiB")
        log(f"llama_context: n_ctx = {llm.n_ctx}, n_batch = {batch_size}, n_ubatch = {llm.n_batch}, "
            f"n_threads = {llm.n_threads}")
        log(llm.kv_line())
        if llm.n_ctx > llm.args.n_ctx_train:
            log(f"warning: model was trained on only {llm.args.n_ctx_train} context tokens ({llm.n_ctx} specified)")
        drafter = drafter_from_options(llm, model_draft, lookup, draft or DraftParams(), ctx_size_draft,
                                       threads_draft, log)
        if drafter is not None and model_draft is None:
            log(f"speculative: prompt lookup, n-grams of {drafter.params.ngram_min}..{drafter.params.ngram_max} "
                f"tokens, draft max {drafter.params.n_max}")
        tok = llm.tokenizer
        compiled = grammar_from_options(tok, llm.n_vocab, grammar=grammar, grammar_file=grammar_file,
                                        json_schema=json_schema)
        ids = tok.encode(text, add_special=True, parse_special=True)
        if not ids:
            if tok.add_bos and tok.bos_id is not None:
                ids = [tok.bos_id]
                log(f"warning: the prompt is empty; starting from BOS ({tok.bos_id})")
            else:
                raise LlamapyError("input is empty: give a prompt with -p or -f")
        if len(ids) > llm.n_ctx - 4:
            raise LlamapyError(f"prompt is too long ({len(ids)} tokens, max {llm.n_ctx - 4})")
        add_bos = 1 if tok.add_bos else 0
        n_keep = len(ids) if keep < 0 or keep > len(ids) else keep + add_bos

        if verbose_prompt:
            log(f"main: prompt: '{text}'")
            log(f"main: number of tokens in prompt = {len(ids)}")
            for i in ids:
                log(f"{i:6d} -> '{tok.token_to_piece(i, special=True).decode('utf-8', 'replace')}'")
            if n_keep > add_bos:
                kept = b"".join(tok.token_to_piece(i, special=True) for i in ids[:n_keep])
                log(f"main: static prompt based on n_keep: '{kept.decode('utf-8', 'replace')}'")
            log()

        eog = eog_ids_of(llm)
        sampler = Sampler(params, llm.n_vocab, eog_ids=eog, tokenizer=llm.tokenizer)
        log(f"sampler seed: {sampler.seed}")
        log("sampler params: \n" + params.describe())
        log(f"generate: n_ctx = {llm.n_ctx}, n_batch = {batch_size}, n_predict = {n_predict}, n_keep = {n_keep}")
        log()

        use_color = color
        if display_prompt:
            echo = StreamDecoder(tok, special=special)
            shown = "".join(echo.add_token(i) for i in ids) + echo.finalize()
            out.write((ANSI_PROMPT if use_color else "") + shown + (ANSI_RESET if use_color else ""))
            out.flush()

        cache = PromptCache(llm, prompt_cache, prompt_cache_all, prompt_cache_ro, log) if prompt_cache else None
        if cache is not None:
            cache.load(ids)
        eog_set = frozenset(eog)
        seq = Sequence(sampler, llm.n_ctx, is_eog=eog_set.__contains__,
                       piece=lambda t: tok.token_to_piece(t, special), n_predict=n_predict, n_keep=n_keep,
                       ctx_shift=ctx_shift, ignore_eos=params.ignore_eos, timings=timings,
                       constraint=compiled.matcher() if compiled is not None else None)
        n_gen = 0
        try:
            on_shift = cache.shifted if cache is not None else None
            for step in steps(llm, seq, ids, on_context_shift=on_shift, drafter=drafter):
                if cache is not None and n_gen == 0:
                    cache.prompt_done()
                if step.stop == "eog":
                    break
                if step.text:
                    out.write(step.text)
                    out.flush()
                n_gen += 1
        finally:
            tail = seq.flush()
            if tail:
                out.write(tail)
            if timings.stop_reason in ("eog", "grammar"):  # llama-cli samples the end token a complete grammar allows
                out.write(" [end of text]\n")
            out.write("\n\n")
            out.flush()
            if cache is not None:
                cache.finish()
            if timings.stop_reason == "no_token":
                log("the grammar allows no token the sampler may pick (is the end token banned?): stopped")
            for line in timings.lines() if perf else ():
                log(f"llama_perf: {line}")
        return n_gen
    finally:
        if drafter is not None:
            drafter.close()
        llm.close()


class PromptCache:
    """llama-cli's --prompt-cache on sequence 0 of an engine: load before the prompt, save after it (and at
    the end with --prompt-cache-all), never write with --prompt-cache-ro, stop writing after a context shift.
    A file that can't be used is reported in one line and left as it is; the run starts fresh."""

    def __init__(self, llm, path: str, save_all: bool, read_only: bool, log):
        self.llm, self.path, self.save_all, self.read_only, self.log = llm, path, save_all, read_only, log
        self.need_save = False
        self.writable = not read_only

    def load(self, ids: list[int]) -> None:
        import os

        from .engine.state import load_file
        from .generation.sequence import common_prefix

        log = self.log
        log(f"main: attempting to load saved session from '{self.path}'")
        tokens: list[int] = []
        if not os.path.exists(self.path):
            log("main: session file does not exist, will create.")
        elif os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            log("main: the session file is empty. A new session will be initialized.")
        else:
            t0 = time.perf_counter()
            try:
                tokens = load_file(self.llm, 0, self.path)
                log(f"main: loaded a session with prompt size of {len(tokens)} tokens "
                    f"({1000 * (time.perf_counter() - t0):.1f} ms)")
            except LlamapyError as e:
                self.llm.kv_clear(0)
                self.writable = False
                log(f"warning: prompt cache {e}; starting fresh, the file is left as it is")
        n = common_prefix(tokens, ids)
        if tokens:
            if n >= len(ids):
                log("main: session file has exact match for prompt!")
            elif n < len(ids) // 2:
                log(f"main: session file has low similarity to prompt ({n} / {len(ids)} tokens); "
                    "will mostly be reevaluated")
            else:
                log(f"main: session file matches {n} / {len(ids)} tokens of prompt")
        self.need_save = n < len(ids)

    def _save(self) -> None:
        from .engine.state import save_file

        try:
            save_file(self.llm, 0, self.path)
        except LlamapyError as e:
            self.log(f"warning: prompt cache: {e}")
            self.writable = False

    def prompt_done(self) -> None:
        """The prompt is evaluated (the first token sampled)."""
        if self.need_save and self.writable:
            self.need_save = False
            self._save()

    def shifted(self, n_keep: int, n_discard: int) -> None:
        self.writable = False  # the cache no longer starts with the prompt, as llama-cli clears its path

    def finish(self) -> None:
        if self.save_all and self.writable:
            self.log(f"main: saving final output to session file '{self.path}'")
            self._save()
