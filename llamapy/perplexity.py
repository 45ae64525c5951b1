"""Perplexity the reference's way: the text split into chunks of n_ctx tokens, each evaluated from an
empty cache (BOS in place of its first token when the model adds BOS), only the predictions of the
second half of each chunk scored, so every scored token has at least n_ctx/2 tokens of context.
Several chunks go through the engine together as separate sequences (n_batch // n_ctx of them).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import LlamapyError


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float                 # the +/- the reference prints
    n_chunks: int
    n_scored: int
    running: list[float] = field(default_factory=list)   # PPL after each chunk
    seconds: float = 0.0


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits[i])[targets[i]] for each row, in float64 (exp in float32 as the reference)."""
    mx = logits.max(axis=1, keepdims=True)
    sums = np.exp(logits - mx).sum(axis=1, dtype=np.float64)
    picked = logits[np.arange(len(targets)), targets].astype(np.float64) - mx[:, 0]
    return np.log(sums) - picked


def perplexity(
    llm,
    tokens: Sequence[int],
    n_ctx: int,
    n_chunks: int = -1,
    bos_id: int | None = None,
    on_chunk: Callable[[int, float], None] | None = None,
) -> PerplexityResult:
    """PPL of `tokens` with chunks of n_ctx; bos_id: put BOS first in each chunk (models that add BOS).

    llm must have n_ctx >= this n_ctx and as many sequences as it should evaluate chunks at once.
    on_chunk(i, running_ppl) is called after each chunk (1-based i).
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    if n_ctx < 4:
        raise LlamapyError(f"perplexity needs a context of at least 4 tokens, not {n_ctx}")
    if len(tokens) < 2 * n_ctx:
        raise LlamapyError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
            f"the text tokenizes to only {len(tokens)} tokens")
    if llm.n_ctx < n_ctx:
        raise LlamapyError(f"the model was loaded with n_ctx {llm.n_ctx} < {n_ctx}")
    n_max = len(tokens) // n_ctx
    n_chunk = n_max if n_chunks < 0 else min(n_chunks, n_max)
    n_seq = max(1, min(llm.n_seq_max, llm.n_batch // n_ctx))
    first = n_ctx // 2

    t0 = time.perf_counter()
    nll = nll2 = 0.0
    count = 0
    running = []
    for i in range(0, n_chunk, n_seq):
        items = []
        for s in range(min(n_seq, n_chunk - i)):
            chunk = tokens[(i + s) * n_ctx:(i + s + 1) * n_ctx].copy()
            if bos_id is not None:
                chunk[0] = bos_id
            items.append((s, chunk))
        llm.kv_clear()
        outs = llm.eval_batch(items, first_output=first)
        for s, logits in enumerate(outs):
            start = (i + s) * n_ctx
            targets = tokens[start + first + 1:start + n_ctx]
            v = token_nll(logits[:-1], targets)
            nll += float(v.sum())
            nll2 += float((v * v).sum())
            count += len(v)
            running.append(math.exp(nll / count))
            if on_chunk:
                on_chunk(i + s + 1, running[-1])
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else float("nan")
    return PerplexityResult(ppl, err, n_chunk, count, running, time.perf_counter() - t0)
