"""Speculative decoding: drafts of the next tokens, verified by the target model in one batched step.

A drafter proposes up to n tokens that follow the text so far:
- `ModelDrafter`: a small draft model sharing the target's vocabulary (llama.cpp's -md), greedy, stopping
  where its top token's probability falls under p_min (the reference's common_speculative_gen_draft rule);
- `LookupDrafter`: prompt lookup, no second model: the longest recent n-gram (ngram_max down to ngram_min
  tokens) that ends the text is looked for earlier in it, and the tokens that followed it there are the draft.

The target evaluates [last sampled token] + draft in one step (`Engine.eval_verify`: each row exactly what
a one-token step would give, so greedy output is identical token for token to generation without a draft).
The generation core then samples every row with its usual sampler and keeps a draft token only when the
sampled token equals it (the reference's rule in examples/speculative-simple and its server: the drafts are
greedy, and the target's tokens are sampled, so each kept token is a draw from the target's own distribution
given the tokens before it; a rejection costs only the speed). The KV rows of rejected tokens are dropped.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LlamapyError

VOCAB_MAX_SIZE_DIFFERENCE = 128   # as the reference
VOCAB_CHECK_START = 5             # tokens before this one may differ (as the reference)


@dataclass
class DraftParams:
    """llama.cpp's speculative parameters (common_params_speculative) and the lookup's n-gram sizes."""

    n_max: int = 16         # --draft-max
    n_min: int = 0          # --draft-min: a shorter draft is not verified (plain one-token step instead)
    p_min: float = 0.75     # --draft-p-min: the draft model stops where its top probability is under this
    ngram_min: int = 1      # --lookup-ngram-min
    ngram_max: int = 3      # --lookup-ngram-max

    def check(self) -> None:
        if self.n_max < 1:
            raise LlamapyError(f"--draft-max {self.n_max}: a draft needs at least 1 token")
        if not 0 <= self.n_min <= self.n_max:
            raise LlamapyError(f"--draft-min {self.n_min}: must be between 0 and --draft-max ({self.n_max})")
        if not 0.0 <= self.p_min <= 1.0:
            raise LlamapyError(f"--draft-p-min {self.p_min}: must be between 0 and 1")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise LlamapyError(f"--lookup-ngram-min {self.ngram_min} / --lookup-ngram-max {self.ngram_max}: "
                               "need 1 <= min <= max")


class LookupDrafter:
    """Prompt lookup (n-gram) drafting: copies what followed the last occurrence of the text's final n-gram."""

    def __init__(self, params: DraftParams | None = None):
        self.params = params or DraftParams()

    def draft(self, context: Sequence[int], n: int, seq_id: int = 0) -> list[int]:
        p = self.params
        toks = np.asarray(context, dtype=np.int64)
        L = len(toks)
        for size in range(min(p.ngram_max, L - 1), p.ngram_min - 1, -1):
            tail = toks[L - size:]
            # windows of `size` tokens starting at 0 .. L-size-1 (the tail itself excluded)
            win = np.lib.stride_tricks.sliding_window_view(toks[:L - 1], size)
            hits = np.flatnonzero((win == tail).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + size
                return [int(t) for t in toks[start:start + n]]
        return []

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class ModelDrafter:
    """Greedy drafts from a draft model (an Engine), which keeps the longest prefix it shares with the text."""

    def __init__(self, engine, params: DraftParams | None = None, seq_id: int = 0):
        self.engine = engine
        self.params = params or DraftParams()
        self.seq_id = seq_id

    def draft(self, context: Sequence[int], n: int, seq_id: int | None = None) -> list[int]:
        """Up to n greedy tokens after `context`, on the draft engine's sequence seq_id (a server slot's)."""
        from .sequence import common_prefix

        eng, s = self.engine, self.seq_id if seq_id is None else seq_id
        ctx = [int(t) for t in context]
        room = eng.n_ctx - 1
        if len(ctx) + n > room:   # the draft's context is full: keep its last part (no shift: start again)
            ctx = ctx[-max(1, room - n):]
        cached = eng.tokens(s)
        same = min(common_prefix(cached, ctx), len(ctx) - 1)
        eng.kv_truncate(s, same)
        logits = eng.eval(ctx[same:], s)
        out: list[int] = []
        while len(out) < n:
            tok = int(np.argmax(logits))
            x = logits.astype(np.float64)
            p_top = 1.0 / float(np.exp(x - x[tok]).sum())
            if out and p_top < self.params.p_min:   # the reference keeps the first token whatever its probability
                break
            out.append(tok)
            if len(out) == n:
                break
            logits = eng.eval([tok], s)
        return out

    def reset(self) -> None:
        self.engine.kv_clear()

    def close(self) -> None:
        self.engine.close()


class DraftedRows:
    """Speculative evaluation for a loop that samples a token and then evaluates it (the generation core's
    `steps`, the interactive session, the Python API): `eval_next` evaluates a sampled token together with a
    draft of the tokens after it, in one verify step, and gives the logits after the token; the verified rows
    of the draft wait in the cache. After the next sampling, `settle` keeps the next draft token's row when the
    sampled token is that token (its logits are then ready: `eval_next` evaluates nothing) and cuts every row
    still waiting otherwise, so the cache holds what it would without a draft. `pending` rows beyond the last
    sampled token may stay in the cache until `settle` or `drop`."""

    def __init__(self, llm, drafter, seq_id: int = 0, on_rows=None):
        self.llm, self.drafter, self.seq_id = llm, drafter, seq_id
        self.on_rows = on_rows        # on_rows(start position, rows) after each verify step (the API's scores)
        self.draft: list[int] = []    # drafted tokens in the cache after the last evaluated one
        self.rows: list = []          # their logits (row i: after draft[i])
        self.ready = None             # the logits after the last sampled token, when a draft row had them

    @property
    def pending(self) -> int:
        """Rows in the cache beyond the last sampled token."""
        return len(self.draft)

    def settle(self, seq, token: int, stop: bool = False) -> None:
        """The token `seq` sampled: keep the next draft token's row when it is that token (and the generation
        goes on), else cut the waiting rows. Counts accepted drafts into seq.timings."""
        if not self.draft:
            return
        matched = token == self.draft[0]
        seq.timings.draft_n_accepted += matched
        if matched and not stop:
            self.draft.pop(0)
            self.ready = self.rows.pop(0)
        else:
            self.drop(seq)

    def drop(self, seq) -> None:
        """Cut the rows still waiting from the cache (before anything else is evaluated, or at the end), the
        last sampled token's too when a draft row had it ready (it is then not evaluated, as without a draft)."""
        k = len(self.draft) + (self.ready is not None)
        if k:
            llm, s = self.llm, self.seq_id
            llm.kv_truncate(s, llm.n_past(s) - k)
            seq.n_past -= k
            seq.timings.n_eval -= k   # the eval count is of tokens kept, as without a draft
        self.draft, self.rows, self.ready = [], [], None

    def eval_next(self, seq, token: int, n_left: int | None = None):
        """The logits after the sampled `token`: its verified row, or `token` evaluated now with a draft of at
        most n_left tokens after it (default: what seq.n_predict leaves)."""
        if self.ready is not None:
            logits, self.ready = self.ready, None
            return logits
        self.drop(seq)
        llm, s, p = self.llm, self.seq_id, self.drafter.params
        # room for the token, the draft and one more, so no row of a draft needs a context shift
        n = min(p.n_max, llm.n_ctx - seq.n_past - 3, llm.n_batch - 1)
        if n_left is None and seq.n_predict >= 0:
            n_left = seq.n_predict - len(seq.generated)
        if n_left is not None:
            n = min(n, n_left)
        draft = [int(t) for t in self.drafter.draft(llm.tokens(s) + [token], n)] if n > 0 else []
        start = llm.n_past(s)
        if len(draft) < max(p.n_min, 1):
            logits = seq.eval(llm, s, [token])
            if self.on_rows is not None:
                self.on_rows(start, logits[None])
            return logits
        seq.timings.draft_n += len(draft)
        t0 = time.perf_counter()
        rows = llm.eval_verify([token, *draft], s)
        seq.evaluated(len(draft) + 1, 1e3 * (time.perf_counter() - t0))
        if self.on_rows is not None:
            self.on_rows(start, rows)
        self.draft, self.rows = draft, list(rows[1:])
        return rows[0]


def check_vocab(target, draft) -> None:
    """Refuse a draft model whose vocabulary is not the target's (the reference's checks), in one line."""
    tt, td = target.tokenizer, draft.tokenizer
    if getattr(tt, "model", None) != getattr(td, "model", None):
        raise LlamapyError(f"draft model vocab type must match the target's to use speculation "
                           f"(target {getattr(tt, 'model', '?')}, draft {getattr(td, 'model', '?')})")
    if (tt.bos_id, tt.eos_id, tt.add_bos, getattr(tt, "add_eos", False)) != \
            (td.bos_id, td.eos_id, td.add_bos, getattr(td, "add_eos", False)):
        raise LlamapyError(f"draft vocab special tokens must match the target's to use speculation "
                           f"(target bos {tt.bos_id} eos {tt.eos_id}, draft bos {td.bos_id} eos {td.eos_id})")
    nt, nd = target.n_vocab, draft.n_vocab
    if abs(nt - nd) > VOCAB_MAX_SIZE_DIFFERENCE:
        raise LlamapyError(f"draft model vocab must closely match the target's to use speculation: target vocab "
                           f"size {nt}, draft {nd} (difference {abs(nt - nd)}, max {VOCAB_MAX_SIZE_DIFFERENCE})")
    for i in range(VOCAB_CHECK_START, min(nt, nd)):
        a, b = tt.token_text(i), td.token_text(i)
        if a != b:
            raise LlamapyError(f"draft vocab must match the target's to use speculation: token {i} differs "
                               f"(target {a!r}, draft {b!r})")


def drafter_from_options(target, model_draft: str | None, lookup: bool, params: DraftParams,
                         ctx_size_draft: int | None = None, threads_draft: int | None = None, log=None,
                         n_seq: int = 1):
    """The drafter the options ask for (a loaded, vocabulary-checked draft model, or prompt lookup), or None."""
    if model_draft is None and not lookup:
        return None
    params.check()
    if model_draft is None:
        return LookupDrafter(params)
    from ..engine.engine import Engine

    draft = Engine(model_draft, n_ctx=ctx_size_draft or target.n_ctx, n_threads=threads_draft,
                   n_batch=target.n_batch, n_seq_max=n_seq)
    try:
        check_vocab(target, draft)
    except BaseException:
        draft.close()
        raise
    if log is not None:
        log(f"speculative: draft model {draft.model_path}: {draft.desc}, n_ctx = {draft.n_ctx}, "
            f"draft max {params.n_max}, min {params.n_min}, p_min {params.p_min}")
    return ModelDrafter(draft, params)
