"""The pull driver: one sequence on an engine, evaluated here, its tokens yielded as they come.

The rules (prefix reuse, context shift, stop conditions) are the generation core's (sequence.py)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import LlamapyError
from .sampling import Sampler, SamplerParams
from .sequence import Constraint, Step, Timings
from .sequence import Sequence as GenSequence

__all__ = ["Timings", "eog_ids", "eog_ids_of", "generate", "steps"]


def eog_ids_of(llm) -> list[int]:
    """End-of-generation token ids of the model's vocabulary."""
    return eog_ids(llm.tokenizer, llm.n_vocab)


def eog_ids(tok: Any, n_vocab: int) -> list[int]:
    """End-of-generation token ids of a tokenizer's vocabulary of n_vocab tokens."""
    ids = getattr(tok, "eog_ids", None)
    if ids is not None:
        return sorted(int(i) for i in ids)
    return [i for i in range(n_vocab) if tok.is_eog(i)]


def generate(
    llm,
    prompt_tokens: Sequence[int],
    params: SamplerParams,
    n_predict: int = -1,
    seq_id: int = 0,
    reuse_prefix: bool = True,
    *,
    n_keep: int = 0,
    ctx_shift: bool = True,
    eog_ids: Iterable[int] | None = None,
    sampler: Sampler | None = None,
    timings: Timings | None = None,
    constraint: Constraint | None = None,
    on_context_shift: Callable[[int, int], None] | None = None,
) -> Iterator[int]:
    """Yield sampled token ids until an end-of-generation token (not yielded) or n_predict tokens.

    n_predict: -1 no limit (context shifts as needed), -2 until the context is full.
    n_keep: positions kept at the front by a context shift (the reference's --keep, BOS included).
    The prompt is evaluated first, reusing the longest matching prefix already in the sequence's cache.
    The reason it stopped is left in timings.stop_reason.
    """
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise LlamapyError("generate: empty prompt")
    if len(prompt) > llm.n_ctx:
        raise LlamapyError(f"prompt is too long ({len(prompt)} tokens, context {llm.n_ctx})")
    eog = frozenset(int(i) for i in (eog_ids if eog_ids is not None else eog_ids_of(llm)))
    if sampler is None:
        sampler = Sampler(params, llm.n_vocab, eog_ids=eog, tokenizer=llm.tokenizer)
    seq = GenSequence(sampler, llm.n_ctx, is_eog=eog.__contains__, n_predict=n_predict, n_keep=n_keep,
                      ctx_shift=ctx_shift, ignore_eos=params.ignore_eos, constraint=constraint, timings=timings)
    for step in steps(llm, seq, prompt, seq_id, reuse_prefix, on_context_shift):
        if step.stop != "eog":
            yield step.token


def steps(llm, seq: GenSequence, prompt: Sequence[int], seq_id: int = 0, reuse_prefix: bool = True,
          on_context_shift: Callable[[int, int], None] | None = None, drafter=None) -> Iterator[Step]:
    """Drive `seq` on the engine: evaluate the prompt (after the prefix the cache shares), then yield each
    Step and evaluate its token, shifting the context when the step says so, until a step stops.

    drafter (speculative.py): drafts of the tokens after each sampled one, evaluated with it in one step
    and kept while the sampled tokens match them (the draft's rejected rows are cut from the cache)."""
    todo = seq.start(prompt, llm.tokens(seq_id) if reuse_prefix else ())
    llm.kv_truncate(seq_id, seq.n_past)
    logits = seq.eval(llm, seq_id, todo, prompt=True)
    if seq.n_predict == 0:
        seq.timings.stop_reason = "limit"
        return
    spec = None
    if drafter is not None:
        from .speculative import DraftedRows

        spec = DraftedRows(llm, drafter, seq_id)
    while True:
        step = seq.feed(logits)
        if spec is not None:
            # a draft token the sampled one is keeps its row; otherwise (or when the generation stops) the
            # cache keeps the rows up to this one, as without a draft (a sampled token is not yet evaluated)
            spec.settle(seq, step.token, bool(step.stop))
        yield step
        if step.stop:
            return
        if step.shift is not None:
            llm.context_shift(seq_id, *step.shift)
            if on_context_shift:
                on_context_shift(*step.shift)
        logits = spec.eval_next(seq, step.token) if spec is not None else seq.eval(llm, seq_id, [step.token])
