"""The generation core: one sequence's rules, shared by `run`, the interactive session and the server.

A `Sequence` owns what one generation decides: which prompt tokens its KV cache already holds (prefix
reuse), when and how the context shifts (the first n_keep positions stay, half of the rest goes, as the
reference), the sampler (and an optional constraint that masks the logits), the stop conditions
(end-of-generation tokens unless ignore_eos, stop strings held back while they may still complete, the
token budget, a full context, a finished constraint) and the streaming text (whole UTF-8 characters only).

It never evaluates anything itself: it is push-driven, so a scheduler can batch many of them.

    todo = seq.start(prompt, cached=engine.tokens(s))   # cut the cache to seq.n_past, evaluate `todo`
    seq.evaluated(len(todo))
    step = seq.feed(logits)          # sample + stop rules -> Step(token, text, stop, shift)
    if step.shift: engine.context_shift(s, *step.shift)
    ... evaluate [step.token] unless step.stop, and feed the logits again

`generate()` in generate.py is the pull driver for a single sequence that calls the engine itself.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .text import TextStream


class Constraint(Protocol):
    """What the core asks of a constraint (a grammar, a JSON schema): allowed tokens, and what was chosen.

    Optional methods, used when present: `allows(token)` (whether one token may come next: the core then
    samples first and masks only when the token is refused, as llama.cpp does), `apply(logits)` (set the
    logits of disallowed tokens to -inf in place: cheaper than building `mask()`) and `reset()` (back to the
    start, at a new turn).
    The end-of-generation tokens are the constraint's to allow, as llama.cpp's grammar does: only once the
    constrained text is complete."""

    def mask(self) -> np.ndarray | None:
        """Allowed next tokens, a bool array of shape (n_vocab,); None: any."""

    def accept(self, token: int) -> None:
        """The token sampled (from the allowed ones)."""

    def is_done(self) -> bool:
        """True when the constrained text is complete: the generation stops."""


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
    stop_reason: str = ""      # the last Step.stop: "eog", "limit", "context", "word", "grammar", "no_token"
    draft_n: int = 0           # speculative decoding: tokens drafted
    draft_n_accepted: int = 0  # of which the target kept

    def lines(self) -> list[str]:
        """The summary, formatted like the reference's perf print."""
        def rate(ms, n, unit="tokens"):
            per = ms / n if n else 0.0
            tps = 1000.0 * n / ms if ms > 0 else 0.0
            return f"{ms:10.2f} ms / {n:5d} {unit:6s} ({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        total = self.load_ms + self.prompt_ms + self.eval_ms + self.sample_ms
        spec = []
        if self.draft_n:
            spec = [f"draft: {self.draft_n:5d} tokens drafted, {self.draft_n_accepted:5d} accepted "
                    f"({100.0 * self.draft_n_accepted / self.draft_n:.2f}% acceptance)"]
        return spec + [
            f"sampling time = {rate(self.sample_ms, self.n_sample, 'runs')}",
            f"load time = {self.load_ms:10.2f} ms",
            f"prompt eval time = {rate(self.prompt_ms, self.n_prompt)}",
            f"eval time = {rate(self.eval_ms, self.n_eval, 'runs')}",
            f"total time = {total:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ]


@dataclass
class Step:
    """What one `feed` decided.

    token: the token sampled; it is the next one to evaluate unless `stop` is set.
    text: generated text that may be shown now (whole characters, stop strings cut, held-back text not yet).
    stop: "" (going on), "eog" (an end-of-generation token, `token`; no text), "limit" (the token budget),
      "context" (the context is full and can't shift), "word" (a stop string, `stop_word`), "grammar"
      (the constraint is complete: llama.cpp samples its end-of-generation token there, which is all the
      grammar then allows), "no_token" (the constraint allows no token the sampler may pick, e.g. only an
      end token under ignore_eos; `token` is -1 and nothing was sampled).
    truncated: stopped by the context, not by the text or the budget asked for.
    shift: (n_keep, n_discard) to apply to the cache before evaluating `token`.
    """

    token: int
    text: str = ""
    stop: str = ""
    stop_word: str = ""
    truncated: bool = False
    shift: tuple[int, int] | None = None


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """How many leading tokens a and b share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Sequence:
    """The state and rules of one sequence's generation (see the module docstring).

    sampler: has `sample(logits, history) -> token` (generation.sampling.Sampler) and may have `reset()`.
    is_eog: whether a token ends the generation. piece: a token's bytes as text shows it (None: no text).
    n_predict: tokens to generate (-1: no limit, -2: until the context is full, never shifting).
    n_keep: positions a context shift keeps. ctx_shift: False stops when the context is full.
    stop: stop strings. ignore_eos: end-of-generation tokens don't stop (the sampler bans them too).
    cap_unlimited: with n_predict < 0, stop once prompt + generated tokens fill the context even if it
      could shift (llama-server's guard against a generation that never ends).
    """

    def __init__(self, sampler, n_ctx: int, *, is_eog: Callable[[int], bool] = lambda t: False,
                 piece: Callable[[int], bytes] | None = None, n_predict: int = -1, n_keep: int = 0,
                 ctx_shift: bool = True, stop: Seq[str] = (), ignore_eos: bool = False,
                 constraint: Constraint | None = None, cap_unlimited: bool = False,
                 timings: Timings | None = None):
        self.sampler = sampler
        self.n_ctx = n_ctx
        self.is_eog = is_eog
        self.piece = piece
        self.n_predict = n_predict
        self.n_keep = n_keep
        self.ctx_shift = ctx_shift
        self.stops = list(stop)
        self.ignore_eos = ignore_eos
        self.constraint = constraint
        self.cap_unlimited = cap_unlimited
        self.timings = timings if timings is not None else Timings()
        params = getattr(sampler, "params", None)
        # history the penalties and DRY see
        self.last_n = params.history_window(n_ctx) if params is not None else n_ctx
        self.n_past = 0            # positions the cache holds (as this sequence knows it)
        self.n_prompt = 0
        self.n_reused = 0
        self.history: list[int] = []     # what the penalties look back on
        self.generated: list[int] = []   # tokens sampled in this generation
        self.text: TextStream | None = None

    # -- the prompt ----------------------------------------------------------------------------------------
    def start(self, prompt: Seq[int], cached: Seq[int] = ()) -> list[int]:
        """Begin a generation from `prompt` when the cache holds `cached`: returns the tokens to evaluate.
        The cache must first be cut to `n_past` positions (the shared prefix, leaving at least one token
        to evaluate for the logits)."""
        prompt = [int(t) for t in prompt]
        same = min(common_prefix(cached, prompt), len(prompt) - 1) if prompt else 0
        self.n_past = self.n_reused = same
        self.n_prompt = len(prompt)
        self.timings.n_reused = same
        self.history = list(prompt)
        self.generated = []
        self.text = TextStream(self.piece, self.stops) if self.piece is not None else None
        return prompt[same:]

    def add_input(self, tokens: Seq[int]) -> None:
        """Tokens given (not sampled) in the middle of a generation, as a user's turn: the penalties see them."""
        self.history.extend(tokens)

    def new_turn(self) -> None:
        """Forget the penalty history and restart the sampler (the reference does so at each user turn)."""
        self.history.clear()
        for part in (self.sampler, self.constraint):  # llama.cpp's sampler reset restarts the grammar too
            reset = getattr(part, "reset", None)
            if reset is not None:
                reset()

    def evaluated(self, n: int, ms: float | None = None, prompt: bool = False) -> None:
        """n tokens were evaluated into the cache (taking ms, when the caller timed it)."""
        self.n_past += n
        if ms is not None:
            t = self.timings
            if prompt:
                t.prompt_ms += ms
                t.n_prompt += n
            else:
                t.eval_ms += ms
                t.n_eval += n

    def eval(self, engine, seq_id: int, tokens: Seq[int], prompt: bool = False):
        """Evaluate tokens on an engine (single-sequence callers), timed; returns the last row's logits."""
        t0 = time.perf_counter()
        logits = engine.eval(tokens, seq_id)
        self.evaluated(len(tokens), 1e3 * (time.perf_counter() - t0), prompt=prompt)
        return logits

    def shift_for(self, n: int) -> tuple[int, int] | None:
        """Room for evaluating n more tokens: None when they fit, else the shift (n_keep, n_discard) that
        makes room, already counted in n_past (apply it to the cache). n_discard is 0 when the context is
        full for good: shifting is off, n_predict is -2, or nothing is left to drop."""
        if self.n_past + n < self.n_ctx:
            return None
        keep = min(max(self.n_keep, 0), self.n_past)
        n_discard = (self.n_past - keep) // 2
        if not self.ctx_shift or self.n_predict == -2 or n_discard <= 0:
            return keep, 0
        self.n_past -= n_discard
        self.timings.n_shifts += 1
        return keep, n_discard

    # -- one token -----------------------------------------------------------------------------------------
    def sample(self, logits: np.ndarray) -> int:
        """The next token from the logits of the last evaluated position (constraint mask, penalties,
        sampler chain); it joins the history and the constraint. -1 when the constraint allows no token
        the sampler may pick (then nothing is sampled). The caller's logits are left as they are."""
        t0 = time.perf_counter()
        c = self.constraint
        hist = self.history[-self.last_n:] if self.last_n > 0 else ()
        tok = -1
        allows = getattr(c, "allows", None)
        if allows is not None:
            # llama.cpp's order (common_sampler_sample): sample first, and mask and sample again only when the
            # grammar refuses the token; most tokens pass, and checking one costs far less than a mask
            t = int(self.sampler.sample(logits, hist))
            if allows(t) and not self._banned(t):
                tok = t
        if tok < 0:
            if c is not None:
                logits = np.array(logits, dtype=np.float32)  # a copy: the caller may still read the raw logits
                apply = getattr(c, "apply", None)
                if apply is not None:
                    apply(logits)
                else:
                    allowed = c.mask()
                    if allowed is not None:
                        n = min(len(allowed), len(logits))
                        logits[:n][~np.asarray(allowed[:n], dtype=bool)] = -np.inf
                        logits[n:] = -np.inf
            tok = int(self.sampler.sample(logits, hist))
            if c is not None and (not logits[tok] > -np.inf or self._banned(tok)):
                # every allowed token is masked or banned by the sampler (ignore_eos, a -inf bias): the sampler
                # had only -inf to choose from
                self.timings.sample_ms += 1e3 * (time.perf_counter() - t0)
                self.timings.n_sample += 1
                return -1
        self.timings.sample_ms += 1e3 * (time.perf_counter() - t0)
        self.timings.n_sample += 1
        self.history.append(tok)
        self.generated.append(tok)
        if c is not None:
            c.accept(tok)
        return tok

    def _banned(self, tok: int) -> bool:
        bias = getattr(self.sampler, "bias", None)
        return bool(bias) and bias.get(tok, 0.0) == -np.inf

    def feed(self, logits: np.ndarray) -> Step:
        """Sample from the logits and apply the stop rules (see Step)."""
        tok = self.sample(logits)
        if tok < 0:
            return self._stop(Step(tok), "no_token")
        if self.is_eog(tok) and not self.ignore_eos:
            return self._stop(Step(tok), "eog")
        step = Step(tok, self.text.add(tok) if self.text is not None else "")
        n_gen = len(self.generated)
        if self.text is not None and self.text.stopped_word:
            step.stop_word = self.text.stopped_word
            return self._stop(step, "word")
        if self.constraint is not None and self.constraint.is_done():
            return self._stop(step, "grammar")
        if self.n_predict >= 0 and n_gen >= self.n_predict:
            return self._stop(step, "limit")
        if self.cap_unlimited and self.n_predict < 0 and self.n_prompt + n_gen >= self.n_ctx:
            return self._stop(step, "limit", truncated=True)
        shift = self.shift_for(1)
        if shift is not None:
            if shift[1] == 0:
                return self._stop(step, "context", truncated=True)
            step.shift = shift
        return step

    def _stop(self, step: Step, reason: str, truncated: bool = False) -> Step:
        step.stop = self.timings.stop_reason = reason
        step.truncated = truncated
        return step

    def flush(self) -> str:
        """Text still held back at the end (a partial stop string, an unfinished character)."""
        return self.text.finish() if self.text is not None else ""

    @property
    def content(self) -> str:
        """All the generated text kept (a stop string and what follows it cut)."""
        return self.text.text if self.text is not None else ""

    def n_tokens_kept(self) -> int:
        """Generated tokens whose text starts before a stop string."""
        return self.text.n_tokens_kept() if self.text is not None else len(self.generated)


class ReversePrompts:
    """llama-cli's reverse prompts (-r), looked for after each token in the text of the last 32 tokens (the
    prompt's included), so one split across tokens is still found; one that is a single token (a special
    token such as <|eot_id|>) also matches by id."""

    N_PREV = 32

    def __init__(self, prompts: Seq[str], encode: Callable[[str], list[int]], piece: Callable[[int], bytes]):
        self.prompts = list(prompts)
        self.piece = piece
        self.ids = set()
        for r in self.prompts:
            ids = encode(r)
            if len(ids) == 1:
                self.ids.add(ids[0])
        self.prev: deque[int] = deque(maxlen=self.N_PREV)

    def add(self, token: int) -> None:
        self.prev.append(token)

    def found(self, pad: int = 0) -> bool:
        """Whether the recent text ends in a reverse prompt (allowing `pad` characters after it)."""
        if not self.prompts:
            return False
        text = b"".join(self.piece(t) for t in self.prev).decode("utf-8", errors="replace")
        for r in self.prompts:
            if r in text[max(0, len(text) - len(r) - pad):]:
                return True
        return bool(self.prev) and self.prev[-1] in self.ids
