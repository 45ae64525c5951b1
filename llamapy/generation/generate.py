"""The generation loop: evaluate the prompt, then sample and evaluate one token at a time, shifting the
context (as the reference does) when it fills up."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import LlamapyError
from .sampling import Sampler, SamplerParams


@dataclass
class Timings:
    """What the reference's timing summary reports (milliseconds)."""

    load_ms: float = 0.0
    prompt_ms: float = 0.0
    n_prompt: int = 0          # prompt tokens evaluated (a reused prefix is not)
    eval_ms: float = 0.0
    n_eval: int = 0            # generated tokens evaluated
    sample_ms: float = 0.0
    n_sample: int = 0
    n_reused: int = 0          # prompt tokens found already in the cache
    n_shifts: int = 0          # context shifts
    stop_reason: str = ""      # "eog", "limit" (n_predict) or "context" (full with n_predict -2)

    def lines(self) -> list[str]:
        """The summary, formatted like the reference's perf print."""
        def rate(ms, n, unit="tokens"):
            per = ms / n if n else 0.0
            tps = 1000.0 * n / ms if ms > 0 else 0.0
            return f"{ms:10.2f} ms / {n:5d} {unit:6s} ({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        total = self.load_ms + self.prompt_ms + self.eval_ms + self.sample_ms
        return [
            f"sampling time = {rate(self.sample_ms, self.n_sample, 'runs')}",
            f"load time = {self.load_ms:10.2f} ms",
            f"prompt eval time = {rate(self.prompt_ms, self.n_prompt)}",
            f"eval time = {rate(self.eval_ms, self.n_eval, 'runs')}",
            f"total time = {total:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ]


def eog_ids_of(llm) -> list[int]:
    """End-of-generation token ids of the model's vocabulary."""
    tok = llm.tokenizer
    ids = getattr(tok, "eog_ids", None)
    if ids is not None:
        return sorted(int(i) for i in ids)
    return [i for i in range(llm.n_vocab) if tok.is_eog(i)]


def generate(
    llm,
    prompt_tokens: Sequence[int],
    params: SamplerParams,
    n_predict: int = -1,
    seq_id: int = 0,
    reuse_prefix: bool = True,
    *,
    n_keep: int = 0,
    eog_ids: Iterable[int] | None = None,
    sampler: Sampler | None = None,
    timings: Timings | None = None,
    on_context_shift: Callable[[int, int], None] | None = None,
) -> Iterator[int]:
    """Yield sampled token ids until an end-of-generation token (not yielded) or n_predict tokens.

    n_predict: -1 no limit (context shifts as needed), -2 until the context is full.
    n_keep: positions kept at the front by a context shift (the reference's --keep, BOS included).
    The prompt is evaluated first, reusing the longest matching prefix already in the sequence's cache.
    """
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise LlamapyError("generate: empty prompt")
    if len(prompt) > llm.n_ctx:
        raise LlamapyError(f"prompt is too long ({len(prompt)} tokens, context {llm.n_ctx})")
    t = timings if timings is not None else Timings()
    eog = set(int(i) for i in (eog_ids if eog_ids is not None else eog_ids_of(llm)))
    if sampler is None:
        sampler = Sampler(params, llm.n_vocab, eog_ids=eog)

    # the prompt: keep the cached prefix it shares with the sequence (at least one token to evaluate)
    cached = llm.tokens(seq_id) if reuse_prefix else []
    same = 0
    for a, b in zip(cached, prompt):
        if a != b:
            break
        same += 1
    same = min(same, len(prompt) - 1)
    llm.kv_truncate(seq_id, same)
    t.n_reused = same
    t0 = time.perf_counter()
    logits = llm.eval(prompt[same:], seq_id)
    t.prompt_ms += 1000 * (time.perf_counter() - t0)
    t.n_prompt += len(prompt) - same

    history = list(prompt)
    n_left = n_predict
    if n_left == 0:
        t.stop_reason = "limit"
    while n_left != 0:
        t0 = time.perf_counter()
        last_n = params.repeat_last_n if params.repeat_last_n >= 0 else llm.n_ctx
        tok = sampler.sample(logits, history[-last_n:] if last_n > 0 else ())
        t.sample_ms += 1000 * (time.perf_counter() - t0)
        t.n_sample += 1
        if tok in eog and not params.ignore_eos:
            t.stop_reason = "eog"
            return
        yield tok
        history.append(tok)
        if n_left > 0:
            n_left -= 1
        if n_left == 0:
            t.stop_reason = "limit"
            return
        n_past = llm.n_past(seq_id)
        if n_past + 1 >= llm.n_ctx:
            keep = min(max(n_keep, 0), n_past)
            n_discard = (n_past - keep) // 2
            if n_predict == -2 or n_discard <= 0:
                t.stop_reason = "context"
                return
            llm.context_shift(seq_id, keep, n_discard)
            t.n_shifts += 1
            if on_context_shift:
                on_context_shift(keep, n_discard)
        t0 = time.perf_counter()
        logits = llm.eval([tok], seq_id)
        t.eval_ms += 1000 * (time.perf_counter() - t0)
        t.n_eval += 1
