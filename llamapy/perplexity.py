"""Perplexity the reference's way: the text split into chunks of n_ctx tokens, each evaluated from an
empty cache (BOS in place of its first token when the model adds BOS), only the predictions of the
second half of each chunk scored, so every scored token has at least n_ctx/2 tokens of context.
Several chunks go through the engine together as separate sequences (n_batch // n_ctx of them).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from .errors import LlamapyError
from .kl_divergence import scored_chunks


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
    n_seq: int | None = None,
    on_logits: Callable[[np.ndarray], None] | None = None,
) -> PerplexityResult:
    """PPL of `tokens` with chunks of n_ctx; bos_id: put BOS first in each chunk (models that add BOS).

    llm must have n_ctx >= this n_ctx and as many sequences as it should evaluate chunks at once.
    on_chunk(i, running_ppl) is called after each chunk (1-based i); on_logits(rows) before it, with the
    chunk's scored logits (n_ctx - 1 - n_ctx/2, n_vocab), in chunk order (`--kl-divergence-base` saves them).
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
    n_seq = max(1, min(llm.n_seq_max, n_seq if n_seq else llm.n_batch // n_ctx))

    t0 = time.perf_counter()
    nll = nll2 = 0.0
    count = 0
    running = []
    for c, logits, targets in scored_chunks(llm, tokens, n_ctx, n_chunk, n_seq, bos_id):
        if on_logits:
            on_logits(logits)
        v = token_nll(logits, targets)
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += len(v)
        running.append(math.exp(nll / count))
        if on_chunk:
            on_chunk(c + 1, running[-1])
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else float("nan")
    return PerplexityResult(ppl, err, n_chunk, count, running, time.perf_counter() - t0)


def run_perplexity(model: str | None, file: str | None, ctx_size: int = 512, batch_size: int = 2048,
                   chunks: int = -1, threads: int | None = None, n_gpu_layers: int | None = None,
                   out: TextIO | None = None, err: TextIO | None = None, load=None, logits_file: str | None = None,
                   kl_divergence: bool = False) -> PerplexityResult | None:
    """The `llamapy perplexity` command: running values and the final estimate on stdout, logs on stderr.

    logits_file (--kl-divergence-base / --save-all-logits): without kl_divergence, the scored log-probabilities
    are saved there as the reference saves them; with it, the model is scored against that file instead
    (its tokens, its n_ctx; no -f needed) and the KL divergence statistics are printed."""
    import sys

    from .engine.engine import Engine

    out = out or sys.stdout
    err = err or sys.stderr

    def log(msg: str) -> None:
        print(msg, file=err, flush=True)

    if batch_size < 1:
        raise LlamapyError(f"-b {batch_size}: the batch size must be at least 1")
    if n_gpu_layers:
        log(f"llamapy runs on the CPU: -ngl {n_gpu_layers} is ignored")
    if kl_divergence:
        return _run_kl_divergence(model, logits_file, batch_size, chunks, threads, out, log, load)
    if ctx_size <= 0:
        raise LlamapyError("perplexity needs a context size (-c) > 0")
    if not file:
        raise LlamapyError("perplexity needs a text file: -f FILE")
    try:
        with open(file, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
    except OSError as e:
        raise LlamapyError(f"failed to open file '{file}': {e.strerror}") from None
    if text.endswith("\n"):  # as the reference reads -f
        text = text[:-1]
    n_seq = max(1, batch_size // ctx_size)
    n_ubatch = load.n_ubatch if load is not None and load.n_ubatch else 512
    with Engine(model, n_ctx=ctx_size, n_threads=threads, n_batch=min(batch_size, n_seq * ctx_size, n_ubatch),
                n_seq_max=n_seq, load=load) as llm:
        if ctx_size > llm.args.n_ctx_train:
            log(f"perplexity: model was trained on only {llm.args.n_ctx_train} context tokens ({ctx_size} specified)")
        log(f"perplexity: {llm.model_path}: {llm.desc}, {llm.n_threads} threads")
        log(llm.kv_line())
        log("perplexity: tokenizing the input ..")
        t0 = time.perf_counter()
        tok = llm.tokenizer
        tokens = tok.encode(text, add_special=True, parse_special=False)
        log(f"perplexity: tokenization took {1000 * (time.perf_counter() - t0):g} ms")
        n_chunk = len(tokens) // ctx_size if chunks < 0 else min(chunks, len(tokens) // ctx_size)
        log(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={ctx_size}, "
            f"batch_size={min(batch_size, n_seq * ctx_size)}, n_seq={n_seq}")
        started = time.perf_counter()

        def on_chunk(i: int, ppl: float) -> None:
            if i == min(n_seq, n_chunk):
                per_pass = time.perf_counter() - started
                log(f"perplexity: {per_pass:.2f} seconds per pass - ETA "
                    f"{per_pass * n_chunk / n_seq / 60:.2f} minutes")
            out.write(f"[{i}]{ppl:.4f},")
            out.flush()

        with ExitStack() as stack:
            on_logits = None
            if logits_file and len(tokens) >= 2 * ctx_size:
                from .kl_divergence import LogitsWriter

                log(f"perplexity: saving all logits to {logits_file}")
                saver = stack.enter_context(LogitsWriter(logits_file, ctx_size, llm.n_vocab, n_chunk, tokens))
                on_logits = saver.add
            res = perplexity(llm, tokens, ctx_size, chunks, bos_id=tok.bos_id if tok.add_bos else None,
                             on_chunk=on_chunk, n_seq=n_seq, on_logits=on_logits)
        out.write("\n")
        out.write(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_stderr:.5f}\n")
        out.flush()
        log(f"perplexity: {res.n_scored} tokens scored in {res.seconds:.2f} s "
            f"({res.n_chunks * ctx_size / res.seconds:.2f} tokens per second)")
        return res


def _run_kl_divergence(model: str | None, logits_file: str | None, batch_size: int, chunks: int,
                       threads: int | None, out: TextIO, log: Callable[[str], None], load) -> None:
    """`perplexity --kl-divergence --kl-divergence-base FILE`: the model against the file's log-probabilities,
    with the file's chunk size (the context is opened that large)."""
    from .engine.engine import Engine
    from .kl_divergence import kl_divergence, read_saved

    if not logits_file:
        raise LlamapyError("--kl-divergence needs the base model's log-probabilities: --kl-divergence-base FILE")
    saved = read_saved(logits_file)
    n_ctx = saved.n_ctx
    n_seq = max(1, min(batch_size // n_ctx, saved.n_chunk))
    n_ubatch = load.n_ubatch if load is not None and load.n_ubatch else 512
    with Engine(model, n_ctx=n_ctx, n_threads=threads, n_batch=min(batch_size, n_seq * n_ctx, n_ubatch),
                n_seq_max=n_seq, load=load) as llm:
        saved.check_vocab(llm.n_vocab)
        log(f"kl_divergence: {llm.model_path}: {llm.desc}, {llm.n_threads} threads")
        log(llm.kv_line())
        n_chunk = saved.n_chunk if chunks < 0 else min(chunks, saved.n_chunk)
        log(f"kl_divergence: {logits_file}: {saved.n_chunk} chunks of n_ctx={n_ctx}; scoring {n_chunk}, "
            f"n_seq={n_seq}")
        tok = llm.tokenizer
        t0 = time.perf_counter()
        stats = kl_divergence(llm, saved, tok.bos_id if tok.add_bos else None, out, chunks=chunks, n_seq=n_seq)
        log(f"kl_divergence: {stats.count} tokens scored in {time.perf_counter() - t0:.2f} s")
