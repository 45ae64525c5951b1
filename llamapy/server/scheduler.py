"""The slot scheduler: one engine thread, N slots, one batched forward step for all of them.

Each slot is one sequence of the engine's KV cache. Every step the engine thread:
  1. admits queued jobs into free slots (the slot whose cached tokens share the longest prefix with
     the prompt, so a follow-up chat turn re-evaluates only what is new),
  2. drops jobs whose client went away,
  3. advances every busy slot in ONE `eval_batch` call (a generating slot by its last token, a slot
     still reading its prompt by a chunk of it: continuous batching); slots whose requests run with
     other LoRA adapter scales are not batched together (the engine has one set of scales per step): the
     groups of alike slots take turns, step by step,
  4. samples a token per slot and hands text to that request's asyncio queue.
The thread never waits on a client: a slow reader only lets its own queue grow. A bounded queue of
waiting jobs makes the server answer 503 instead of piling up work.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..generation.params import SamplerParams
from ..generation.sequence import Sequence, common_prefix
from .errors import APIError

log = logging.getLogger("llamapy.server")


class Backend(Protocol):
    """What the scheduler needs from the model (see backend.EngineBackend)."""

    n_ctx: int  # positions per slot
    n_slots: int
    n_batch: int

    def eval_batch(self, items: list[tuple[int, list[int]]], last_rows: list[int] | None = None) -> list[np.ndarray]:
        ...
    def cache_tokens(self, seq: int) -> list[int]: ...
    def truncate(self, seq: int, n: int) -> None: ...
    def embed(self, tokens: list[int]) -> np.ndarray: ...
    def make_sampler(self, params: SamplerParams) -> Any: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int) -> bytes: ...
    def context_shift(self, seq: int, n_keep: int, n_discard: int) -> None: ...


@dataclass
class GenRequest:
    """One generation, already tokenized and validated."""

    prompt: list[int]
    sampling: SamplerParams = field(default_factory=SamplerParams)
    n_predict: int = -1  # -1 / -2: until end of text or the slot's context is full
    stop: list[str] = field(default_factory=list)
    n_probs: int = 0
    cache_prompt: bool = True
    id_slot: int = -1
    n_keep: int = 0  # positions a context shift keeps (the BOS)
    timings_per_token: bool = False  # each streamed token carries the timings so far
    post_sampling_probs: bool = False  # n_probs as the sampler chain left them (probabilities, not logprobs)
    grammar: Any = None  # a compiled grammar (llamapy.grammar): the slot's Sequence gets a matcher of it
    lora: tuple[float, ...] = ()  # the scale of each LoRA adapter (empty: the model has none)


@dataclass
class TokenEvent:
    index: int
    text: str
    token: int
    probs: dict[str, Any] | None  # {"id", "logprob", "top": [(id, logprob), ...]} when n_probs > 0
    timings: dict[str, float] | None = None  # with timings_per_token: the slot's timings so far


@dataclass
class GenResult:
    content: str
    tokens: list[int]
    stop_type: str  # "eos" | "word" | "limit"
    stopping_word: str
    n_prompt: int  # prompt tokens in all
    n_prompt_eval: int  # prompt tokens evaluated (not reused from the slot's cache)
    n_decoded: int  # tokens sampled, the end-of-text token included
    n_cached: int  # tokens in the slot's cache at the end
    truncated: bool
    probs: list[dict[str, Any]]
    id_slot: int
    t_prompt_ms: float
    t_gen_ms: float
    draft_n: int = 0  # speculative decoding: tokens drafted
    draft_n_accepted: int = 0  # of which the target kept

    @property
    def finish_reason(self) -> str:
        return "length" if self.stop_type == "limit" else "stop"

    def timings(self) -> dict[str, float]:
        """llama-server's `timings` object (with draft_n and draft_n_accepted when a draft was used)."""
        t = timings_of(self.n_prompt_eval, self.t_prompt_ms, self.n_decoded, self.t_gen_ms)
        if self.draft_n:
            t["draft_n"] = self.draft_n
            t["draft_n_accepted"] = self.draft_n_accepted
        return t


def timings_of(pn: int, pm: float, gn: int, gm: float) -> dict[str, float]:
    """llama-server's `timings`: prompt and predicted token counts, milliseconds and rates."""
    return {
        "prompt_n": pn,
        "prompt_ms": pm,
        "prompt_per_token_ms": pm / pn if pn else 0.0,
        "prompt_per_second": 1e3 * pn / pm if pm > 0 else 0.0,
        "predicted_n": gn,
        "predicted_ms": gm,
        "predicted_per_token_ms": gm / gn if gn else 0.0,
        "predicted_per_second": 1e3 * gn / gm if gm > 0 else 0.0,
    }


@dataclass
class DoneEvent:
    index: int
    result: Any  # GenResult, or (embedding, n_tokens) for an embedding job


@dataclass
class ErrorEvent:
    index: int
    error: APIError


class Job:
    """A unit of work for the engine thread; results go to `queue` on the submitting event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int = 0,
                 gen: GenRequest | None = None, embed: list[int] | None = None, stream: bool = False):
        self.loop = loop
        self.queue = queue
        self.index = index
        self.gen = gen
        self.embed = embed
        self.stream = stream
        self.cancelled = False
        self.finished = False

    def emit(self, event: Any) -> None:
        if isinstance(event, (DoneEvent, ErrorEvent)):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled = True


class Slot:
    def __init__(self, sid: int):
        self.id = sid
        self.job: Job | None = None
        self.last_used = 0.0
        self.lora: tuple[float, ...] = ()  # the adapter scales the slot's cache was computed with
        self.reset()

    def reset(self) -> None:
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.seq: Sequence | None = None  # the generation core: sampling, stop rules, text, context shift
        self.probs: list[dict[str, Any]] = []
        self.next_token = -1  # sampled, not yet evaluated
        self.draft: list[int] = []  # drafted tokens evaluated after next_token this step
        self.draft_n = self.draft_n_accepted = 0
        self.n_prompt_eval = 0
        self.t_start = self.t_prompt_done = 0.0


# a complete grammar is "eos": llama-server samples the end token that is all the grammar then allows; so is a
# grammar that allows no token the sampler may pick (only the end token, banned by ignore_eos or a bias)
STOP_TYPES = {"eog": "eos", "grammar": "eos", "no_token": "eos", "word": "word", "limit": "limit",
              "context": "limit"}


def token_probs(logits: np.ndarray, token: int, n: int) -> dict[str, Any]:
    """Log-probabilities from the raw logits (a plain softmax, as llama-server reports them)."""
    x = np.asarray(logits, dtype=np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    k = min(n, x.shape[0])
    top = np.argpartition(-x, k - 1)[:k]
    top = top[np.argsort(-x[top], kind="stable")]
    return {"id": token, "logprob": float(x[token]) - lse, "top": [(int(t), float(x[t]) - lse) for t in top]}


class Scheduler:
    """Owns the backend; every model call happens on its thread."""

    def __init__(self, backend: Backend, max_queue: int = 32, prompt_chunk: int = 128, ctx_shift: bool = False,
                 drafter: Any = None):
        self.backend = backend
        self.drafter = drafter  # speculative decoding (generation/speculative.py): drafts verified in the batch
        self.ctx_shift = ctx_shift  # a slot whose context fills shifts it (llama-server --context-shift)
        self.max_queue = max_queue
        self.prompt_chunk = prompt_chunk  # prompt tokens per step while other slots are generating
        self.slots = [Slot(i) for i in range(backend.n_slots)]
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.n_steps = 0
        self.n_busy_total = 0
        self.on_finish: list = []  # callables given each GenResult (the server's metrics)
        # (slot id, fn, future): work on one slot's cache (save, restore, erase), run on the engine thread once
        # that slot is idle, as llama-server defers a slot action while the slot is processing
        self.actions: deque[tuple[int, Any, concurrent.futures.Future]] = deque()
        self.lora_now: tuple[float, ...] = tuple(getattr(backend, "lora_scales", ()))  # the engine's scales

    # --- called from the event loop -------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queue `jobs` together, or raise a 503 when they don't fit in the queue."""
        with self.cond:
            n_live = sum(1 for j in self.waiting if not j.cancelled)
            if n_live + len(jobs) > self.max_queue + self.free_slots():
                raise APIError(503, f"the server is busy: {self.busy_slots()} slots working and {n_live} "
                                    f"requests waiting (queue limit {self.max_queue}); retry later")
            self.waiting.extend(jobs)
            self.cond.notify()

    def free_slots(self) -> int:
        return sum(1 for s in self.slots if s.job is None)

    def busy_slots(self) -> int:
        return len(self.slots) - self.free_slots()

    def n_waiting(self) -> int:
        return sum(1 for j in self.waiting if not j.cancelled)

    def slot_action(self, sid: int, fn) -> concurrent.futures.Future:
        """Run fn(slot) on the engine thread once slot `sid` is idle; the future gets its result (or error)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            if not self.running and self.thread is not None:
                fut.set_exception(APIError(503, "the server is shutting down"))
                return fut
            self.actions.append((sid, fn, fut))
            self.cond.notify()
        return fut

    def _run_actions(self) -> None:
        with self.cond:
            todo, self.actions = self.actions, deque()
        later: deque = deque()
        for sid, fn, fut in todo:
            s = self.slots[sid]
            if s.job is not None:
                later.append((sid, fn, fut))
                continue
            try:
                fut.set_result(fn(s))
            except BaseException as e:  # the route turns it into an error answer
                fut.set_exception(e)
        if later:
            with self.cond:
                self.actions.extendleft(reversed(later))

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="llamapy-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while self.running and not self.waiting and not self.actions and \
                        all(s.job is None for s in self.slots):
                    self.cond.wait()
                if not self.running:
                    break
            try:
                self.step()
            except Exception as e:  # a bug must not kill the engine: fail the jobs in flight
                log.exception("engine step failed")
                for s in self.slots:
                    if s.job is not None:
                        self._fail(s, APIError(500, f"internal error: {type(e).__name__}: {e}"))
        for s in self.slots:
            if s.job is not None:
                self._fail(s, APIError(503, "the server is shutting down"))
        with self.cond:
            for j in self.waiting:
                j.emit(ErrorEvent(j.index, APIError(503, "the server is shutting down")))
            self.waiting.clear()
            for _, _, fut in self.actions:
                fut.set_exception(APIError(503, "the server is shutting down"))
            self.actions.clear()

    def step(self) -> None:
        """Admit, evaluate one batch over all busy slots, sample, emit."""
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                self._release(s)
        if self.actions:
            self._run_actions()
        for job in self._admit():
            self._run_embedding(job)
        busy = [s for s in self.slots if s.job is not None]
        if not busy:
            return
        items, owners = self._plan(self._lora_group(busy))
        if not items:
            return
        rows = [1 + len(s.draft) if s.next_token >= 0 else 1 for s in owners]
        try:
            self._set_lora(owners[0].lora)
            if any(k > 1 for k in rows):
                all_logits = self.backend.eval_batch(items, last_rows=rows)
            else:
                all_logits = self.backend.eval_batch(items)
        except Exception as e:
            log.exception("eval_batch failed")
            for s in owners:
                self._fail(s, APIError(500, f"evaluation failed: {e}"))
            return
        self.n_steps += 1
        self.n_busy_total += len(owners)
        now = time.perf_counter()
        for s, (_, toks), logits in zip(owners, items, all_logits):
            s.seq.evaluated(len(toks))
            if s.next_token < 0:  # this was a prompt chunk
                if s.pending:
                    continue
                s.t_prompt_done = now
                if s.seq.n_predict == 0:
                    self._finish(s, "limit")
                    continue
            if logits.ndim == 1:
                self._sample(s, logits)
            else:
                self._verify(s, logits)

    def _verify(self, s: Slot, rows: np.ndarray) -> None:
        """Sample a slot's rows in turn while the sampled tokens are its draft's (the generation core's rule:
        see generation/speculative.py); the cache drops the rows after the first token that is not."""
        draft, sid = s.draft, s.id
        n_cache = s.seq.n_past
        for i in range(len(rows)):
            step = self._sample(s, rows[i])
            matched = step is not None and i < len(draft) and step.token == draft[i]
            if matched:
                s.draft_n_accepted += 1
            if matched and s.job is not None:
                continue
            keep = n_cache - (len(rows) - 1 - i)
            if keep < n_cache:
                self.backend.truncate(sid, keep)
            if s.seq is not None:
                s.seq.n_past = keep
            break

    def _admit(self) -> list[Job]:
        """Move waiting jobs into free slots; return the embedding jobs taken off the queue."""
        embeds: list[Job] = []
        with self.cond:
            keep: deque[Job] = deque()
            while self.waiting:
                job = self.waiting.popleft()
                if job.cancelled:
                    continue
                if job.embed is not None:
                    embeds.append(job)
                    continue
                try:
                    slot = self._pick_slot(job.gen)
                    if slot is None:
                        keep.append(job)
                        continue
                    self._start(slot, job)
                except Exception as e:  # one bad job must not take the queue down with it
                    log.exception("starting a job failed")
                    job.emit(ErrorEvent(job.index, APIError(500, f"internal error: {type(e).__name__}: {e}")))
                    for s in self.slots:
                        if s.job is job:
                            self._release(s)
            self.waiting = keep
        return embeds

    def _lora_group(self, busy: list[Slot]) -> list[Slot]:
        """The busy slots that run with one set of adapter scales this step: the groups take turns."""
        groups: list[tuple[float, ...]] = []
        for s in sorted(busy, key=lambda s: s.t_start):
            if s.lora not in groups:
                groups.append(s.lora)
        if len(groups) <= 1:
            return busy
        pick = groups[self.n_steps % len(groups)]
        return [s for s in busy if s.lora == pick]

    def _set_lora(self, scales: tuple[float, ...]) -> None:
        if scales != self.lora_now:
            self.backend.set_lora(scales)
            self.lora_now = scales

    def _pick_slot(self, req: GenRequest) -> Slot | None:
        free = [s for s in self.slots if s.job is None]
        if not free:
            return None
        if 0 <= req.id_slot < len(self.slots):
            return self.slots[req.id_slot] if self.slots[req.id_slot].job is None else None
        if req.cache_prompt:  # a cache computed with other adapter scales is of no use
            return max(free, key=lambda s: (common_prefix(self.backend.cache_tokens(s.id), req.prompt)
                                            if s.lora == req.lora else 0, -s.last_used))
        return min(free, key=lambda s: s.last_used)

    def _start(self, s: Slot, job: Job) -> None:
        req = job.gen
        s.reset()
        s.job = job
        s.t_start = time.perf_counter()
        if not req.prompt:
            job.emit(ErrorEvent(job.index, APIError(400, "the prompt is empty")))
            self._release(s)
            return
        s.seq = Sequence(self.backend.make_sampler(req.sampling), self.backend.n_ctx, is_eog=self.backend.is_eog,
                         piece=self.backend.piece, n_predict=req.n_predict, n_keep=req.n_keep,
                         ctx_shift=self.ctx_shift, stop=req.stop, ignore_eos=req.sampling.ignore_eos,
                         cap_unlimited=True, constraint=req.grammar.matcher() if req.grammar is not None else None)
        reuse = req.cache_prompt and s.lora == req.lora
        s.lora = req.lora
        s.pending = s.seq.start(req.prompt, self.backend.cache_tokens(s.id) if reuse else ())
        self.backend.truncate(s.id, s.seq.n_past)
        s.n_prompt_eval = len(s.pending)

    def _plan(self, busy: list[Slot]) -> tuple[list[tuple[int, list[int]]], list[Slot]]:
        """This step's batch: one token per generating slot, prompt chunks in the remaining budget."""
        items: list[tuple[int, list[int]]] = []
        owners: list[Slot] = []
        generating = [s for s in busy if s.next_token >= 0]
        for s in generating:
            s.draft = self._draft(s, len(generating))
            items.append((s.id, [s.next_token, *s.draft]))
            owners.append(s)
        budget = self.backend.n_batch - len(items)
        if generating:
            budget = min(budget, self.prompt_chunk)
        for s in sorted((s for s in busy if s.next_token < 0), key=lambda s: s.t_start):
            if budget <= 0:
                break
            chunk = s.pending[:budget]
            del s.pending[: len(chunk)]
            budget -= len(chunk)
            items.append((s.id, chunk))
            owners.append(s)
        return items, owners

    def _draft(self, s: Slot, n_generating: int) -> list[int]:
        """The slot's draft after its next token (none without a drafter or when too short to verify)."""
        d = self.drafter
        if d is None:
            return []
        seq = s.seq
        # room for the next token, the draft and one more, so no row needs a context shift; a share of the batch
        n = min(d.params.n_max, self.backend.n_ctx - seq.n_past - 3, self.backend.n_batch // n_generating - 1)
        if seq.n_predict >= 0:
            n = min(n, seq.n_predict - len(seq.generated))
        draft = d.draft(self.backend.cache_tokens(s.id) + [s.next_token], n, seq_id=s.id) if n > 0 else []
        if len(draft) < max(d.params.n_min, 1):
            return []
        s.draft_n += len(draft)
        return draft

    def _sample(self, s: Slot, logits: np.ndarray):
        """Feed one row of logits to the slot's sequence; returns the Step (None when nothing was sampled)."""
        job, req = s.job, s.job.gen
        step = s.seq.feed(logits)
        if step.stop == "no_token":  # nothing was sampled
            self._finish(s, STOP_TYPES[step.stop])
            return None
        tok = step.token
        if req.n_probs <= 0:
            probs = None
        elif req.post_sampling_probs:  # the candidates the chain kept, most likely first (its sampler keeps all)
            cands = s.seq.sampler.last_probs
            p_tok = next((p for t, p in cands if t == tok), 0.0)
            probs = {"id": tok, "prob": p_tok, "top": cands[:req.n_probs], "post": True}
        else:
            probs = token_probs(logits, tok, req.n_probs)
        if probs is not None:
            s.probs.append(probs)
        if step.stop == "eog":
            self._finish(s, "eos")
            return step
        if job.stream and (step.text or step.stop != "word"):
            timings = None
            if req.timings_per_token:
                now = time.perf_counter()
                t_done = s.t_prompt_done or now
                timings = timings_of(s.n_prompt_eval, (t_done - s.t_start) * 1e3, len(s.seq.generated),
                                     (now - t_done) * 1e3)
            job.emit(TokenEvent(job.index, step.text, tok, probs, timings))
        if step.stop:
            self._finish(s, STOP_TYPES[step.stop], truncated=step.truncated)
            return step
        if step.shift is not None:
            self.backend.context_shift(s.id, *step.shift)
        s.next_token = tok
        return step

    def _finish(self, s: Slot, stop_type: str, truncated: bool = False) -> None:
        job, seq = s.job, s.seq
        tail = seq.flush()
        if job.stream and tail:
            job.emit(TokenEvent(job.index, tail, -1, None))
        now = time.perf_counter()
        t_prompt_done = s.t_prompt_done or now
        probs = s.probs if job.stream or stop_type != "word" else s.probs[:seq.n_tokens_kept()]
        result = GenResult(
            content=seq.content,
            tokens=list(seq.generated),
            stop_type=stop_type,
            stopping_word=seq.text.stopped_word if seq.text is not None else "",
            n_prompt=seq.n_prompt,
            n_prompt_eval=s.n_prompt_eval,
            n_decoded=len(seq.generated),
            n_cached=seq.n_past,
            truncated=truncated,
            probs=probs,
            id_slot=s.id,
            t_prompt_ms=(t_prompt_done - s.t_start) * 1e3,
            t_gen_ms=(now - t_prompt_done) * 1e3,
            draft_n=s.draft_n,
            draft_n_accepted=s.draft_n_accepted,
        )
        for f in self.on_finish:
            f(result)
        self._release(s)  # before the answer goes out: a client that reads /slots or /metrics next sees it free
        job.emit(DoneEvent(job.index, result))

    def _fail(self, s: Slot, err: APIError) -> None:
        if s.job is not None and not s.job.finished:
            s.job.emit(ErrorEvent(s.job.index, err))
        self._release(s)
        try:
            self.backend.truncate(s.id, 0)  # the cache may be half-written
        except Exception:
            log.exception("clearing slot %d failed", s.id)

    def _release(self, s: Slot) -> None:
        if s.job is not None and s.job.gen is not None and not s.job.gen.cache_prompt:
            # as llama-server: a slot remembers no tokens of a request that asked not to cache its prompt, so the
            # next request evaluates its whole prompt (the logits of a batch, not those of one re-evaluated token)
            self.backend.truncate(s.id, 0)
        s.job = None
        s.last_used = time.perf_counter()
        s.reset()

    def _run_embedding(self, job: Job) -> None:
        try:
            self._set_lora(tuple(getattr(self.backend, "lora_scales", ())))  # the server's scales
            vec = self.backend.embed(job.embed)
        except Exception as e:
            log.exception("embedding failed")
            job.emit(ErrorEvent(job.index, APIError(500, f"embedding failed: {e}")))
            return
        job.emit(DoneEvent(job.index, (np.asarray(vec, dtype=np.float32), len(job.embed))))
